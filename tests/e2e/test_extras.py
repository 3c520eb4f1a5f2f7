"""`pip install '.[server]'` (the README's server install, and the image's before the trace extra) in a
fresh virtualenv: every subcommand and every flag of `torchwire serve` (each choice of each) either
works, or says in one line which extra it needs, with exit status 1 and no traceback.

The virtualenv is made once for this module: torch (and what it requires) hard-linked from this
environment, then `pip install '.[server]'` for real. On this 2-core machine under a load of 13
that took 4 s and 17 s, where installing torch anew took 1-2 minutes; the serve runs take the rest.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import typing
import venv
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support.certs import make_certs
from support.serving import serve_process
from torchwire.client import Client
from torchwire.server.extras import EXTRAS
from torchwire.server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "extras-check-token"

# Runs of `torchwire serve` that must work with the server extra alone. serve_process sets host
# 127.0.0.1, port 0, metrics on a free port and one torch thread (`flags` win). Paths are relative
# to the folder the server runs in, which holds the certificates and the token file.
SERVE_RUNS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "poll, two workers": {
        "model_control_mode": "poll",
        "repository_poll_secs": 1.0,
        "metrics_names": "triton",
        "workers": "2",
    },
    "every other flag": {
        "model_repository": ROOT / "models",
        "model_control_mode": "explicit",
        "load_model": "simple",
        "readiness": "any",
        "reflection": False,
        "tls_cert": "server.pem",
        "tls_key": "server.key",
        "tls_client_ca": "ca.pem",
        "auth_token_file": "tokens.txt",
        "auth_health": True,
        "auth_reflection": False,
        "max_concurrent_rpcs": 8,
        "max_streams": 2,
        "max_tensor_elements": 4096,
        "max_request_rows": 8,
        "metrics_port": 0,
        "metrics_names": "torchwire",
        "http_port": 0,
        "max_string_bytes": 4096,
        "inline_forward_us": 50,
        "trace": True,
        "trace_exporter": "none",
        "log_format": "json",
        "access_log_sample": 1.0,
        "max_message_bytes": 1 << 20,
        "stream_max_in_flight": 4,
        "drain_delay_s": 0.1,
        "shutdown_grace": 5.0,
        "max_connection_age_s": 60.0,
        "event_loop": "asyncio",
        "log_level": "DEBUG",
    },
}
# serve_process sets these for every run (HTTP on a free port): no test binds a fixed port or
# listens beyond loopback.
ALWAYS = {"host": "127.0.0.1", "port": 0, "metrics_port": -1, "http_port": -1, "torch_threads": 1}

# What needs an extra: settings of `torchwire serve`, or a command line; and the one line it prints.
SERVE_NEEDS: dict[str, dict[str, Any]] = {
    "console": {"trace": True, "trace_exporter": "console"},
    "otlp": {"trace": True, "trace_exporter": "otlp"},
}
COMMANDS_NEED: dict[str, list[str]] = {
    "bench": ["bench", "--model", "mlp"],
    "soak": ["soak", "--model", "mlp"],
}
SAYS = {
    "console": "torchwire serve --trace-exporter console: needs the trace extra (opentelemetry.sdk is "
    "missing): pip install 'torchwire[trace]'",
    "otlp": "torchwire serve --trace-exporter otlp: needs the trace extra (opentelemetry.sdk is missing): "
    "pip install 'torchwire[trace]'",
    "bench": "torchwire bench: needs the bench extra (rich is missing): pip install 'torchwire[bench]'",
    "soak": "torchwire soak: needs the bench extra (rich is missing): pip install 'torchwire[bench]'",
}


def flags(settings: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, str(value)]
    return out


def _with_requirements(name: str) -> list[importlib.metadata.Distribution]:
    """The installed distribution `name` and all it requires (without extras), as installed here."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = canonicalize_name(dist.metadata["Name"])
        if key not in found:
            found[key] = dist
            requirements = [Requirement(text) for text in dist.requires or []]
            todo += [r.name for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]
    return list(found.values())


def _link(dists: list[importlib.metadata.Distribution], site: Path) -> None:
    """Put these distributions' files (as their RECORDs list them) into `site` as hard links: what pip
    would unpack from the same wheels, and pip there sees them installed, but no gigabyte of torch
    is written (or removed afterwards). A link is a file of its own: pip in the new environment
    replacing one leaves this environment as it is. Copies where links cannot be made."""
    for dist in dists:
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if file.parts[0] == ".." or not source.is_file():  # console scripts; pyc files not kept
                continue
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)


@pytest.fixture(scope="module")
def server_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the torch this environment has (and what torch requires), then
    `pip install '.[server]'` by this environment's pip and its configuration; its `torchwire`."""
    env_dir = tmp_path_factory.mktemp("server-install") / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    _link(_with_requirements("torch"), Path(site))
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile"]
    subprocess.run([*pip, f"{ROOT}[server]"], check=True, timeout=900)
    return env_dir / "bin" / "torchwire"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder `torchwire serve` runs in: certificates (ca.pem, server.pem, server.key, client.*)
    and the token file."""
    folder = tmp_path_factory.mktemp("serve-files")
    make_certs(folder)
    (folder / "tokens.txt").write_text(TOKEN + "\n")
    return folder


def _choices(annotation: Any) -> tuple[Any, ...]:
    if annotation is bool:
        return (True, False)
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return ()


def test_the_runs_cover_every_flag_and_every_choice() -> None:
    hints = typing.get_type_hints(Settings)
    runs = [ALWAYS | run for run in [*SERVE_RUNS.values(), *SERVE_NEEDS.values()]]
    for f in dataclasses.fields(Settings):
        used = [run.get(f.name, f.default) for run in runs]
        assert any(value != f.default for value in used), f"no run sets --{f.name.replace('_', '-')}"
        if f.name == "log_level":  # above INFO, the lines a run waits for are not logged
            continue
        for choice in _choices(hints[f.name]):
            assert choice in used, f"no run uses {f.name}={choice!r}"


def test_extras_name_their_packages_and_are_installed_here() -> None:
    provided = importlib.metadata.metadata("torchwire").get_all("Provides-Extra") or []
    assert set(EXTRAS) <= set(provided), "a hint names an extra pyproject.toml lacks"
    for modules in EXTRAS.values():
        for module in modules:
            importlib.import_module(module)  # the dev extra installs every extra: the names are right


def test_help_of_every_subcommand_works(server_install: Path) -> None:
    top = subprocess.run([str(server_install), "--help"], capture_output=True, text=True, timeout=120)
    assert top.returncode == 0, top.stderr
    match = re.search(r"\{([\w,]+)\}", top.stdout)
    assert match is not None, top.stdout
    commands = match.group(1).split(",")
    # `export` needs only torch (the server extra): its help runs here, its exports in test_export_command.
    assert set(commands) == {"serve", "export", *COMMANDS_NEED}, "a subcommand is not checked here"
    for command in commands:
        result = subprocess.run(
            [str(server_install), command, "--help"], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0 and "usage: torchwire " + command in result.stdout, result.stderr


@pytest.mark.parametrize("run", sorted(SERVE_RUNS))
def test_serve_works_with_the_server_extra(server_install: Path, files: Path, run: str) -> None:
    settings = SERVE_RUNS[run]
    tls = {"tls_ca": files / "ca.pem", "tls_cert": files / "client.pem", "tls_key": files / "client.key"}
    options: dict[str, Any] = {"token": TOKEN, **tls} if "tls_cert" in settings else {}
    with serve_process((str(server_install),), *flags(settings), cwd=files) as server:
        server.wait_for(r"server ready")
        with Client(server.target, timeout=60, **options) as client:
            a = np.arange(16, dtype=np.int32).reshape(1, 16)
            out = client.predict("simple", {"INPUT0": a, "INPUT1": a})
            np.testing.assert_array_equal(out["OUTPUT0"], a + a)
        assert server.stop() == 0, server.text()
    assert "Traceback" not in server.text(), server.text()


@pytest.mark.parametrize("case", sorted([*SERVE_NEEDS, *COMMANDS_NEED]))
def test_what_needs_an_extra_says_which_in_one_line(server_install: Path, case: str) -> None:
    serve = SERVE_NEEDS.get(case)
    command = COMMANDS_NEED[case] if serve is None else ["serve", *flags(ALWAYS | serve)]
    result = subprocess.run([str(server_install), *command], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr.splitlines(), result.stdout) == (1, [SAYS[case]], "")
