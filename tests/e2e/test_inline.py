"""`--inline-forward-us` through a real server: which models serve lone requests on the event loop,
as the load log says, and correct answers either way."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from support.serving import running_server
from torchwire.client import Client

A = np.arange(16, dtype=np.int32).reshape(1, 16)
READY = r"model simple version 1 ready \(.*\)"


def ready_line(caplog: pytest.LogCaptureFixture) -> str:
    (line,) = [r.getMessage() for r in caplog.records if re.fullmatch(READY, r.getMessage())]
    return line


@pytest.mark.parametrize(
    ("bound_us", "says"),
    [
        # 100 ms: any machine runs `simple` (an add and a subtract) that fast, even under load.
        (100_000, r"; one-row forward pass \d+ µs: a lone request runs on the event loop\)$"),
        # 1 µs: nothing is that fast, at load or since.
        (1, r"; one-row forward pass \d+ µs: always on instance threads\)$"),
        (0, r"thread\(s\)\)$"),  # off: not even measured
    ],
)
def test_the_bound_decides_where_lone_requests_run(
    caplog: pytest.LogCaptureFixture, bound_us: int, says: str
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="torchwire.registry"),
        running_server(inline_forward_us=bound_us) as server,
        Client(server.target, timeout=30) as client,
    ):
        for _ in range(20):  # lone requests, one after another
            out = client.predict("simple", {"INPUT0": A, "INPUT1": A})
            np.testing.assert_array_equal(out["OUTPUT0"], A + A)
            np.testing.assert_array_equal(out["OUTPUT1"], A - A)
        inline = server.app.registry.lookup("simple").model.inline(1)
    assert re.search(says, ready_line(caplog)), ready_line(caplog)
    assert inline == (bound_us == 100_000)
