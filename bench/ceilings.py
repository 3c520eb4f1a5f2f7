"""The in-process ceiling: the model's own forward pass, with no server around it.

This is the only bench module that imports torch, and only inside `measure`, once the servers are
stopped, so the model has the cores to itself like it would inside the server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from torchwire.server.repository import ModelSpec, build_spec, load_spec
from torchwire.server.repository.scanner import versions_of
from torchwire.server.settings import default_threads

WARMUP_CALLS = 5
# The time per batch size is cut into windows and the fastest one counts: other work on the machine
# only ever slows a window down, so the best one is the closest to the model's own speed.
WINDOWS = 10


@dataclass(frozen=True, slots=True)
class LocalModel:
    path: Path  # the model file the server loads (highest version)
    spec: ModelSpec


@dataclass(frozen=True, slots=True)
class InProcess:
    batch: int  # rows per forward pass (1 for a model without batching)
    rows_per_s: float
    threads: int  # torch intra-op threads used
    reliable: bool = True  # False: it came out below what the server did (a busy machine)


def find_model(repository: Path, model: str) -> LocalModel | None:
    """The model file and config the server serves for `model`, or None if it is not there."""
    model_dir = repository / model
    versions = versions_of(model_dir) if model_dir.is_dir() else ()
    if not versions:
        return None
    if (model_dir / "config.pbtxt").exists():
        spec = load_spec(model_dir)
    else:  # an exported program's own signature completes it, as the server does (needs torch)
        from torchwire.server.runtime import model_config

        spec = build_spec(model_dir, model_config(model_dir))
    path = model_dir / str(max(versions)) / spec.model_file
    return LocalModel(path, spec) if path.is_file() else None


def server_threads(spec: ModelSpec, torch_threads: int | None) -> int:
    """The intra-op threads torchwire gives each instance of this model (registry's rule)."""
    return spec.threads_per_instance(torch_threads or 0, default_threads())


def _rows(array: npt.NDArray[Any], rows: int) -> npt.NDArray[Any]:
    """`array` repeated along its first (batch) dimension to exactly `rows` rows."""
    repeats = math.ceil(rows / array.shape[0])
    return np.ascontiguousarray(np.concatenate([array] * repeats)[:rows])


def measure(
    local: LocalModel,
    inputs: Mapping[str, npt.NDArray[Any]],
    batches: Iterable[int],
    *,
    threads: int,
    seconds: float,
) -> dict[int, InProcess]:
    """Rows per second of the module forward passes at each batch size, in inference mode: the
    fastest of WINDOWS windows that share `seconds`."""
    import torch

    # The server's own loading (any kind, optimized where the config says) and numpy -> torch step.
    from torchwire.server.runtime import load_forward
    from torchwire.server.runtime.model import to_tensor

    spec = local.spec
    batched = spec.max_batch_size > 0
    forward = load_forward(local.path, spec)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # restored below: the caller's process keeps its own setting
    results: dict[int, InProcess] = {}
    try:
        for batch in sorted(set(batches)):
            rows = batch if batched else None
            tensors = [
                to_tensor(_rows(inputs[t.name], batch) if batched else inputs[t.name], t, rows)
                for t in spec.inputs
            ]
            best = 0.0
            with torch.inference_mode():
                for _ in range(WARMUP_CALLS):
                    forward(tensors)
                for _ in range(WINDOWS):
                    calls = 0
                    started = time.perf_counter()
                    while (elapsed := time.perf_counter() - started) < seconds / WINDOWS:
                        forward(tensors)
                        calls += 1
                    best = max(best, calls * (batch if batched else 1) / elapsed)
            results[batch] = InProcess(batch if batched else 1, best, threads)
    finally:
        torch.set_num_threads(previous)
    return results
