"""`torchwire serve --workers 2` through real servers: one face to clients and operators, supervision."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf.json_format import MessageToJson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from support.modelgen import Scale, single_io_config, write_model
from support.serving import TORCHWIRE, ServeProcess, serve_process, wait_until
from torchwire.client import AsyncClient, Client
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc
from torchwire.models import REPOSITORY
from torchwire.server import App, Settings
from torchwire.server.repository import read_config
from torchwire.server.startup import StartupError

START_TIMEOUT_S = 240.0  # two workers loading torch at once on a busy 2-core machine
SIMPLE = {"INPUT0": np.ones((1, 16), np.int32), "INPUT1": np.ones((1, 16), np.int32)}
# A connection of its own per channel, and no retries: each failure is seen where it happened.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]


class Workers:
    """A running `torchwire serve --workers N` process and what its log has said so far."""

    def __init__(self, served: ServeProcess, count: int) -> None:
        self.served = served
        self.process = served.process
        self.count = count

    @property
    def log(self) -> str:
        return self.served.text()

    def matches(self, pattern: str) -> list[re.Match[str]]:
        return list(re.finditer(pattern, self.log))

    def wait_for(self, pattern: str, times: int = 1, timeout: float = START_TIMEOUT_S) -> re.Match[str]:
        """The `times`-th line matching `pattern`, as the log comes in."""
        wait_until(
            lambda: len(self.matches(pattern)) >= times or self.process.poll() is not None,
            f"{pattern!r} in the log",
            timeout,
        )
        found = self.matches(pattern)
        assert len(found) >= times, f"exited {self.process.returncode} before {pattern!r}:\n{self.log}"
        return found[times - 1]

    def read_to_end(self) -> None:
        """The rest of the log, once the server has exited (and every worker that held its pipe)."""
        self.served.wait(timeout=120)

    @property
    def target(self) -> str:
        port = self.wait_for(r"listening on 127\.0\.0\.1:(\d+) with").group(1)
        return f"127.0.0.1:{port}"

    @property
    def metrics_port(self) -> int:
        return int(self.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics \(all workers\)").group(1))

    def pid(self, index: int) -> int:
        """The pid of worker `index` now (a replacement's, once it listens)."""
        return int(self.matches(rf"worker {index} \(pid (\d+)\) listening")[-1].group(1))

    def own_metrics_port(self, index: int) -> int:
        return int(self.matches(rf"worker {index} \(pid \d+\) listening; its own metrics port (\d+)")[-1][1])


@contextmanager
def serving_workers(*flags: str, count: int = 2, **variables: str) -> Iterator[Workers]:
    """`torchwire serve --workers count` on free ports (serve_process), loaded; always stopped,
    with SIGTERM first (a drain), and its workers too."""
    variables.setdefault("shutdown_grace", "20")
    with serve_process((str(TORCHWIRE),), "--workers", str(count), *flags, **variables) as served:
        process = served.process
        workers = Workers(served, count)
        try:
            workers.wait_for(rf"all {count} workers loaded")
            yield workers
        finally:
            pids = [int(m.group(1)) for m in workers.matches(r"worker \d+ \(pid (\d+)\) listening")]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):  # serve_process kills it then
                    process.wait(timeout=90)
            for pid in pids:  # a worker outliving its supervisor (it would stop by itself, too)
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def successes(port: int) -> float:
    return sample(scrape(port), "torchwire_request_success_total", model="simple", version="1")


def ready_on(workers: Workers, model: str, index: int) -> bool:
    metrics = scrape(workers.metrics_port)
    labels = {"model": model, "version": "1", "worker": str(index)}
    return sample(metrics, "torchwire_model_state", state="READY", **labels) == 1.0


def statistics(target: str) -> pb.ModelStatistics:
    with grpc.insecure_channel(target, OWN_CONNECTION) as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(name="simple"), timeout=30
        )
    (model,) = answer.model_stats
    return model


def health_of(target: str) -> int:
    with grpc.insecure_channel(target, OWN_CONNECTION) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status: int = stub.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=10).status
        return status


def test_calls_on_many_connections_reach_every_worker_and_statistics_add_up() -> None:
    with serving_workers() as workers:
        own = [workers.own_metrics_port(index) for index in range(2)]
        sent = 0
        # The client's option: 16 connections (all on one worker by chance: 2 in 65,536), calls in turn.
        with Client(workers.target, connections=16, timeout=60) as client:
            for _ in range(64):
                outputs = client.predict("simple", SIMPLE)
                assert outputs["OUTPUT0"].tolist() == [[2] * 16]
                sent += 1
        per_worker = [successes(port) for port in own]
        assert all(count > 0 for count in per_worker), per_worker
        assert sum(per_worker) == sent

        async def predict_async() -> int:  # the asyncio client takes the same option
            async with AsyncClient(workers.target, connections=4, timeout=60) as client:
                answers = await asyncio.gather(*(client.predict("simple", SIMPLE) for _ in range(16)))
            return sum(outputs["OUTPUT0"].tolist() == [[2] * 16] for outputs in answers)

        sent += asyncio.run(predict_async())
        assert sent == 80
        # The HTTP/REST port is one port for all workers too: a new connection per call.
        http_port = int(workers.wait_for(r"HTTP/REST on 127\.0\.0\.1:(\d+) \(all workers\)").group(1))
        body = json.dumps(
            {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": [1] * 16} for n in SIMPLE]}
        ).encode()
        for _ in range(16):
            infer = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/models/simple/infer", data=body)
            with urllib.request.urlopen(infer, timeout=60) as answer:
                outputs = {o["name"]: o["data"] for o in json.loads(answer.read())["outputs"]}
            assert outputs["OUTPUT0"] == [2] * 16
            sent += 1
        # Whichever worker answers (a connection of its own each time), it counts every worker's.
        for _ in range(6):
            model = statistics(workers.target)
            assert model.inference_count == sent
            assert model.execution_count == sum(batch.compute_infer.count for batch in model.batch_stats)
            assert model.inference_stats.success.count == sent
        merged = scrape(workers.metrics_port)
        assert sample(merged, "torchwire_request_success_total", model="simple", version="1") == sent
        assert sample(merged, "torchwire_request_duration_seconds_count", model="simple", version="1") == sent
        for index in range(2):  # what describes one process keeps its worker label
            assert sample(merged, "torchwire_process_resident_memory_bytes", worker=str(index)) > 50e6


def served_batch_sizes(target: str, model: str, connections: int = 12) -> set[int]:
    """max_batch_size of `model` as answered over `connections` connections of their own (so from
    every worker, but with a chance of 2**-connections per worker)."""
    sizes = set()
    for _ in range(connections):
        with grpc.insecure_channel(target, OWN_CONNECTION) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            sizes.add(stub.ModelConfig(pb.ModelConfigRequest(name=model), timeout=30).config.max_batch_size)
    return sizes


def test_load_and_unload_apply_to_every_worker_and_to_a_replacement() -> None:
    flags = ("--model-control-mode", "explicit", "--load-model", "simple")
    with serving_workers(*flags) as workers:
        assert not any(ready_on(workers, "mlp", index) for index in range(2))
        with triton.InferenceServerClient(workers.target) as client:  # Triton's own client
            # A config given in the load request (config.pbtxt says max_batch_size 32).
            override = json.loads(
                MessageToJson(read_config(REPOSITORY / "mlp"), preserving_proto_field_name=True)
            )
            override["max_batch_size"] = 4
            client.load_model("mlp", config=json.dumps(override))
            assert served_batch_sizes(workers.target, "mlp") == {4}
            # Answered: every worker serves it already, whichever connection asks.
            assert all(ready_on(workers, "mlp", index) for index in range(2))
            for _ in range(6):
                with grpc.insecure_channel(workers.target, OWN_CONNECTION) as channel:
                    stub = pb_grpc.GRPCInferenceServiceStub(channel)
                    models = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=30).models
                    assert sorted(m.name for m in models) == ["mlp", "simple"]
                    assert health_of(workers.target) == health_pb2.HealthCheckResponse.SERVING
            # A replacement serves what the others serve now, not only what the flags named.
            os.kill(workers.pid(1), signal.SIGKILL)
            workers.wait_for(r"all 2 workers loaded", times=2)
            assert ready_on(workers, "mlp", 1)
            assert served_batch_sizes(workers.target, "mlp") == {4}  # with the config the others serve
            client.unload_model("mlp")
            assert not any(ready_on(workers, "mlp", index) for index in range(2))
            assert all(ready_on(workers, "simple", index) for index in range(2))


class ConnectionLoad:
    """Closed-loop callers, each on a connection of its own without retries, counting per caller;
    with `give_up`, a caller sends nothing more after its first error (like tritonclient's callers)."""

    def __init__(self, target: str, *, give_up: bool = False) -> None:
        self.target = target
        self.give_up = give_up
        self.answers: list[int] = []
        self.failures: list[list[grpc.StatusCode]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def add(self) -> None:
        self.answers.append(0)
        self.failures.append([])
        thread = threading.Thread(target=self._run, args=(len(self._threads),))
        self._threads.append(thread)
        thread.start()

    def _run(self, me: int) -> None:
        request = pb.ModelInferRequest(model_name="simple")
        for name, value in SIMPLE.items():
            request.inputs.add(name=name, datatype="INT32", shape=value.shape)
            request.raw_input_contents.append(value.tobytes())
        with grpc.insecure_channel(self.target, OWN_CONNECTION) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.is_set():
                try:
                    stub.ModelInfer(request, timeout=60)
                except grpc.RpcError as exc:
                    self.failures[me].append(exc.code())
                    if self.give_up:
                        return
                    time.sleep(0.05)  # the connection is gone: the channel reconnects
                else:
                    self.answers[me] += 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)


def client_ports(pid: int, port: int) -> set[int]:
    """The client ports of the connections to `port` that process `pid` holds (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == "01" and inode in inodes and int(local.rsplit(":", 1)[1], 16) == port:
                ports.add(int(remote.rsplit(":", 1)[1], 16))
    return ports


def test_a_killed_worker_is_replaced_and_the_others_connections_never_fail() -> None:
    with serving_workers() as workers:
        port = int(workers.target.rsplit(":", 1)[1])
        load = ConnectionLoad(workers.target)
        try:
            for _ in range(8):
                load.add()
            wait_until(lambda: all(load.answers), "every caller has its connection")
            held = {index: client_ports(workers.pid(index), port) for index in range(2)}
            while not all(held.values()) and len(load.answers) < 32:  # each worker holds some
                load.add()
                wait_until(lambda: all(load.answers), "every caller has its connection")
                held = {index: client_ports(workers.pid(index), port) for index in range(2)}
            assert all(held.values()), held
            os.kill(workers.pid(1), signal.SIGKILL)
            workers.wait_for(r"worker 1 \(pid \d+\) died with exit code -9: replacing it")
            workers.wait_for(r"all 2 workers loaded", times=2)
            wait_until(lambda: ready_on(workers, "simple", 1), "the replacement is ready")
            after = list(load.answers)
            wait_until(
                lambda: all(now > then for now, then in zip(load.answers, after, strict=True)),
                "every caller is answered again",
            )
        finally:
            load.stop()
        broken = [codes for codes in load.failures if codes]
        # Only the callers whose connection the killed worker held saw failures, all UNAVAILABLE.
        assert len(broken) <= len(held[1]) < len(load.answers)
        assert {code for codes in broken for code in codes} <= {grpc.StatusCode.UNAVAILABLE}
        assert statistics(workers.target).inference_stats.fail.count == 0


def test_sigterm_drains_every_worker_and_loses_no_call() -> None:
    with serving_workers(count=2, drain_delay_s="4") as workers:
        target = workers.target
        load = ConnectionLoad(target, give_up=True)
        try:
            for _ in range(8):
                load.add()
            wait_until(lambda: sum(load.answers) > 200, "the load is going")
            workers.process.send_signal(signal.SIGTERM)
            wait_until(
                lambda: health_of(target) == health_pb2.HealthCheckResponse.NOT_SERVING,
                "health says NOT_SERVING while the listeners still answer",
            )
            during_drain = sum(load.answers)
            wait_until(lambda: sum(load.answers) > during_drain + 10, "requests served while draining")
            # The callers keep calling through the close: each call is answered, or refused with
            # UNAVAILABLE ("try elsewhere"); none is cancelled by a worker's stop.
            assert workers.process.wait(timeout=120) == 0
        finally:
            load.stop()
        workers.read_to_end()
        assert load.failures == [[grpc.StatusCode.UNAVAILABLE]] * 8
        stopped = workers.matches(r"stopped: drained; (\d+) requests succeeded, (\d+) failed, (\d+) refused")
        assert len(stopped) == 2, workers.log
        assert sum(int(m.group(1)) for m in stopped) == sum(load.answers)
        assert all(m.group(2) == "0" for m in stopped)
        assert sum(int(m.group(3)) for m in stopped) <= 8


def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# none yet\n")
    with serve_process((str(TORCHWIRE),), "--workers", "2", auth_token_file=str(tokens)) as process:
        assert process.wait(timeout=START_TIMEOUT_S) == 1
        log = process.text()
    assert f"could not start: ValueError: auth_token_file {tokens} holds no token" in log
    assert "replacing" not in log


def test_the_port_of_workers_is_refused_to_a_lone_server_and_busy_ports_to_workers() -> None:
    with serving_workers() as workers:
        port = int(workers.target.rsplit(":", 1)[1])
        lone = App(Settings(host="127.0.0.1", port=port, metrics_port=0))

        async def start() -> None:
            try:
                await lone.start()
            finally:
                await lone.stop()

        with pytest.raises(StartupError, match=rf"cannot listen on 127\.0\.0\.1:{port} for gRPC"):
            asyncio.run(start())
        with serve_process((str(TORCHWIRE),), "--workers", "2", port=str(port)) as process:
            assert process.wait(timeout=START_TIMEOUT_S) == 1
            log = process.text()
        assert log == (
            f"torchwire: cannot listen on 127.0.0.1:{port} for gRPC (Address already in use): choose "
            "another port with --port or TORCHWIRE_PORT (0 picks a free one)\n"
        )
    busy = os.environ["TORCHWIRE_METRICS_PORT"]  # held by the suite (conftest)
    with serve_process((str(TORCHWIRE),), "--workers", "2", metrics_port=busy) as process:
        assert process.wait(timeout=START_TIMEOUT_S) == 1
        log = process.text()
    assert log.startswith(
        f"torchwire: cannot listen on 127.0.0.1:{busy} for metrics (Address already in use)"
    )
    assert "worker" not in log  # refused before any worker started


def test_poll_mode_converges_on_every_worker(tmp_path: Path) -> None:
    write_model(tmp_path, "first", Scale(1.0), single_io_config("first", "FP32", [4], 8))
    flags = ("--model-repository", str(tmp_path), "--model-control-mode", "poll")
    with serving_workers(*flags, repository_poll_secs="0.3") as workers:
        write_model(tmp_path, "later", Scale(3.0), single_io_config("later", "FP32", [4], 8))
        wait_until(lambda: all(ready_on(workers, "later", index) for index in range(2)), "both load it")
        with Client(workers.target, connections=8, timeout=30) as client:
            for _ in range(16):
                outputs = client.predict("later", {"INPUT__0": np.ones((1, 4), np.float32)})
                assert outputs["OUTPUT__0"].tolist() == [[3.0] * 4]


def gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
    except FileNotFoundError:
        return True


def test_workers_stop_when_their_supervisor_is_killed() -> None:
    with serving_workers() as workers:
        pids = [workers.pid(index) for index in range(2)]
        workers.process.kill()
        workers.process.wait(timeout=30)
        wait_until(lambda: all(gone(pid) for pid in pids), "both workers exit")
        workers.read_to_end()  # the workers held the log's pipe: it ends once both have exited
        assert workers.log.count("stopped: drained") == 2, workers.log
