"""What a model file holds, told from its zip entries without loading it.

TorchScript files, ExportedPrograms (torch.export.save), AOTInductor packages and torch.save'd
modules are all zip archives, and loading the wrong kind fails with torch's own, unhelpful message
("corrupted", "PytorchStreamReader failed"). The entry names tell them apart, so a refusal can say
what the file is and which platform would serve it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

TORCHSCRIPT = "pytorch_libtorch"
AOTI = "torch_aoti"
EXPORT = "torch_export"
PICKLED = "torch.save"  # no platform serves it
DESCRIPTIONS = {
    TORCHSCRIPT: "TorchScript (torch.jit.save)",
    AOTI: "an AOTInductor package",
    EXPORT: "an ExportedProgram (torch.export.save)",
    PICKLED: "a module or state_dict saved with torch.save (pickled)",
}
AOTI_DIR = "data/aotinductor/"


def entries(path: Path) -> list[str] | None:
    """The archive's entry names with its top folder removed (torch names that folder after the
    file), or None if the file is not a zip archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [name.split("/", 1)[1] for name in archive.namelist() if "/" in name]
    except (zipfile.BadZipFile, OSError):
        return None


def kind_of(names: Sequence[str]) -> str | None:
    """One of DESCRIPTIONS' kinds from an archive's entries (see `entries`), or None if none fits."""
    if any(name.startswith(AOTI_DIR) and name.endswith(".so") for name in names):
        return AOTI
    if any(name.startswith("models/") and name.endswith(".json") for name in names):
        return EXPORT
    if "data.pkl" in names:
        return TORCHSCRIPT if "constants.pkl" in names else PICKLED
    return None
