"""Small TorchScript models and repositories that tests build on the fly in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import torch


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class DoubleUnlessNegative(torch.nn.Module):
    """Raises for any row with a negative value: one bad request can poison a batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise RuntimeError("negative values are not allowed")
        return x * 2


class OneOutputOnly(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def tensor_config(name: str, datatype: str, dims: list[int]) -> str:
    return f'{{ name: "{name}" data_type: TYPE_{datatype} dims: {dims} }}'


def write_model(repo: Path, name: str, module: torch.nn.Module | None, config: str, version: int = 1) -> Path:
    model_dir = repo / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config)
    if module is not None:
        torch.jit.save(torch.jit.script(module.eval()), str(model_dir / str(version) / "model.pt"))
    return model_dir


def single_io_config(name: str, datatype: str, dims: list[int], max_batch_size: int, extra: str = "") -> str:
    return (
        f'name: "{name}"\nplatform: "pytorch_libtorch"\nmax_batch_size: {max_batch_size}\n'
        f"input [ {tensor_config('INPUT__0', datatype, dims)} ]\n"
        f"output [ {tensor_config('OUTPUT__0', datatype, dims)} ]\n{extra}"
    )


DATATYPES = ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16", "FP32", "FP64"]


def identity_repository(repo: Path) -> list[str]:
    """One identity model per supported datatype, named ident_<datatype>."""
    names = []
    for datatype in DATATYPES:
        name = f"ident_{datatype.lower()}"
        write_model(repo, name, Identity(), single_io_config(name, datatype, [4], 8))
        names.append(name)
    return names
