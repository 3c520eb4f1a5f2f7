from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.serving import RunningServer, running_server


@pytest.fixture(scope="module")
def bundled() -> Iterator[RunningServer]:
    """A server of the bundled example repository, shared by one test module."""
    with running_server() as server:
        yield server
