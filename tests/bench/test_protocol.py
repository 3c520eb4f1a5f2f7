"""The pool <-> worker messages survive their trip as JSON lines, types and bytes included."""

from __future__ import annotations

import numpy as np

from torchwire.bench.protocol import (
    Connect,
    Connected,
    Failed,
    Measured,
    OutputSpec,
    Run,
    Soak,
    decode,
    encode,
)


def test_commands_round_trip() -> None:
    connect = Connect("bare", "127.0.0.1:1", b"\x00\xffrequest", (OutputSpec("y", "FP32", (8, -1)),), True)
    run = Run("bare", 3, 12.5, 0.5, 2.0)
    soak = Soak(("unary", 4), ("stream", (2, 2)), 1.0, (2.0, 3.5))
    for message in (connect, run, soak):
        line = encode(message)
        assert line.endswith("\n") and line.count("\n") == 1
        assert decode(line) == message


def test_replies_round_trip_latencies_as_int64() -> None:
    measured = Measured(np.array([5, 7, 2**40], np.int64), {"UNAVAILABLE": 2}, "a problem", 3, 1)
    back = decode(encode(measured))
    assert isinstance(back, Measured)
    assert back.latencies_ns.dtype == np.int64 and back.latencies_ns.tolist() == [5, 7, 2**40]
    assert (back.errors, back.problem, back.unary_ok, back.stream_ok) == (
        {"UNAVAILABLE": 2},
        "a problem",
        3,
        1,
    )
    assert decode(encode(Failed("UNIMPLEMENTED", "no streams"))) == Failed("UNIMPLEMENTED", "no streams")
    assert decode(encode(Connected())) == Connected()
    assert decode(encode(Measured())).latencies_ns.tolist() == []  # type: ignore[union-attr]
