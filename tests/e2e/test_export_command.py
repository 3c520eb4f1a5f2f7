"""`torchwire export`: a module or a TorchScript folder in, a served model folder out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from support.exported import MAX_BATCH, eager, inputs
from support.modelgen import DoubleUnlessNegative, single_io_config, write_model
from support.serving import running_server
from torchwire.client import Client
from torchwire.models import REPOSITORY
from torchwire.server.cli import main

EXPORTED_PY = Path(__file__).resolve().parents[1] / "support" / "exported.py"


def test_exports_a_module_class_into_a_served_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "export",
            f"{EXPORTED_PY}:TwoInputs",
            "--input",
            "FP32:4",
            "--input",
            "int64:3",
            "--kind",
            "torch_export",
            "--max-batch-size",
            str(MAX_BATCH),
            "--repository",
            str(tmp_path),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert f"wrote {tmp_path / 'twoinputs'}" in capsys.readouterr().out
    config = (tmp_path / "twoinputs" / "config.pbtxt").read_text()
    assert 'platform: "torch_export"' in config and f"max_batch_size: {MAX_BATCH}" in config
    with running_server(tmp_path) as server, Client(server.target, timeout=60) as client:
        feed = inputs(5)
        got = client.predict("twoinputs", feed)
        want = eager(feed)
        np.testing.assert_allclose(got["OUTPUT__0"], want[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["OUTPUT__1"], want[1])


def test_converts_a_torchscript_folder_keeping_its_config(tmp_path: Path) -> None:
    code = main(
        [
            "export",
            "--from-torchscript",
            str(REPOSITORY / "mlp"),
            "--kind",
            "torch_export",
            "--repository",
            str(tmp_path),
        ]
    )
    assert code == 0
    config = (tmp_path / "mlp_export" / "config.pbtxt").read_text()
    assert 'name: "mlp_export"' in config and 'platform: "torch_export"' in config
    assert "max_queue_delay_microseconds: 1000" in config  # the TorchScript folder's own settings
    rows = np.random.default_rng(0).random((7, 64), dtype=np.float32)
    with torch.inference_mode():
        scripted = torch.jit.load(str(REPOSITORY / "mlp" / "1" / "model.pt"))
        want = scripted(torch.from_numpy(rows)).numpy()
    with running_server(tmp_path) as server, Client(server.target, timeout=60) as client:
        got = client.predict("mlp_export", {"INPUT__0": rows})["OUTPUT__0"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_says_why_a_torchscript_model_does_not_convert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_model(tmp_path, "picky", DoubleUnlessNegative(), single_io_config("picky", "FP32", [4], 8))
    code = main(
        ["export", "--from-torchscript", str(tmp_path / "picky"), "--repository", str(tmp_path / "out")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "torchwire export:" in err and "model.pt: torch.export cannot convert this TorchScript model" in err
    )
    assert not (tmp_path / "out" / "picky_aoti").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "FP33:4"], "--input 'FP33:4': datatype must be one of"),
        (["--input", "FP32:4,x"], "dims must be comma-separated positive integers"),
        (["--input", "FP32:4", "--max-batch-size", "1"], "--max-batch-size must be >= 2"),
        (["--input", "FP32:4", "--name", "x"], "has no 'Nope'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    target = f"{EXPORTED_PY}:{'Nope' if '--name' in argv else 'TwoInputs'}"
    assert main(["export", target, "--repository", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
