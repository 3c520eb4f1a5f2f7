"""scripts/install_torch.py, which `make setup` and the image run: PyTorch's CPU index when it
answers, pip's own index when it does not (quickly), another index when TORCH_INDEX_URL says so."""

from __future__ import annotations

import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install_torch.py"
TORCH = "torch==2.13.0"


def dry_run(**env: str) -> subprocess.CompletedProcess[str]:
    variables = {k: v for k, v in os.environ.items() if k not in ("TORCH_INDEX_URL", "PIP_NO_INDEX")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "-q"],
        env=variables | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


@contextmanager
def index_serving_torch(tmp_path: Path) -> Iterator[str]:
    """A PEP 503 index on 127.0.0.1 that lists a torch project page."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<html></html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def test_an_index_that_answers_is_used(tmp_path: Path) -> None:
    with index_serving_torch(tmp_path) as index:
        result = dry_run(TORCH_INDEX_URL=index)
    assert result.stdout.split() == [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--index-url",
        index,
        TORCH,
    ]
    assert result.stderr == ""


def test_an_unreachable_index_falls_back_to_pips_own_and_says_so() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/whl/cpu"  # nothing listens there
    result = dry_run(TORCH_INDEX_URL=closed)
    assert result.stdout.split() == [sys.executable, "-m", "pip", "install", "-q", TORCH]
    assert result.stderr.startswith(f"install_torch: {closed} cannot be reached (a 5 s probe); installing")
    assert "set TORCH_INDEX_URL to a reachable copy of PyTorch's CPU index" in result.stderr


def test_an_empty_index_or_an_offline_build_asks_no_index() -> None:
    for env in ({"TORCH_INDEX_URL": ""}, {"PIP_NO_INDEX": "1"}):
        result = dry_run(**env)
        assert result.stdout.split() == [sys.executable, "-m", "pip", "install", "-q", TORCH], env
        assert result.stderr == ""


def test_setup_and_image_install_torch_with_the_script() -> None:
    assert "$(PY) scripts/install_torch.py -q" in (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert (
        "COPY scripts/install_torch.py /tmp/install_torch.py\nRUN python /tmp/install_torch.py" in dockerfile
    )
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
