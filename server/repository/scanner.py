"""Finds models and their numbered versions in a Triton-layout repository folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ModelSource:
    name: str
    path: Path
    versions: tuple[int, ...]  # ascending; folders named by a positive integer


def versions_of(model_dir: Path) -> tuple[int, ...]:
    found = [
        int(child.name)
        for child in model_dir.iterdir()
        if child.is_dir() and child.name.isascii() and child.name.isdigit() and 0 < int(child.name) < 2**63
    ]
    return tuple(sorted(found))


def scan(root: Path) -> list[ModelSource]:
    """Every model folder under root, by name; hidden folders and loose files are not models."""
    return [
        ModelSource(child.name, child, versions_of(child))
        for child in sorted(root.iterdir())
        if child.is_dir() and not child.name.startswith((".", "_"))
    ]
