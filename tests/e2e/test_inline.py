"""`--inline-forward-us` through a real server: which models serve lone requests on the event loop,
as the load log says, correct answers either way, and a model whose cost depends on its data
blocking the loop once at most."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.modelgen import Spinner, spinner_config, write_model
from support.serving import running_server, wait_until
from torchwire.client import Client
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc

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


def spin(rounds: int, value: float) -> pb.ModelInferRequest:
    """A request to the Spinner, which computes for `rounds` rounds and doubles `value`."""
    request = pb.ModelInferRequest(model_name="spinner")
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.array([[rounds, value]], "<f4").tobytes())
    return request


def test_a_model_whose_cost_depends_on_its_data_blocks_the_loop_once_at_most(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_model(tmp_path, "spinner", Spinner(), spinner_config("spinner", ""))
    with (
        caplog.at_level(logging.WARNING, logger="torchwire.runtime"),
        # 5 ms: a pass of 0 rounds is far shorter; 1,000 rounds (~0.1 s) is over ten times it.
        running_server(tmp_path, inline_forward_us=5_000, torch_threads=1) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        model = server.app.registry.lookup("spinner").model
        for i in range(10):
            stub.ModelInfer(spin(0, i), timeout=60)
        assert model.inline(1)
        answer = stub.ModelInfer(spin(1_000, 1.0), timeout=120)  # on the loop, the one time
        assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == [2.0]
        assert not model.inline(1)
        (warning,) = [r.getMessage() for r in caplog.records if r.name == "torchwire.runtime"]
        assert re.fullmatch(
            r"model spinner: a one-row forward pass took \d+ µs, over 10 times --inline-forward-us: its "
            r"lone requests run on the instance threads from now on",
            warning,
        ), warning
        # From now on a long pass runs on an instance thread: health answers while it computes.
        busy = stub.ModelInfer.future(spin(20_000, 3.0), timeout=180)
        wait_until(lambda: server.queue_state("spinner")[1] == 1, "the slow request runs")
        health = health_pb2_grpc.HealthStub(channel)
        check = health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=60)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        assert not busy.done(), "health answered only after the forward pass: the event loop was blocked"
        assert np.frombuffer(busy.result().raw_output_contents[0], "<f4").tolist() == [6.0]
