"""Install torch's CPU build for `make setup` and the image: from PyTorch's CPU wheel index when it
answers, else from pip's own configured index, saying so.

On Linux x86_64 PyPI's torch is the CUDA build (a 527 MB wheel plus several GB of nvidia-* wheels),
so the CPU index comes first. TORCH_INDEX_URL picks another index (a mirror of the CPU index, or a
CUDA build's); set empty, pip's own configuration decides. A machine that reaches only a PyPI mirror
(like CI) learns within PROBE_TIMEOUT_S that the index does not answer and installs from the mirror.
With PIP_NO_INDEX set (an offline build from a folder of wheels) no index is asked at all.

Usage: python install_torch.py [--dry-run] [more pip install options]
Needs only the standard library: it runs before anything else is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

TORCH = "torch==2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_TIMEOUT_S = 5.0


def answers(index: str) -> bool:
    """Whether the index lists torch (a PEP 503 project page), within PROBE_TIMEOUT_S."""
    page = index.rstrip("/") + "/torch/"
    if page.startswith("file://"):
        return Path(page.removeprefix("file://")).is_dir()
    try:
        with urllib.request.urlopen(page, timeout=PROBE_TIMEOUT_S) as reply:
            return bool(reply.status == 200)
    except (OSError, ValueError):  # no route, no name, refused, timed out, HTTP errors
        return False


def pip_command(extra: list[str]) -> list[str]:
    index = os.environ.get("TORCH_INDEX_URL", CPU_INDEX)
    command = [sys.executable, "-m", "pip", "install", *extra]
    if not index or os.environ.get("PIP_NO_INDEX"):
        return [*command, TORCH]
    if not answers(index):
        print(
            f"install_torch: {index} cannot be reached (a {PROBE_TIMEOUT_S:g} s probe); installing "
            f"{TORCH} from pip's configured index instead (on Linux x86_64 PyPI's torch is the CUDA "
            "build: set TORCH_INDEX_URL to a reachable copy of PyTorch's CPU index to avoid that)",
            file=sys.stderr,
        )
        return [*command, TORCH]
    return [*command, "--index-url", index, TORCH]


def main(argv: list[str]) -> int:
    dry_run = "--dry-run" in argv
    command = pip_command([arg for arg in argv if arg != "--dry-run"])
    print(" ".join(command), flush=True)
    return 0 if dry_run else subprocess.call(command)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
