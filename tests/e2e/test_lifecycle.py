"""Model lifecycle under load: version swaps, bad versions, explicit load/unload, drain on SIGTERM."""

from __future__ import annotations

import shutil
import signal
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from support.modelgen import Scale, Spinner, add_version, single_io_config, spinner_config, write_model
from support.serving import RunningServer, running_server, serve_process, wait_for_line, wait_until
from torchwire.client import Client, InferenceError
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc

ONES = np.ones((1, 4), np.float32)


class Load:
    """A bounded closed-loop load: `concurrency` threads calling until stopped (or a call budget ends)."""

    def __init__(self, target: str, model: str, concurrency: int = 16, budget: int = 200_000) -> None:
        self.failures: list[BaseException] = []
        self.answers: list[float] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._budget = budget
        self._threads = [threading.Thread(target=self._run, args=(target, model)) for _ in range(concurrency)]

    def _run(self, target: str, model: str) -> None:
        with Client(target, timeout=60) as client:
            while not self._stop.is_set():
                with self._lock:
                    if self._budget <= 0:
                        return
                    self._budget -= 1
                try:
                    value = float(client.predict(model, {"INPUT__0": ONES})["OUTPUT__0"][0, 0])
                except Exception as exc:
                    with self._lock:
                        self.failures.append(exc)
                else:
                    with self._lock:
                        self.answers.append(value)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def seen(self, value: float) -> bool:
        with self._lock:
            return value in self.answers[-50:]


def index(target: str) -> dict[tuple[str, str], pb.RepositoryIndexResponse.ModelIndex]:
    with Client(target, timeout=30) as client:
        return {(m.name, m.version): m for m in client.repository_index()}


@pytest.fixture
def scaled_repo(tmp_path: Path) -> Path:
    write_model(
        tmp_path, "scaled", Scale(1.0), single_io_config("scaled", "FP32", [4], 8, "dynamic_batching { }")
    )
    return tmp_path


def test_poll_mode_swaps_versions_under_load_without_failures(scaled_repo: Path) -> None:
    with (
        running_server(scaled_repo, model_control_mode="poll", repository_poll_secs=0.2) as server,
        Load(server.target, "scaled") as load,
    ):
        wait_until(lambda: load.seen(1.0), "version 1 answers")
        add_version(scaled_repo, "scaled", 2, Scale(2.0))
        wait_until(lambda: load.seen(2.0) and not load.seen(1.0), "answers switch to version 2")
        wait_until(lambda: index(server.target)[("scaled", "1")].state == "UNAVAILABLE", "version 1 unloads")
        assert index(server.target)[("scaled", "1")].reason == "unloaded"

        # A corrupt version 3 never takes traffic: version 2 keeps serving, the index says why.
        add_version(scaled_repo, "scaled", 3, None, b"not a TorchScript archive")
        wait_until(
            lambda: (
                index(server.target).get(("scaled", "3")) is not None
                and index(server.target)[("scaled", "3")].state == "UNAVAILABLE"
            ),
            "version 3 is reported",
        )
        assert "TorchScript" in index(server.target)[("scaled", "3")].reason
        settled = len(load.answers)
        wait_until(lambda: len(load.answers) > settled + 200, "more answers after the corrupt version")
        assert load.seen(2.0) and not load.seen(3.0)
        with Client(server.target, timeout=30) as client:
            assert client.ready() is True
            assert client.metadata("scaled").versions == ("2",)
    assert load.failures == []
    assert set(load.answers) <= {1.0, 2.0}


def test_poll_mode_adds_and_removes_models(scaled_repo: Path) -> None:
    with running_server(scaled_repo, model_control_mode="poll", repository_poll_secs=0.2) as server:
        write_model(scaled_repo, "later", Scale(3.0), single_io_config("later", "FP32", [4], 8))
        with Client(server.target, timeout=30) as client:
            wait_until(lambda: client.ready("later"), "the new model loads")
            assert client.predict("later", {"INPUT__0": ONES})["OUTPUT__0"][0, 0] == 3.0
            for child in sorted((scaled_repo / "later").rglob("*"), reverse=True):
                child.unlink() if child.is_file() else child.rmdir()
            (scaled_repo / "later").rmdir()
            wait_until(lambda: ("later", "1") not in index(server.target), "the removed model goes")
            with pytest.raises(InferenceError) as caught:
                client.predict("later", {"INPUT__0": ONES})
            assert caught.value.code is grpc.StatusCode.NOT_FOUND


def test_explicit_mode_with_tritonclient(scaled_repo: Path) -> None:
    write_model(scaled_repo, "other", Scale(5.0), single_io_config("other", "FP32", [4], 8))
    with running_server(scaled_repo, model_control_mode="explicit", load_model=("scaled",)) as server:
        client = triton.InferenceServerClient(server.target)
        try:
            assert client.is_model_ready("scaled") is True
            assert client.is_model_ready("other") is False
            assert client.is_server_ready() is True
            models = {m.name: m for m in client.get_model_repository_index().models}
            assert set(models) == {"scaled", "other"} and models["other"].state == "UNAVAILABLE"
            client.load_model("other")
            assert client.is_model_ready("other") is True
            with Load(server.target, "scaled") as load:
                wait_until(lambda: load.seen(1.0), "version 1 answers")
                add_version(scaled_repo, "scaled", 2, Scale(2.0))
                client.load_model("scaled")  # the load RPC swaps in version 2 beside version 1
                wait_until(lambda: load.seen(2.0) and not load.seen(1.0), "answers switch to version 2")
            assert load.failures == []
            # A config override travels as JSON in the load's `config` parameter, as Triton's does.
            client.load_model(
                "other",
                config='{"max_batch_size": 8, "input": [{"name": "INPUT__0", '
                '"data_type": "TYPE_FP32", "dims": [4]}], "output": [{"name": "OUTPUT__0", '
                '"data_type": "TYPE_FP32", "dims": [4]}], "version_policy": {"all": {}}}',
            )
            assert client.get_model_config("other").config.version_policy.HasField("all")
            client.unload_model("other")
            assert client.is_model_ready("other") is False
            assert client.is_server_ready() is True  # an unloaded model is no longer asked for
            with pytest.raises(triton.InferenceServerException) as caught:
                client.load_model("missing")
            assert "NOT_FOUND" in str(caught.value.status())
        finally:
            client.close()


@pytest.mark.parametrize("name", ["../scaled", "/etc", "a/b", "..", ".hidden", "scaled/../scaled"])
def test_path_like_model_names_are_rejected(scaled_repo: Path, name: str) -> None:
    with (
        running_server(scaled_repo, model_control_mode="explicit") as server,
        grpc.insecure_channel(server.target) as ch,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        for call in (stub.RepositoryModelLoad, stub.RepositoryModelUnload):
            request_type = (
                pb.RepositoryModelLoadRequest
                if call is stub.RepositoryModelLoad
                else pb.RepositoryModelUnloadRequest
            )
            with pytest.raises(grpc.RpcError) as caught:
                call(request_type(model_name=name), timeout=30)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "plain folder name" in caught.value.details()


def test_unloading_under_load_answers_queued_requests(tmp_path: Path) -> None:
    write_model(tmp_path, "spin", Spinner(), spinner_config("spin", ""))
    with (
        running_server(
            tmp_path, model_control_mode="explicit", load_model=("spin",), torch_threads=1
        ) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def call(rounds: int, value: float) -> grpc.Future:
            req = pb.ModelInferRequest(model_name="spin")
            req.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 2])
            req.raw_input_contents.append(np.array([[rounds, value]], "<f4").tobytes())
            return stub.ModelInfer.future(req, timeout=120)

        busy = call(10_000, 1.0)
        wait_until(lambda: server.queue_state("spin")[1] == 1, "the slow request runs")
        queued = [call(0, float(i)) for i in range(4)]
        wait_until(lambda: server.queue_state("spin")[0] == 4, "four requests wait")
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="spin"), timeout=120)
        assert np.frombuffer(busy.result().raw_output_contents[0], "<f4").tolist() == [2.0]
        for i, q in enumerate(queued):
            assert np.frombuffer(q.result().raw_output_contents[0], "<f4").tolist() == [2.0 * i]
        with pytest.raises(grpc.RpcError) as caught:
            call(0, 1.0).result()
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "unloaded" in caught.value.details()


def test_version_policy_all_serves_every_version(tmp_path: Path) -> None:
    config = single_io_config("multi", "FP32", [4], 8, "version_policy: { all: {} }")
    write_model(tmp_path, "multi", Scale(1.0), config)
    add_version(tmp_path, "multi", 2, Scale(2.0))
    with running_server(tmp_path) as server, Client(server.target, timeout=30) as client:
        assert client.metadata("multi").versions == ("1", "2")
        assert client.predict("multi", {"INPUT__0": ONES}, version="1")["OUTPUT__0"][0, 0] == 1.0
        assert client.predict("multi", {"INPUT__0": ONES}, version="2")["OUTPUT__0"][0, 0] == 2.0
        assert client.predict("multi", {"INPUT__0": ONES})["OUTPUT__0"][0, 0] == 2.0  # "" is the highest
        assert client.ready("multi", version="1") and client.ready("multi", version="2")


def test_warmup_runs_before_the_first_request(tmp_path: Path) -> None:
    warm = (
        'model_warmup [{ name: "w" batch_size: 3 count: 2 inputs { key: "INPUT__0" '
        "value: { data_type: TYPE_FP32 dims: [2] zero_data: true } } }]"
    )
    write_model(tmp_path, "warm", Spinner(), spinner_config("warm", warm))
    write_model(tmp_path, "default", Spinner(), spinner_config("default", ""))
    with running_server(tmp_path) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for model, warmup_rows in (("warm", 2 * 3), ("default", 2 * (1 + 8))):
            req = pb.ModelInferRequest(model_name=model)
            req.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 2])
            req.raw_input_contents.append(np.array([[0, 1]], "<f4").tobytes())
            calls = np.frombuffer(stub.ModelInfer(req, timeout=60).raw_output_contents[1], "<i8")[0]
            assert calls == warmup_rows + 1, model


def health_of(target: str, service: str = "readiness") -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        return status


def test_sigterm_under_load_drains_and_exits_zero(scaled_repo: Path) -> None:
    variables = {"drain_delay_s": "1.5", "shutdown_grace": "20", "model_repository": str(scaled_repo)}
    with serve_process(**variables) as process:
        port = int(wait_for_line(process, r"listening on 127\.0\.0\.1:(\d+)").group(1))
        wait_for_line(process, "server ready")
        target = f"127.0.0.1:{port}"
        with Load(target, "scaled", concurrency=8) as load:
            wait_until(lambda: len(load.answers) > 200, "the load is going")
            process.send_signal(signal.SIGTERM)
            # Readiness flips while the listener still answers (the drain delay)...
            wait_until(
                lambda: health_of(target) == health_pb2.HealthCheckResponse.NOT_SERVING,
                "health says NOT_SERVING while the listener still answers",
            )
            # ...while liveness stays SERVING: a failing liveness probe would get the pod killed.
            assert health_of(target, "liveness") == health_pb2.HealthCheckResponse.SERVING
            during_drain = len(load.answers)
            wait_until(lambda: len(load.answers) > during_drain + 20, "requests still served while draining")
        # ...and the load balancer stand-in (this Load) stops sending once it sees that: every
        # request sent before, including those accepted during the drain, completed successfully.
        assert health_of(target, "liveness") == health_pb2.HealthCheckResponse.SERVING
        assert load.failures == []
        assert process.wait(timeout=60) == 0
        assert process.stderr is not None
        log = process.stderr.read()
        assert "drained" in log
        assert ", 0 failed, 0 refused while stopping" in log


def test_sigterm_with_default_flags_never_cancels_a_tritonclient_call(scaled_repo: Path) -> None:
    """tritonclient does not retry: each call sent before the stop is answered, or refused with
    UNAVAILABLE ("try elsewhere"); grpc's own stop would cancel those it had not handed over yet."""
    statuses: list[list[tuple[float, str]]] = [[] for _ in range(16)]
    begun = threading.Event()

    def caller(target: str, mine: list[tuple[float, str]]) -> None:
        # Like a caller that gives up at its first error: it sends nothing more after that.
        client = triton.InferenceServerClient(target)
        request = triton.InferInput("INPUT__0", [1, 4], "FP32")
        request.set_data_from_numpy(ONES)
        while True:
            sent = time.monotonic()
            try:
                client.infer("scaled", [request], client_timeout=60)
            except InferenceServerException as exc:
                mine.append((sent, str(exc.status())))
                return
            mine.append((sent, "OK"))
            if len(mine) == 50:
                begun.set()

    with serve_process(model_repository=str(scaled_repo)) as process:
        port = int(wait_for_line(process, r"listening on 127\.0\.0\.1:(\d+)").group(1))
        wait_for_line(process, "server ready")
        callers = [threading.Thread(target=caller, args=(f"127.0.0.1:{port}", s)) for s in statuses]
        for thread in callers:
            thread.start()
        assert begun.wait(timeout=120), "the load is going"
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        for thread in callers:
            thread.join(timeout=120)
    ends = [mine[-1][1] for mine in statuses]
    assert set(ends) <= {"StatusCode.UNAVAILABLE"}, ends  # every caller ended on UNAVAILABLE
    sent_before = [status for mine in statuses for sent, status in mine if sent < stopped_at]
    assert set(sent_before) <= {"OK", "StatusCode.UNAVAILABLE"}
    assert sent_before.count("OK") > 16 * 10


def test_poll_mode_forgets_a_removed_version_that_had_failed(scaled_repo: Path) -> None:
    with running_server(
        scaled_repo, model_control_mode="poll", repository_poll_secs=0.2, metrics_port=-1
    ) as server:
        add_version(scaled_repo, "scaled", 2, None, b"not a TorchScript archive")
        wait_until(
            lambda: ("scaled", "2") in index(server.target) and index(server.target)[("scaled", "2")].reason,
            "the broken version 2 is reported",
        )
        assert 'version="2"' in scrape_metrics(server)
        shutil.rmtree(scaled_repo / "scaled" / "2")
        wait_until(
            lambda: ("scaled", "2") not in index(server.target), "the removed version 2 leaves the index"
        )
        assert [key for key in index(server.target)] == [("scaled", "1")]
        states = [
            line for line in scrape_metrics(server).splitlines() if line.startswith("torchwire_model_state{")
        ]
        assert states and all('version="1"' in line for line in states), states
        with Client(server.target, timeout=30) as client:
            assert client.predict("scaled", {"INPUT__0": ONES})["OUTPUT__0"][0, 0] == 1.0


def scrape_metrics(server: RunningServer) -> str:
    assert server.app.metrics is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{server.app.metrics.port}/metrics", timeout=30) as reply:
        text: str = reply.read().decode()
        return text
