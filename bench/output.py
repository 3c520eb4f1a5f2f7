"""What the bench and soak reports share: how numbers and errors read, and the JSON and CSV files."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Recorded:
    """What every results file starts with: which model, which server, when, with what, on what."""

    model: str
    target: str  # "spawned" when the run started the server itself
    started: str  # ISO 8601, local time
    settings: dict[str, Any]
    machine: dict[str, Any]

    def header(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": self.target,
            "started": self.started,
            "settings": self.settings,
            "machine": self.machine,
        }


def num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def error_counts(errors: Mapping[str, int]) -> str:
    """`0`, or each status code with its count, e.g. `UNAVAILABLE 3, DEADLINE_EXCEEDED 1`."""
    if not errors:
        return "0"
    return ", ".join(f"{code} {count:,}" for code, count in sorted(errors.items()))


def stamped(out: Path, name: str) -> Path:
    """`out/<name>-<local time>` (the folder made if missing): files add their suffix to it."""
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def write_json(data: Mapping[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_csv(rows: Iterable[Mapping[str, object]], columns: Sequence[str], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            # Empty cells for n/a, which spreadsheets and pandas read as missing.
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
