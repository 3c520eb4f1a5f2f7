from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.serving import RunningServer, running_server


@pytest.fixture(scope="session", autouse=True)
def default_ports_taken() -> Iterator[None]:
    """The suite runs as if `make serve` were running beside it: the gRPC, metrics and HTTP ports a
    server would take from the environment are busy (ephemeral ports held here: no test binds a
    fixed port). A server a test starts without choosing its ports fails at once, saying which."""
    names = ("TORCHWIRE_PORT", "TORCHWIRE_METRICS_PORT", "TORCHWIRE_HTTP_PORT")
    held = [socket.create_server(("127.0.0.1", 0)) for _ in names]
    saved = {name: os.environ.get(name) for name in names}
    for name, sock in zip(names, held, strict=True):
        os.environ[name] = str(sock.getsockname()[1])
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for sock in held:
            sock.close()


@pytest.fixture(scope="module")
def bundled() -> Iterator[RunningServer]:
    """A server of the bundled example repository, shared by one test module."""
    with running_server() as server:
        yield server


@pytest.fixture(scope="session")
def exported_models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported test models (support/exported.py), compiled once per cache key and reused across runs."""
    from support.exported import build

    cache = request.config.cache
    root = cache.mkdir("torchwire-exported") if cache is not None else tmp_path_factory.mktemp("exported")
    return build(Path(root))
