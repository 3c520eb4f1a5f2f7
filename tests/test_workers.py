"""`torchwire serve --workers 2` through real servers: one face to clients and operators, supervision."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
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
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from modelgen import Scale, single_io_config, write_model
from serving import wait_until
from torchwire.client import AsyncClient, Client
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc
from torchwire.server import App, Settings
from torchwire.server.settings import default_threads
from torchwire.server.workers.metrics import merge
from torchwire.server.workers.statistics import merge_statistics

START_TIMEOUT_S = 240.0  # two workers loading torch at once on a busy 2-core machine
SIMPLE = {"INPUT0": np.ones((1, 16), np.int32), "INPUT1": np.ones((1, 16), np.int32)}
# A connection of its own per channel, and no retries: each failure is seen where it happened.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]


class Workers:
    """A running `torchwire serve --workers N` process and what its log says."""

    def __init__(self, process: subprocess.Popen[str], count: int) -> None:
        self.process = process
        self.count = count
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._lock:
                self._lines.append(line)

    @property
    def log(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def matches(self, pattern: str) -> list[re.Match[str]]:
        return list(re.finditer(pattern, self.log))

    def wait_for(self, pattern: str, times: int = 1, timeout: float = START_TIMEOUT_S) -> re.Match[str]:
        def seen() -> bool:
            if self.process.poll() is not None and len(self.matches(pattern)) < times:
                raise AssertionError(f"server exited ({self.process.returncode}):\n{self.log}")
            return len(self.matches(pattern)) >= times

        wait_until(seen, f"the log says {pattern!r} {times} time(s)", timeout)
        return self.matches(pattern)[times - 1]

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
def serving_workers(*flags: str, count: int = 2, **env: str) -> Iterator[Workers]:
    """`torchwire serve --workers count` on an ephemeral port, loaded; always stopped, workers too."""
    environment = {
        **os.environ,
        "TORCHWIRE_HOST": "127.0.0.1",
        "TORCHWIRE_PORT": "0",
        "TORCHWIRE_METRICS_PORT": "-1",
        "TORCHWIRE_TORCH_THREADS": "1",
        "TORCHWIRE_SHUTDOWN_GRACE": "20",
        **env,
    }
    torchwire = Path(sys.executable).parent / "torchwire"
    process = subprocess.Popen(
        [str(torchwire), "serve", "--workers", str(count), *flags],
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers = Workers(process, count)
    try:
        workers.wait_for(rf"all {count} workers loaded")
        yield workers
    finally:
        pids = [int(m.group(1)) for m in workers.matches(r"worker \d+ \(pid (\d+)\) listening")]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
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


def test_load_and_unload_apply_to_every_worker_and_to_a_replacement() -> None:
    flags = ("--model-control-mode", "explicit", "--load-model", "simple")
    with serving_workers(*flags) as workers:
        assert not any(ready_on(workers, "mlp", index) for index in range(2))
        with triton.InferenceServerClient(workers.target) as client:  # Triton's own client
            client.load_model("mlp")
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
            client.unload_model("mlp")
            assert not any(ready_on(workers, "mlp", index) for index in range(2))
            assert all(ready_on(workers, "simple", index) for index in range(2))


class ConnectionLoad:
    """Closed-loop callers, each on a connection of its own without retries, counting per caller."""

    def __init__(self, target: str) -> None:
        self.target = target
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


def test_sigterm_drains_every_worker_and_exits_zero() -> None:
    with serving_workers(count=2, TORCHWIRE_DRAIN_DELAY_S="1.5") as workers:
        target = workers.target
        load = ConnectionLoad(target)
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
            wait_until(lambda: sum(load.answers) > during_drain + 20, "requests served while draining")
        finally:
            load.stop()  # the load balancer stand-in stops sending once it sees NOT_SERVING
        assert [codes for codes in load.failures if codes] == []
        assert workers.process.wait(timeout=90) == 0
        stopped = workers.matches(r"stopped: drained; (\d+) requests succeeded, (\d+) failed")
        assert len(stopped) == 2
        assert sum(int(m.group(1)) for m in stopped) == sum(load.answers)
        assert all(m.group(2) == "0" for m in stopped)


def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# none yet\n")
    torchwire = Path(sys.executable).parent / "torchwire"
    finished = subprocess.run(
        [str(torchwire), "serve", "--workers", "2", "--host", "127.0.0.1", "--port", "0"],
        env={**os.environ, "TORCHWIRE_AUTH_TOKEN_FILE": str(tokens), "TORCHWIRE_METRICS_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )
    assert finished.returncode == 1
    assert f"could not start: ValueError: auth_token_file {tokens} holds no token" in finished.stderr
    assert "replacing" not in finished.stderr


def test_the_port_of_workers_is_refused_to_a_lone_server_and_a_busy_port_to_workers() -> None:
    with serving_workers() as workers:
        port = int(workers.target.rsplit(":", 1)[1])
        lone = App(Settings(host="127.0.0.1", port=port, metrics_port=0))

        async def start() -> None:
            try:
                await lone.start()
            finally:
                await lone.stop()

        with pytest.raises(RuntimeError):
            asyncio.run(start())
        torchwire = Path(sys.executable).parent / "torchwire"
        finished = subprocess.run(
            [str(torchwire), "serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, "TORCHWIRE_METRICS_PORT": "0"},
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        assert finished.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in finished.stderr


def test_poll_mode_converges_on_every_worker(tmp_path: Path) -> None:
    write_model(tmp_path, "first", Scale(1.0), single_io_config("first", "FP32", [4], 8))
    flags = ("--model-repository", str(tmp_path), "--model-control-mode", "poll")
    with serving_workers(*flags, TORCHWIRE_REPOSITORY_POLL_SECS="0.3") as workers:
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
        wait_until(lambda: workers.log.count("stopped: drained") == 2, "both workers drained")


def test_workers_setting_and_connections_option_are_checked() -> None:
    assert Settings(workers="3").worker_count == 3
    assert Settings(workers="auto").worker_count == default_threads()
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="workers must be a whole number >= 1 or auto"):
            Settings(workers=bad)
    with pytest.raises(ValueError, match="connections must be >= 1, got 0"):
        Client("127.0.0.1:1", connections=0)


def _statistics(name: str, count: int, batches: dict[int, int]) -> pb.ModelStatisticsResponse:
    response = pb.ModelStatisticsResponse()
    model = response.model_stats.add(name=name, version="1", inference_count=count, last_inference=count)
    model.inference_stats.success.count = count
    model.inference_stats.success.ns = 1000 * count
    for size, runs in batches.items():
        model.batch_stats.add(batch_size=size).compute_infer.count = runs
    return response


def test_statistics_of_workers_add_up_version_by_version_and_batch_size_by_batch_size() -> None:
    into = _statistics("a", 3, {4: 1, 1: 2})
    merge_statistics(into, _statistics("a", 5, {2: 1, 4: 2}))
    merge_statistics(into, _statistics("b", 7, {1: 7}))
    a, b = into.model_stats
    assert (a.name, a.inference_count, a.last_inference) == ("a", 8, 5)
    assert (a.inference_stats.success.count, a.inference_stats.success.ns) == (8, 8000)
    assert [(s.batch_size, s.compute_infer.count) for s in a.batch_stats] == [(1, 2), (2, 1), (4, 3)]
    assert (b.name, b.inference_count, [s.batch_size for s in b.batch_stats]) == ("b", 7, [1])


def test_metrics_of_workers_sum_counts_and_label_what_describes_one_process() -> None:
    def text(success: int, rss: int) -> str:
        return (
            "# TYPE torchwire_request_success counter\n"
            f'torchwire_request_success_total{{model="m",version="1"}} {success}\n'
            "# TYPE torchwire_model_state gauge\n"
            f'torchwire_model_state{{model="m",version="1",state="READY"}} 1\n'
            "# TYPE torchwire_process_resident_memory_bytes gauge\n"
            f"torchwire_process_resident_memory_bytes {rss}\n"
        )

    merged = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in merge([(0, text(3, 100)), (1, text(4, 200))])
        for s in family.samples
    }
    ready = (("model", "m"), ("state", "READY"), ("version", "1"))
    assert merged == {
        ("torchwire_request_success_total", (("model", "m"), ("version", "1"))): 7.0,
        ("torchwire_model_state", (*ready, ("worker", "0"))): 1.0,
        ("torchwire_model_state", (*ready, ("worker", "1"))): 1.0,
        ("torchwire_process_resident_memory_bytes", (("worker", "0"),)): 100.0,
        ("torchwire_process_resident_memory_bytes", (("worker", "1"),)): 200.0,
    }
