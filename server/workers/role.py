"""What makes one worker's server part of a group: its place, its internal socket, its peers' sockets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class WorkerRole:
    index: int
    socket: Path  # this worker's internal endpoint (a unix socket only the server's user can reach)
    peers: tuple[Path, ...]  # every other worker's internal endpoint
    replacement: bool = False  # started in place of a worker that died
