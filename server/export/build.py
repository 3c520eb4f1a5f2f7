"""Export a module with a dynamic batch dimension and write it as a served model folder.

AOTInductor by default: native code for this machine (or, `portable`, for any x86-64-v3 CPU), the
fastest forward pass. The package
records the torch version and the program's signature in its metadata, so a server can refuse it
on another torch and complete its config without a config.pbtxt. `--kind torch_export` writes the
ExportedProgram instead: portable, no compiler needed, slower per call.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from google.protobuf import text_format

from ..repository.config import CONFIG_FILE
from ..runtime.archives import AOTI, EXPORT
from ..runtime.exported import SIGNATURE_KEY, TORCH_VERSION_KEY, exported_signature
from ..runtime.model import first_line
from ..runtime.signature import Signature, completed_config

EXPORT_KINDS = (AOTI, EXPORT)
MODEL_FILE = "model.pt2"
# Example batches have 2 rows: torch.export specializes a dimension of size 0 or 1 to a constant.
EXAMPLE_ROWS = 2


class ExportError(Exception):
    """The module cannot be exported as asked; the message says why."""


def export_module(
    module: torch.nn.Module, examples: Sequence[torch.Tensor], max_batch_size: int
) -> torch.export.ExportedProgram:
    """torch.export with dimension 0 of every input one dynamic batch dimension of 1..max_batch_size;
    the module as it is (the caller puts it in eval mode)."""
    batch = torch.export.Dim("batch", max=max_batch_size)
    try:
        return torch.export.export(
            module, tuple(examples), dynamic_shapes=tuple({0: batch} for _ in examples)
        )
    except Exception as exc:
        raise ExportError(f"torch.export cannot trace the module: {first_line(exc)}") from exc


def export_torchscript(
    path: Path, examples: Sequence[torch.Tensor], max_batch_size: int
) -> torch.export.ExportedProgram:
    """A TorchScript file as an ExportedProgram, where torch.export's TorchScript converter can."""
    from torch._export.converter import TS2EPConverter

    from ..core.errors import ConfigError
    from ..runtime.torchscript import load_file

    try:
        scripted = load_file(path)
    except ConfigError as exc:
        raise ExportError(str(exc)) from exc
    try:
        program = TS2EPConverter(scripted, tuple(examples)).convert()
    except Exception as exc:
        raise ExportError(
            f"{path}: torch.export cannot convert this TorchScript model: {first_line(exc)}"
        ) from exc
    # The converter traces at the example's shapes; export again for a dynamic batch dimension.
    return export_module(program.module(), examples, max_batch_size)


# x86-64-v3 (AVX2, FMA): what x86 servers of the last decade run; AVX-512 kernels would need AVX-512.
PORTABLE_X86: dict[str, Any] = {"cpp.march": "x86-64-v3", "cpp.simdlen": 256}


def _compile(program: torch.export.ExportedProgram, signature: Signature, path: Path, portable: bool) -> None:
    metadata = {TORCH_VERSION_KEY: torch.__version__, SIGNATURE_KEY: signature.to_json()}
    configs: dict[str, Any] = {"aot_inductor.metadata": metadata}
    if portable:
        if platform.machine() not in ("x86_64", "AMD64"):
            raise ExportError(f"--portable targets x86-64-v3; this machine is {platform.machine()}")
        configs.update(PORTABLE_X86)
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)
    except Exception as exc:
        raise ExportError(f"AOTInductor cannot compile the program: {first_line(exc)}") from exc


def write_model_folder(
    program: torch.export.ExportedProgram,
    repository: Path,
    name: str,
    *,
    kind: str = AOTI,
    max_batch_size: int,
    version: int = 1,
    portable: bool = False,
) -> Path:
    """Write `repository/name/version/model.pt2` and `repository/name/config.pbtxt`; the version folder
    appears at once (built aside, then renamed in), so a polling server never sees half a package."""
    if kind not in EXPORT_KINDS:
        raise ExportError(f"kind '{kind}' is not one of {', '.join(EXPORT_KINDS)}")
    signature = exported_signature(program)
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=model_dir))
    try:
        if kind == AOTI:
            _compile(program, signature, staging / MODEL_FILE, portable)
        else:
            torch.export.save(program, str(staging / MODEL_FILE))
        config = completed_config(signature, name, kind)
        config.max_batch_size = max_batch_size
        (model_dir / CONFIG_FILE).write_text(text_format.MessageToString(config))
        target = model_dir / str(version)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir


def example_inputs(shapes: Sequence[tuple[str, Sequence[int]]]) -> list[torch.Tensor]:
    """Zeros of EXAMPLE_ROWS rows for each (datatype, dims without the batch dimension)."""
    from ..runtime.model import TORCH_DTYPES

    tensors: list[Any] = []
    for datatype, dims in shapes:
        tensors.append(torch.zeros((EXAMPLE_ROWS, *dims), dtype=TORCH_DTYPES[datatype]))
    return tensors
