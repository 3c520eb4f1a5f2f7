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


class Spinner(torch.nn.Module):
    """Computes for `INPUT__0[:, 0]` rounds and counts every row it ever computed.

    OUTPUT__0 = 2 * INPUT__0[:, -1:]; OUTPUT__1 = rows computed so far (including this batch), so a
    test can prove that an expired or cancelled request never ran.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(1, dtype=torch.int64))
        self.register_buffer("w", torch.eye(192) * 0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.add_(x.shape[0])
        acc = self.w
        for _ in range(int(x[:, 0].max().item())):
            acc = torch.mm(acc, self.w) + self.w
        doubled = x[:, -1:] * 2 + acc[0:1, 0:1] * 0  # the last column: rows may be wider
        return doubled, self.calls.expand(x.shape[0]).reshape(-1, 1).clone()


def spinner_config(name: str, batching: str, width: int = 2) -> str:
    """A Spinner's config; width -1 lets rows be any width (extra columns are ignored)."""
    return (
        f'name: "{name}"\nmax_batch_size: 8\n'
        f"input [ {tensor_config('INPUT__0', 'FP32', [width])} ]\n"
        f"output [ {tensor_config('OUTPUT__0', 'FP32', [1])}, {tensor_config('OUTPUT__1', 'INT64', [1])} ]\n"
        f"{batching}\n"
    )


class ShapeShifter(torch.nn.Module):
    """Returns a wrong output shape only for inputs summing over 100: warmup cannot catch it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 100):
            return x[:, :1]
        return x


class Scale(torch.nn.Module):
    """OUTPUT__0 = k * INPUT__0: versions of one model that answer differently."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.k


def add_version(
    repo: Path, name: str, version: int, module: torch.nn.Module | None, content: bytes = b""
) -> None:
    """Place a version folder atomically (built aside, then renamed in), as a deploy tool should."""
    staging = repo / f".staging-{name}-{version}"
    staging.mkdir()
    if module is not None:
        torch.jit.save(torch.jit.script(module.eval()), str(staging / "model.pt"))
    else:
        (staging / "model.pt").write_bytes(content)
    staging.rename(repo / name / str(version))


class Expand(torch.nn.Module):
    """OUTPUT__0 repeats INPUT__0 64 times: a small request with a large response."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, 64)


class ConvNet(torch.nn.Module):
    """A convolution and a batch norm with non-trivial statistics: what optimize_for_inference
    folds together and moves to oneDNN kernels, so that a wrong rewrite would change the answers."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.copy_(torch.randn(8, generator=generator))  # every instance the same
            self.bn.running_mean.copy_(torch.rand(8, generator=generator) - 0.5)
            self.bn.running_var.copy_(torch.rand(8, generator=generator) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


class WidthFive(torch.nn.Module):
    """Echoes its input, but raises for rows that are not 5 wide: proves what shape a caller sent."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 5:
            raise RuntimeError(f"rows must be 5 wide, got {x.shape[1]}")
        return x.clone()
