"""Exported test models (ExportedProgram and AOTInductor), built once and cached.

An AOTInductor compile takes 20 s or more on a 2-core machine, so the packages are built once per
cache key (torch version, CPU, and the source of everything that shapes them) and reused by every
test and every later run; tests copy the model folders they need into their own repositories.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from torchwire.server.export.build import export_module, write_model_folder

HERE = Path(__file__).resolve()
SERVER = HERE.parents[2] / "server"  # the repository root's server/
MAX_BATCH = 16
AOTI_MODEL = "two_aoti"  # AOTInductor, with the config.pbtxt `torchwire export` writes
EP_MODEL = "two_ep"  # ExportedProgram, no config.pbtxt: completed from the program
STATIC_MODEL = "static_ep"  # ExportedProgram exported without a dynamic batch dimension


class TwoInputs(torch.nn.Module):
    """Two inputs of different dtypes, two outputs of different dtypes."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(3, 4, generator=generator))
            self.linear.bias.copy_(torch.randn(3, generator=generator))

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(self.linear(x)) + ids.to(torch.float32), ids * 2 + 1


def examples(rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(rows)
    return torch.randn(rows, 4, generator=generator), torch.randint(-5, 5, (rows, 3), generator=generator)


def inputs(rows: int) -> dict[str, np.ndarray]:
    x, ids = examples(rows)
    return {"INPUT__0": x.numpy(), "INPUT__1": ids.numpy()}


def eager(feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        a, b = TwoInputs().eval()(torch.from_numpy(feed["INPUT__0"]), torch.from_numpy(feed["INPUT__1"]))
    return a.numpy(), b.numpy()


def _key() -> str:
    digest = hashlib.sha256()
    for source in (
        HERE,
        *sorted((SERVER / "export").glob("*.py")),
        *sorted((SERVER / "runtime").glob("*.py")),
    ):
        digest.update(source.read_bytes())
    digest.update(f"{torch.__version__} {platform.machine()}".encode())
    return digest.hexdigest()[:16]


def build(cache: Path) -> Path:
    """The cached repository of exported test models, built if this key has none yet."""
    folder = cache / _key()
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    program = export_module(TwoInputs().eval(), examples(), MAX_BATCH)
    write_model_folder(program, folder, AOTI_MODEL, kind="torch_aoti", max_batch_size=MAX_BATCH)
    write_model_folder(program, folder, EP_MODEL, kind="torch_export", max_batch_size=MAX_BATCH)
    (folder / EP_MODEL / "config.pbtxt").unlink()
    static = torch.export.export(TwoInputs().eval(), examples())
    torch.export.save(static, str(folder / "static.pt2"))
    (folder / "done").write_text("")
    return folder


def copy_model(cache: Path, name: str, repository: Path, as_name: str | None = None) -> Path:
    target = repository / (as_name or name)
    shutil.copytree(cache / name, target)
    return target


def rewrite_metadata(package: Path, changes: dict[str, str]) -> None:
    """Edit the metadata an AOTInductor package recorded, as if it were built elsewhere."""
    with zipfile.ZipFile(package) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(package, "w") as archive:
        for info, data in entries:
            if info.filename.endswith("wrapper_metadata.json"):
                data = json.dumps({**json.loads(data), **changes}).encode()
            archive.writestr(info, data)
