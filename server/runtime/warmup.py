"""Warmup before a model version takes traffic, so its first request is not its slowest.

With `model_warmup` in config.pbtxt, each sample runs `count` times with zero or random data. Without
it, one pass runs at each batch size the batcher forms most (1 and max_batch_size), with zeros and
every variable dimension set to 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from torchwire.client import _codec

from ..core.errors import ConfigError
from ..repository import ModelSpec, WarmupSample

Array = npt.NDArray[Any]


def _array(datatype: str, shape: tuple[int, ...], random: bool, rng: np.random.Generator) -> Array:
    if datatype == "BYTES":  # str elements, as the codec hands them to the model: "" or digits
        texts = rng.integers(0, 8, shape).astype(str) if random else np.full(shape, "")
        return texts.astype(np.object_)
    wire = _codec.DATATYPES[datatype].wire
    if not random:
        return np.zeros(shape, dtype=wire)
    if wire.kind == "b":
        return rng.random(shape) > 0.5
    if wire.kind in "iu":
        return rng.integers(0, 8, shape, dtype=wire)
    return rng.random(shape).astype(wire)


def _rows(spec: ModelSpec, batch: int) -> tuple[int, ...]:
    return (batch,) if spec.max_batch_size > 0 else ()


def warmup_batches(spec: ModelSpec) -> list[list[Array]]:
    """The input batches to run before serving, in config input order."""
    rng = np.random.default_rng(0)
    if spec.warmup:
        return [batch for sample in spec.warmup for batch in _sample_batches(spec, sample, rng)]
    sizes = sorted({1, spec.max_batch_size}) if spec.max_batch_size > 0 else [0]
    # Two passes per size: TorchScript's profiling executor optimizes a graph on its second run.
    sizes = [size for size in sizes for _ in range(2)]
    return [
        [
            _array(t.datatype, _rows(spec, size) + tuple(max(d, 1) for d in t.dims), False, rng)
            for t in spec.inputs
        ]
        for size in sizes
    ]


def probe_batch(spec: ModelSpec) -> list[Array] | None:
    """One row of zeros per input, to time the forward pass at load (runtime/inline.py); None when a
    row count does not tell a pass's cost: a variable dimension or a BYTES input."""
    if any(t.row_elements is None or t.datatype == "BYTES" for t in spec.inputs):
        return None
    return [_array(t.datatype, _rows(spec, 1) + t.dims, False, np.random.default_rng(0)) for t in spec.inputs]


def _sample_batches(spec: ModelSpec, sample: WarmupSample, rng: np.random.Generator) -> list[list[Array]]:
    batch: list[Array] = []
    for t in spec.inputs:
        given = sample.inputs[t.name]
        if given.datatype != t.datatype:
            raise ConfigError(
                f"model_warmup '{sample.name}': input '{t.name}' is {given.datatype}, "
                f"the model takes {t.datatype}"
            )
        batch.append(_array(t.datatype, _rows(spec, sample.batch_size) + given.dims, given.random, rng))
    return [batch] * sample.count
