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


@pytest.fixture(scope="session")
def exported_models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported test models (exported.py), compiled once per cache key and reused across runs."""
    from exported import build

    cache = request.config.cache
    root = cache.mkdir("torchwire-exported") if cache is not None else tmp_path_factory.mktemp("exported")
    return build(Path(root))
