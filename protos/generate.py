"""Generate the Python stubs in client/_proto from the .proto files beside this script.

Usage: python protos/generate.py [--check]

The generator is pinned and lives in its own virtualenv (.tools/protoc): grpcio-tools 1.62.3 is the
newest release that emits protobuf-4 style gencode, which carries no runtime version check, so the
same files import under protobuf 5.x, 6.x and 7.x and under any grpcio >= 1.62. mypy-protobuf adds
typed .pyi stubs for messages and service stubs.

Two rewrites make the stubs safe to import beside other copies of the same protocol (tritonclient
ships its own `inference` messages in the default descriptor pool, and one process may hold both):
imports between the generated modules become package-relative, and every file registers in a
private descriptor pool (`_pool.POOL`) instead of the process-wide default one.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "client" / "_proto"
TOOLS = ROOT / ".tools" / "protoc"
GENERATOR_PINS = ["grpcio-tools==1.62.3", "mypy-protobuf==3.6.0", "protobuf==4.25.9"]
SOURCES = ["model_config.proto", "grpc_service.proto"]
MODULES = [name.removesuffix(".proto") + "_pb2" for name in SOURCES]

POOL_MODULE = '''"""The descriptor pool our generated messages register in (see protos/generate.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''

INIT_MODULE = '''"""Generated from protos/ by protos/generate.py; do not edit by hand."""
'''


def tool_python() -> Path:
    python = TOOLS / "bin" / "python"
    stamp = TOOLS / "pins.txt"
    wanted = "\n".join(GENERATOR_PINS)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    venv.create(TOOLS, with_pip=True, clear=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *GENERATOR_PINS], check=True)
    stamp.write_text(wanted)
    return python


def run_protoc(dest: Path) -> None:
    python = tool_python()
    bindir = python.parent
    subprocess.run(
        [
            str(python),
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
            f"--python_out={dest}",
            f"--grpc_python_out={dest}",
            f"--mypy_out={dest}",
            f"--mypy_grpc_out={dest}",
            *SOURCES,
        ],
        check=True,
        cwd=PROTOS,
    )


def rewrite(text: str) -> str:
    for module in MODULES:
        # `import model_config_pb2 as x` -> `from . import model_config_pb2 as x` (runtime modules)
        text = re.sub(rf"^import {module}\b", f"from . import {module}", text, flags=re.M)
    text = text.replace(
        "from google.protobuf import descriptor_pool as _descriptor_pool\n", "from . import _pool\n"
    )
    return text.replace("_descriptor_pool.Default()", "_pool.POOL")


def generate(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as raw:
        run_protoc(Path(raw))
        for path in sorted(Path(raw).iterdir()):
            (dest / path.name).write_text(rewrite(path.read_text()))
    (dest / "_pool.py").write_text(POOL_MODULE)
    (dest / "__init__.py").write_text(INIT_MODULE)


def compare(expected: Path, actual: Path) -> list[str]:
    problems: list[str] = []
    names = {p.name for p in expected.iterdir()} | {
        p.name for p in actual.iterdir() if p.suffix in {".py", ".pyi"}
    }
    for name in sorted(names):
        want, have = expected / name, actual / name
        if not have.exists():
            problems.append(f"missing: client/_proto/{name}")
        elif not want.exists():
            problems.append(f"not produced by protos/: client/_proto/{name}")
        elif want.read_text() != have.read_text():
            diff = difflib.unified_diff(
                have.read_text().splitlines(), want.read_text().splitlines(), lineterm="", n=1
            )
            problems.append(f"differs: client/_proto/{name}\n" + "\n".join(list(diff)[:20]))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if client/_proto is stale")
    args = parser.parse_args(argv)
    if not args.check:
        OUT.mkdir(parents=True, exist_ok=True)
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as fresh:
        generate(Path(fresh))
        problems = compare(Path(fresh), OUT)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("client/_proto is stale: run `make protos`", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
