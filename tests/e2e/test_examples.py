"""The examples in examples/ run against a real server (so they cannot rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.serving import RunningServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXPECTED = {
    "unary.py": "predicted digits: [",
    "stream_generator.py": "streamed 100 frames",
    "async_stream.py": "100 answers",
    "tritonclient_stream.py": "100 answers, 0 errors",
}


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_runs(bundled: RunningServer, example: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / example), bundled.target], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert EXPECTED[example] in result.stdout
