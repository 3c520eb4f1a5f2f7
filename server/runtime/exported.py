"""Loads `model.pt2` files: torch.export ExportedPrograms and AOTInductor packages.

Both are PT2 archives (zip files). What the archive holds tells them apart: an AOTInductor package
has compiled code under `data/aotinductor/`, an ExportedProgram has only the program
(`models/*.json` and its weights). The config's platform names which one the model folder means
(`torch_aoti` or `torch_export`); a file of the other kind is refused at load, naming both.

An AOTInductor package is native code built for one OS, CPU architecture (and instruction set) and
torch version. Those are checked from the archive's metadata before its library is loaded, so a
foreign package is refused with a reason instead of failing, or crashing, inside the library.
"""

from __future__ import annotations

import json
import platform
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any, cast

import torch
from torch._inductor.package import load_package  # type: ignore[attr-defined]  # private, not re-exported

from ..core.errors import ConfigError
from ..repository import ModelSpec
from ..repository.config import CONFIG_FILE
from .archives import AOTI, AOTI_DIR, DESCRIPTIONS, EXPORT, PICKLED, TORCHSCRIPT, entries, kind_of
from .model import DATATYPES, Forward, first_line
from .signature import DYNAMIC, Signature, TensorSignature, check

# Keys torchwire adds to an AOTInductor package's metadata when it builds one (`torchwire export`).
TORCH_VERSION_KEY = "torchwire.torch_version"
SIGNATURE_KEY = "torchwire.signature"
# torch.export.load keeps its deserializer in a global: two loads at once (models load side by side,
# each on its own thread) fail with "_CURRENT_DESERIALIZER is already set". AOTInductor packages
# load under the same lock: loads are milliseconds, and a rare start-up stall was seen with both
# kinds loading side by side.
_DESERIALIZING = threading.Lock()


def archive_kind(path: Path) -> str:
    """Blocking: what the archive at path holds (one of archives.DESCRIPTIONS' kinds)."""
    names = entries(path)
    if names is None:
        raise ConfigError(
            f"{path}: not a PT2 archive (torch.export.save or an AOTInductor package): not a zip file"
        )
    kind = kind_of(names)
    if kind is None:
        raise ConfigError(
            f"{path}: a zip file, but it holds neither an ExportedProgram nor an AOTInductor package"
        )
    return kind


def _refuse_unexported(path: Path, kind: str) -> None:
    """ConfigError for a file of a kind with no signature of its own: TorchScript, or torch.save'd."""
    if kind == TORCHSCRIPT:
        raise ConfigError(
            f"{path}: the file is {DESCRIPTIONS[kind]}, not an exported program: give it a {CONFIG_FILE} "
            f"with platform '{TORCHSCRIPT}' (or convert it: `torchwire export --from-torchscript`)"
        )
    if kind == PICKLED:
        raise ConfigError(
            f"{path}: the file is {DESCRIPTIONS[kind]}, which no platform serves: export the module with "
            f"torch.export.save(torch.export.export(model, example_inputs), path) (or `torchwire export`)"
        )


def aoti_metadata(path: Path) -> dict[str, str]:
    """The metadata AOTInductor recorded at compile time (device, platform, CPU ISA, and ours)."""
    metadata: dict[str, str] = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.split("/", 1)[-1].startswith(AOTI_DIR) and name.endswith("wrapper_metadata.json"):
                try:
                    metadata.update(json.loads(archive.read(name)))
                except (ValueError, OSError) as exc:
                    raise ConfigError(f"{path}: unreadable AOTInductor metadata {name}: {exc}") from exc
    return metadata


def _runs_here(isa: str) -> bool:
    """Whether this CPU has an x86 instruction set AOTInductor compiled for (other names: assumed;
    the machine check already tells architectures apart)."""
    cpu: Any = torch.cpu  # the probes inductor itself uses to pick an ISA, untyped
    probes = {
        "AVX2": ("_is_avx2_supported",),
        "AVX512": ("_is_avx512_supported",),
        "AVX512_VNNI": ("_is_avx512_supported", "_is_vnni_supported"),
        "AVX512_BF16": ("_is_avx512_bf16_supported",),
        "AMX_TILE": ("_is_amx_tile_supported",),
        "AMX_FP16": ("_is_amx_fp16_supported",),
    }
    return all(getattr(cpu, probe, lambda: True)() for probe in probes.get(isa, ()))


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def check_portable(path: Path, metadata: dict[str, str]) -> None:
    """ConfigError if the package was built for another OS, CPU or torch version than this server's."""
    here = {"AOTI_PLATFORM": sys.platform, "AOTI_MACHINE": platform.machine()}
    for key, value in here.items():
        built = metadata.get(key)
        if built is not None and built != value:
            raise ConfigError(
                f"{path}: an AOTInductor package built for {key.removeprefix('AOTI_').lower()} '{built}', "
                f"this server runs on '{value}': rebuild it here (`torchwire export`)"
            )
    device = metadata.get("AOTI_DEVICE_KEY", "cpu")
    if device != "cpu":
        raise ConfigError(
            f"{path}: an AOTInductor package built for device '{device}'; torchwire runs on the CPU"
        )
    missing = [isa for isa in metadata.get("AOTI_CPU_ISA", "").split() if not _runs_here(isa)]
    if missing:
        raise ConfigError(
            f"{path}: an AOTInductor package built for CPU instructions {' '.join(missing)}, which this CPU "
            f"lacks: rebuild it here (`torchwire export`)"
        )
    built_torch = metadata.get(TORCH_VERSION_KEY)
    if built_torch is not None and _minor(built_torch) != _minor(torch.__version__):
        raise ConfigError(
            f"{path}: an AOTInductor package built with torch {built_torch}, this server runs torch "
            f"{torch.__version__}: rebuild it with this torch (`torchwire export`)"
        )


def exported_signature(program: torch.export.ExportedProgram) -> Signature:
    """The program's user inputs and outputs, and its batch dimension if it has a dynamic one."""
    from torch.export.graph_signature import InputKind, OutputKind

    nodes = {node.name: node for node in program.graph.nodes}
    graph = program.graph_signature
    user_inputs = [spec.arg.name for spec in graph.input_specs if spec.kind == InputKind.USER_INPUT]
    output_node = next(node for node in program.graph.nodes if node.op == "output")
    returned = list(output_node.args[0])
    user_outputs = [
        returned[i] for i, spec in enumerate(graph.output_specs) if spec.kind == OutputKind.USER_OUTPUT
    ]
    symbols: list[Any] = []

    def tensor(kind: str, index: int, value: Any) -> TensorSignature:
        if not isinstance(value, torch.Tensor):
            raise ConfigError(
                f"the program's {kind} {index} is a {type(value).__name__}, only tensors are served"
            )
        if value.dtype not in DATATYPES:
            raise ConfigError(
                f"the program's {kind} {index} has dtype {value.dtype}, which torchwire cannot serve"
            )
        shape = []
        sizes: list[Any] = list(value.shape)  # ints, or SymInts where dynamic
        for d, size in enumerate(sizes):
            if isinstance(size, int):
                shape.append(size)
            else:
                shape.append(DYNAMIC)
                if d == 0:
                    symbols.append(size.node.expr)
        if not value.shape or isinstance(value.shape[0], int):
            symbols.append(None)
        return TensorSignature(DATATYPES[value.dtype], tuple(shape))

    inputs = tuple(tensor("input", i, nodes[name].meta.get("val")) for i, name in enumerate(user_inputs))
    outputs = tuple(
        tensor("output", i, node.meta.get("val") if hasattr(node, "meta") else node)
        for i, node in enumerate(user_outputs)
    )
    batch = None
    first = symbols[0] if symbols else None
    if first is not None and all(s == first for s in symbols) and getattr(first, "is_Symbol", False):
        bounds = program.range_constraints.get(first)
        if bounds is not None:
            upper = bounds.upper
            batch = (int(bounds.lower), int(upper) if upper.is_finite else None)
    return Signature(inputs, outputs, batch)


def read_signature(path: Path) -> tuple[str, Signature | None]:
    """Blocking: the file's kind and its signature (None for an AOTInductor package that records none)."""
    kind = archive_kind(path)
    _refuse_unexported(path, kind)
    if kind == AOTI:
        metadata = aoti_metadata(path)
        check_portable(path, metadata)
        text = metadata.get(SIGNATURE_KEY)
        try:
            return kind, Signature.from_json(text) if text else None
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ConfigError(f"{path}: metadata '{SIGNATURE_KEY}' is not a signature: {exc}") from exc
    return kind, _signature_of(path, _load_program(path))


def _signature_of(path: Path, program: torch.export.ExportedProgram) -> Signature:
    try:
        return exported_signature(program)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _load_program(path: Path) -> torch.export.ExportedProgram:
    try:
        with _DESERIALIZING:
            return torch.export.load(str(path))
    except Exception as exc:
        raise ConfigError(f"{path}: not a loadable ExportedProgram: {first_line(exc)}") from exc


def load_exported(path: Path, spec: ModelSpec) -> Forward:
    """Blocking: the forward pass of an ExportedProgram or AOTInductor package, checked against the config."""
    if spec.optimize:
        raise ConfigError(f"{path}: parameters 'OPTIMIZE_FOR_INFERENCE' applies to TorchScript models only")
    kind = archive_kind(path)
    if kind != spec.platform:
        fix = f"set platform '{kind}'" if kind != PICKLED else "export the module with torch.export.save"
        raise ConfigError(
            f"{path}: config.pbtxt says platform '{spec.platform}' ({DESCRIPTIONS[spec.platform]}), the file "
            f"is {DESCRIPTIONS[kind]}: {fix}"
        )
    if kind == EXPORT:
        program = _load_program(path)
        check(_signature_of(path, program), spec, path)
        module = program.module()
        return lambda tensors: module(*tensors)
    metadata = aoti_metadata(path)
    check_portable(path, metadata)
    if SIGNATURE_KEY in metadata:
        _, signature = read_signature(path)
        if signature is not None:
            check(signature, spec, path)
    try:
        # One runner per instance thread, so instances run side by side instead of taking turns.
        with _DESERIALIZING:  # one export load at a time (see _DESERIALIZING), AOTInductor's too
            package = load_package(str(path), num_runners=spec.instances)
    except Exception as exc:
        raise ConfigError(f"{path}: not a loadable AOTInductor package: {first_line(exc)}") from exc
    # The package's own __call__ parses its pytree specs on every call (~25 µs); the loader's
    # boxed_run takes the flat tensor list the runtime already has. Outputs come back flat, in order.
    run = package.loader.boxed_run
    # Exported programs take tensors only: a TYPE_STRING input never passes the signature check.
    return lambda tensors: run(cast("list[torch.Tensor]", list(tensors)))
