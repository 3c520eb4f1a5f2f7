from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from serving import RunningServer, running_server


@pytest.fixture(scope="module")
def bundled() -> Iterator[RunningServer]:
    """A server of the bundled example repository, shared by one test module."""
    with running_server() as server:
        yield server
