"""The client's codec without a server: BYTES elements to and from their wire layout."""

from __future__ import annotations

import numpy as np
import pytest

from torchwire.client import _codec


def test_the_codec_round_trips_bytes_and_refuses_other_elements() -> None:
    array = np.array([["é", b"\x00\xff"], ["", "x" * 70_000]], dtype=np.object_)
    raw = _codec.to_raw(array, "BYTES")
    back = _codec.from_raw("BYTES", [2, 2], raw, "T")
    assert back.tolist() == [["é".encode(), b"\x00\xff"], [b"", b"x" * 70_000]]
    with pytest.raises(_codec.CodecError, match="must be bytes or str, got int"):
        _codec.to_raw(np.array([b"a", 5], dtype=np.object_), "BYTES")
