"""Rebuild torchwire's bundled example models (Triton repository layout).

Writes, for each model NAME, ``NAME/config.pbtxt`` and ``NAME/1/model.pt`` into the folder this
script lives in (or ``--out DIR``):

- ``digits``: MLP classifier trained on scikit-learn's bundled 8x8 digits (softmax output),
  plus ``digits/metrics.json`` with the held-out accuracy measured on the saved TorchScript file.
- ``simple``: Triton's classic INT32 add/sub example (two inputs, two outputs).
- ``mlp``: seeded random 64 -> 256 -> 256 -> 10 MLP for benchmarks.
- ``cnn``: seeded random small CNN over 3x64x64 images for benchmarks.
- ``text``: string (BYTES) tensors: per text its length in UTF-8 bytes, its space-separated word
  count, and the text with ASCII letters upper-cased (TorchScript takes and returns List[str]).
- ``mlp_aoti``, ``cnn_aoti``: the same two as AOTInductor packages (``model.pt2``, compiled for
  x86-64-v3 with this torch), and ``mlp_export``, ``cnn_export`` as ExportedPrograms.

Nothing is downloaded: the digits data ships inside scikit-learn.

Usage: ``python models/build.py [--out DIR]``

Reruns give byte-identical TorchScript files (same torch version and CPU; the ``.pt2`` files hold
the same weights and code, not necessarily the same bytes): weights are seeded and computed on
one thread, the script re-executes itself under PYTHONHASHSEED=0, and source-path debug records
are dropped from model.pt. Run it as a script: TorchScript names classes after their Python module,
so importing this file under another module name changes the generated code.
"""

import argparse
import io
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits  # type: ignore[import-untyped]
from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]
from torch import Tensor, nn

# One seed per model, applied right before that model is built, so the bytes of each model
# do not depend on which other models were built before it.
SEED_DIGITS = 0
SEED_MLP = 1
SEED_CNN = 2

DIGITS_SCALE = 16.0  # sklearn digits pixels are integers 0..16; dividing maps them to [0, 1].
DIGITS_TEST_SIZE = 0.25
DIGITS_RANDOM_STATE = 0
DIGITS_EPOCHS = 300
DIGITS_LR = 1e-2
DIGITS_MIN_ACCURACY = 0.95

BENCH_MAX_BATCH = 32
QUEUE_DELAY_US = 1000
SMOKE_BATCH = 3


# --------------------------------------------------------------------------------------------
# Modules. Each forward takes batched tensors (dim 0 = batch) in the order of the config's
# `input` list, which is how torchwire (and Triton's libtorch backend) feeds them.
# --------------------------------------------------------------------------------------------


class DigitsNet(nn.Module):
    """64 -> 128 -> 10 MLP; the served module returns probabilities, not logits."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 128)
        self.head = nn.Linear(128, 10)

    def logits(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(F.relu(self.hidden(x)))
        return out

    def forward(self, x: Tensor) -> Tensor:
        # Softmax inside the model so clients get probabilities without post-processing.
        return F.softmax(self.logits(x), dim=1)


class Simple(nn.Module):
    """Triton's "simple" example: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32)."""

    # Argument names equal the config's input names so servers that bind inputs by forward
    # argument name (Triton's libtorch backend does) agree with positional binding.
    def forward(self, INPUT0: Tensor, INPUT1: Tensor) -> tuple[Tensor, Tensor]:
        return INPUT0 + INPUT1, INPUT0 - INPUT1


class TextStats(nn.Module):
    """TEXT (one string per row) -> LENGTH (UTF-8 bytes), WORDS (space-separated), UPPER (ASCII
    letters upper-cased). TorchScript strings are UTF-8 bytes: `len` counts bytes, `upper` ASCII."""

    def forward(self, TEXT: list[str]) -> tuple[Tensor, Tensor, list[str]]:
        lengths: list[int] = []
        words: list[int] = []
        for text in TEXT:
            lengths.append(len(text))
            count = 0
            for word in text.split(" "):
                if word != "":
                    count += 1
            words.append(count)
        shape = [len(TEXT), 1]
        return (
            torch.tensor(lengths, dtype=torch.int64).reshape(shape),
            torch.tensor(words, dtype=torch.int64).reshape(shape),
            [text.upper() for text in TEXT],
        )


class BenchMLP(nn.Module):
    """64 -> 256 -> 256 -> 10 with ReLU; random weights, only the compute cost matters."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(64, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layers(x)
        return out


class BenchCNN(nn.Module):
    """Two stride-2 3x3 convs, global average pool, linear head; random weights."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        # Mean over H, W instead of AdaptiveAvgPool2d: same result, no extra module in the graph.
        out: Tensor = self.head(self.features(x).mean(dim=(2, 3)))
        return out


# --------------------------------------------------------------------------------------------
# config.pbtxt rendering (protobuf text format of Triton's inference.ModelConfig).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # a DataType enum name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]  # without the batch dimension (max_batch_size > 0)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_batching: bool


def _render_tensors(kind: str, tensors: Sequence[TensorSpec]) -> list[str]:
    lines = [f"{kind} ["]
    for i, t in enumerate(tensors):
        dims = ", ".join(str(d) for d in t.dims)
        lines += [
            "  {",
            f'    name: "{t.name}"',
            f"    data_type: {t.data_type}",
            f"    dims: [ {dims} ]",
            "  }," if i < len(tensors) - 1 else "  }",
        ]
    lines.append("]")
    return lines


def render_config(spec: ModelSpec, platform: str = "pytorch_libtorch") -> str:
    lines = [
        f'name: "{spec.name}"',
        f'platform: "{platform}"',
        'backend: "pytorch"',
        f"max_batch_size: {spec.max_batch_size}",
        *_render_tensors("input", spec.inputs),
        *_render_tensors("output", spec.outputs),
        "instance_group [",
        "  {",
        "    count: 1",
        "    kind: KIND_CPU",
        "  }",
        "]",
    ]
    if spec.dynamic_batching:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}", "}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Builders. Each returns the scripted module plus its spec; the writer saves and checks it.
# --------------------------------------------------------------------------------------------


def _single_io_spec(name: str, in_dims: tuple[int, ...], out_dims: tuple[int, ...]) -> ModelSpec:
    return ModelSpec(
        name=name,
        max_batch_size=BENCH_MAX_BATCH,
        inputs=(TensorSpec("INPUT__0", "TYPE_FP32", in_dims),),
        outputs=(TensorSpec("OUTPUT__0", "TYPE_FP32", out_dims),),
        dynamic_batching=True,
    )


def _freeze(module: nn.Module) -> torch.jit.ScriptModule:
    # eval() + no grad flags: nothing in the saved graph depends on training mode or autograd.
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return torch.jit.script(module)


def load_digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    data = load_digits()
    x = (data.data / DIGITS_SCALE).astype(np.float32)
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=DIGITS_TEST_SIZE, random_state=DIGITS_RANDOM_STATE, stratify=y
    )
    return (torch.from_numpy(x_tr), torch.from_numpy(x_te), torch.from_numpy(y_tr), torch.from_numpy(y_te))


def train_digits(x: Tensor, y: Tensor) -> DigitsNet:
    torch.manual_seed(SEED_DIGITS)
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), lr=DIGITS_LR)
    model.train()
    # Full batch: ~1350 samples fit trivially, and no shuffling means no extra RNG to pin down.
    for _ in range(DIGITS_EPOCHS):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model.logits(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    return model


def accuracy(module: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> float:
    with torch.inference_mode():
        pred = module(x).argmax(dim=1)
    # Integer counts, not a float32 mean: the stored number is exactly correct/total.
    return int((pred == y).sum().item()) / len(y)


def build_digits() -> tuple[torch.jit.ScriptModule, ModelSpec, tuple[Tensor, Tensor]]:
    x_tr, x_te, y_tr, y_te = load_digits_split()
    scripted = _freeze(train_digits(x_tr, y_tr))
    spec = _single_io_spec("digits", (64,), (10,))
    return scripted, spec, (x_te, y_te)


def build_simple() -> tuple[torch.jit.ScriptModule, ModelSpec]:
    spec = ModelSpec(
        name="simple",
        max_batch_size=8,
        inputs=(TensorSpec("INPUT0", "TYPE_INT32", (16,)), TensorSpec("INPUT1", "TYPE_INT32", (16,))),
        outputs=(TensorSpec("OUTPUT0", "TYPE_INT32", (16,)), TensorSpec("OUTPUT1", "TYPE_INT32", (16,))),
        dynamic_batching=False,
    )
    return _freeze(Simple()), spec


def build_text() -> tuple[torch.jit.ScriptModule, ModelSpec]:
    spec = ModelSpec(
        name="text",
        max_batch_size=BENCH_MAX_BATCH,
        inputs=(TensorSpec("TEXT", "TYPE_STRING", (1,)),),
        outputs=(
            TensorSpec("LENGTH", "TYPE_INT64", (1,)),
            TensorSpec("WORDS", "TYPE_INT64", (1,)),
            TensorSpec("UPPER", "TYPE_STRING", (1,)),
        ),
        dynamic_batching=True,
    )
    return _freeze(TextStats()), spec


def bench_mlp() -> nn.Module:
    torch.manual_seed(SEED_MLP)
    return BenchMLP().eval()


def bench_cnn() -> nn.Module:
    torch.manual_seed(SEED_CNN)
    return BenchCNN().eval()


def build_mlp() -> tuple[torch.jit.ScriptModule, ModelSpec]:
    return _freeze(bench_mlp()), _single_io_spec("mlp", (64,), (10,))


def build_cnn() -> tuple[torch.jit.ScriptModule, ModelSpec]:
    return _freeze(bench_cnn()), _single_io_spec("cnn", (3, 64, 64), (10,))


# The benchmark models again as exported programs, same weights: NAME_aoti (an AOTInductor package,
# compiled for x86-64-v3 so it runs on any AVX2 CPU) and NAME_export (the ExportedProgram).
EXPORTED = {"aoti": "torch_aoti", "export": "torch_export"}


def write_exported(out: Path, module: nn.Module, spec: ModelSpec, suffix: str) -> Path:
    """Export `module` with torchwire's own exporter (`torchwire export`) and check it answers as
    the eager module does, loaded the way the server loads it."""
    from torchwire.server.export.build import export_module, write_model_folder
    from torchwire.server.repository import load_spec
    from torchwire.server.runtime import load_forward

    kind = EXPORTED[suffix]
    exported = ModelSpec(
        f"{spec.name}_{suffix}", spec.max_batch_size, spec.inputs, spec.outputs, spec.dynamic_batching
    )
    program = export_module(module, _example_inputs(spec, 2), spec.max_batch_size)
    model_dir = write_model_folder(
        program, out, exported.name, kind=kind, max_batch_size=spec.max_batch_size, portable=True
    )
    _write_text(model_dir / "config.pbtxt", render_config(exported, kind))
    served = load_spec(model_dir)
    forward = load_forward(model_dir / "1" / served.model_file, served)
    examples = _example_inputs(spec, SMOKE_BATCH)
    with torch.inference_mode():
        got, want = forward(list(examples)), module(*examples)
    got = got[0] if isinstance(got, list | tuple) else got
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{exported.name}: answers differ from the eager module")
    return model_dir / "1" / served.model_file


# --------------------------------------------------------------------------------------------
# Writing and checking.
# --------------------------------------------------------------------------------------------

_DTYPES = {"TYPE_FP32": torch.float32, "TYPE_INT32": torch.int32, "TYPE_INT64": torch.int64}
_STRING = "TYPE_STRING"  # a List[str], one string per row


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # newline="\n": identical bytes on every OS, so rebuilds diff cleanly.
    with path.open("w", encoding="utf-8", newline="\n") as f:
        f.write(text)


# Records the archive writer produces itself in write_end_of_file(); copying them would duplicate them.
_WRITER_OWNED_RECORDS = frozenset({"version", ".data/version", ".data/serialization_id"})


def save_without_debug_info(scripted: torch.jit.ScriptModule, pt_path: Path) -> None:
    """torch.jit.save, then drop the ``*.debug_pkl`` records.

    Those records map the generated code back to Python source by absolute file path (this script
    and the torch install), so the same model built from another checkout or venv would differ
    byte-wise and would leak build-machine paths. Loading does not need them; only TorchScript
    error messages lose their Python source lines.
    """
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    reader = torch._C.PyTorchFileReader(buf)
    # Writing to the final path keeps the archive's top folder named "model", as torch.jit.save does.
    writer = torch._C.PyTorchFileWriter(str(pt_path))
    writer.set_min_version(int(reader.get_record("version")))
    for name in reader.get_all_records():
        if name.endswith(".debug_pkl") or name in _WRITER_OWNED_RECORDS:
            continue
        data = reader.get_record(name)
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()


def write_model(out: Path, scripted: torch.jit.ScriptModule, spec: ModelSpec) -> Path:
    model_dir = out / spec.name
    pt_path = model_dir / "1" / "model.pt"
    pt_path.parent.mkdir(parents=True, exist_ok=True)
    save_without_debug_info(scripted, pt_path)
    _write_text(model_dir / "config.pbtxt", render_config(spec))
    return pt_path


def _example_inputs(spec: ModelSpec, batch: int) -> list[Tensor | list[str]]:
    gen = torch.Generator().manual_seed(0)
    inputs: list[Tensor | list[str]] = []
    for t in spec.inputs:
        shape = (batch, *t.dims)
        if t.data_type == _STRING:
            inputs.append([f"example {row}" for row in range(batch)])
        elif _DTYPES[t.data_type].is_floating_point:
            inputs.append(torch.rand(shape, generator=gen))
        else:
            inputs.append(torch.randint(-100, 100, shape, generator=gen, dtype=torch.int32))
    return inputs


def load_scripted(pt_path: Path) -> torch.jit.ScriptModule:
    # The same call a CPU server makes, so checks below exercise what will actually be served.
    module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
        str(pt_path), map_location="cpu"
    )
    return module


def smoke_check(pt_path: Path, spec: ModelSpec) -> None:
    """Reload the saved file the way a server would and check output shapes/dtypes vs config."""
    loaded = load_scripted(pt_path)
    with torch.inference_mode():
        result = loaded(*_example_inputs(spec, SMOKE_BATCH))
    outputs = list(result) if isinstance(result, tuple) else [result]
    if len(outputs) != len(spec.outputs):
        raise RuntimeError(f"{spec.name}: {len(outputs)} outputs, config declares {len(spec.outputs)}")
    for got, want in zip(outputs, spec.outputs, strict=True):
        if want.data_type == _STRING:
            if not (isinstance(got, list) and len(got) == SMOKE_BATCH):
                raise RuntimeError(f"{spec.name}/{want.name}: got {got!r}, want {SMOKE_BATCH} strings")
            continue
        shape, dtype = (SMOKE_BATCH, *want.dims), _DTYPES[want.data_type]
        if tuple(got.shape) != shape or got.dtype != dtype:
            raise RuntimeError(
                f"{spec.name}/{want.name}: got {tuple(got.shape)} {got.dtype}, want {shape} {dtype}"
            )


def digits_metrics(pt_path: Path, x_te: Tensor, y_te: Tensor) -> str:
    # Measured on the saved TorchScript file, so the number describes exactly what is served.
    acc = accuracy(load_scripted(pt_path), x_te, y_te)
    if acc < DIGITS_MIN_ACCURACY:
        raise RuntimeError(f"digits held-out accuracy {acc:.4f} < {DIGITS_MIN_ACCURACY}")
    split = {"test_size": DIGITS_TEST_SIZE, "random_state": DIGITS_RANDOM_STATE, "stratify": True}
    return json.dumps({"test_accuracy": acc, "split": split, "scale": DIGITS_SCALE}, indent=2) + "\n"


def configure_determinism() -> None:
    # One thread: float reductions then run in a fixed order, so retraining reproduces the same
    # weights (and bytes). The workloads are tiny, so this costs almost nothing.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def build_all(out: Path) -> None:
    configure_determinism()
    out.mkdir(parents=True, exist_ok=True)

    digits, digits_spec, (x_te, y_te) = build_digits()
    pt_path = write_model(out, digits, digits_spec)
    smoke_check(pt_path, digits_spec)
    metrics = digits_metrics(pt_path, x_te, y_te)
    _write_text(out / "digits" / "metrics.json", metrics)
    print(f"digits: {pt_path} test_accuracy={json.loads(metrics)['test_accuracy']:.4f}")

    for builder in (build_simple, build_mlp, build_cnn, build_text):
        scripted, spec = builder()
        pt_path = write_model(out, scripted, spec)
        smoke_check(pt_path, spec)
        print(f"{spec.name}: {pt_path} ({os.path.getsize(pt_path)} bytes)")

    for eager, spec in ((bench_mlp(), build_mlp()[1]), (bench_cnn(), build_cnn()[1])):
        for suffix in EXPORTED:
            path = write_exported(out, eager, spec, suffix)
            print(f"{spec.name}_{suffix}: {path} ({os.path.getsize(path)} bytes)")


def ensure_fixed_hash_seed() -> None:
    """Re-run this script under PYTHONHASHSEED=0 unless it already is.

    torch.jit.script collects a module's constants (e.g. Linear.in_features, Conv2d.stride) in a
    Python ``set`` and emits them in iteration order, which follows the per-process string hash
    seed. Without a fixed seed the generated code inside model.pt, and so its bytes, change from
    run to run even though weights and behaviour are identical.
    """
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv: Sequence[str] | None = None) -> None:
    # The TorchScript examples are built with torch.jit on purpose (torchwire serves TorchScript, and
    # existing repositories rely on it); torch 2.13 deprecates exactly these calls.
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.(script|save|load)` is deprecated", category=DeprecationWarning
    )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent, help="model repository directory"
    )
    args = parser.parse_args(argv)
    build_all(args.out)


if __name__ == "__main__":
    ensure_fixed_hash_seed()
    main()
