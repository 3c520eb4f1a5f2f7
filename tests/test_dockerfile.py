"""The Dockerfile passes hadolint (no Docker engine here to build it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_image_runs_as_non_root_on_models() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in text
    assert "TORCHWIRE_MODEL_REPOSITORY=/models" in text
    assert 'ENTRYPOINT ["torchwire", "serve"]' in text


def test_image_tag_ports_and_readme_references_agree() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert version is not None
    tag = f"torchwire:{version.group(1)}"
    for manifest in ("deploy/kubernetes/deployment.yaml", "deploy/kserve/inferenceservice.yaml"):
        assert f"image: {tag}" in (ROOT / manifest).read_text(), manifest
    run = f'docker run -p 8001:8001 -p 8002:8002 -v "$PWD/models:/models:ro" {tag}'
    for text in (dockerfile, readme):
        assert f"docker build -t {tag} ." in text
        assert run in text
    assert "IMAGE ?= torchwire:$(shell sed" in (ROOT / "Makefile").read_text()
    # Every README section the Dockerfile points to exists.
    for section in re.findall(r'README "([^"]+)"', dockerfile):
        assert f"\n### {section}\n" in readme or f"\n## {section}\n" in readme, section
    # The offline recipe downloads wheels for the image's Python, not the host's.
    python = re.search(r"^FROM python:(\d+\.\d+)-", dockerfile, re.MULTILINE)
    assert python is not None
    assert readme.count(f"--only-binary=:all: --python-version {python.group(1)} --platform") == 2
