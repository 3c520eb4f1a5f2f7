"""Exported models through real servers: ExportedPrograms and AOTInductor packages, batched, swapped,
completed without a config, and refused with a reason when broken, mismatched or foreign."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as triton

from support.exported import (
    AOTI_MODEL,
    EP_MODEL,
    MAX_BATCH,
    copy_model,
    eager,
    inputs,
    rewrite_metadata,
)
from support.modelgen import Identity, single_io_config, write_model
from support.serving import running_server, wait_until
from torchwire.client import Client
from torchwire.client._proto import grpc_service_pb2 as pb


def tritonclient_predict(target: str, model: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    client = triton.InferenceServerClient(target)
    try:
        triton_inputs = []
        for name, datatype in (("INPUT__0", "FP32"), ("INPUT__1", "INT64")):
            infer_input = triton.InferInput(name, list(feed[name].shape), datatype)
            infer_input.set_data_from_numpy(feed[name])
            triton_inputs.append(infer_input)
        result = client.infer(model, triton_inputs)
        return [result.as_numpy("OUTPUT__0"), result.as_numpy("OUTPUT__1")]
    finally:
        client.close()


def statistics(target: str, model: str) -> dict[str, pb.ModelStatistics]:
    client = triton.InferenceServerClient(target)
    try:
        response = client.get_inference_statistics(model)
        return {s.version: s for s in response.model_stats}
    finally:
        client.close()


@pytest.fixture
def repository(tmp_path: Path, exported_models: Path) -> Path:
    copy_model(exported_models, AOTI_MODEL, tmp_path)
    copy_model(exported_models, EP_MODEL, tmp_path)
    return tmp_path


def test_both_kinds_answer_like_the_eager_module_through_both_clients(repository: Path) -> None:
    with running_server(repository) as server, Client(server.target, timeout=60) as client:
        for model in (AOTI_MODEL, EP_MODEL):
            for rows in (1, 3, MAX_BATCH):
                feed = inputs(rows)
                want = eager(feed)
                ours = client.predict(model, feed)
                theirs = tritonclient_predict(server.target, model, feed)
                for got in ([ours["OUTPUT__0"], ours["OUTPUT__1"]], theirs):
                    assert got[0].dtype == np.float32 and got[1].dtype == np.int64
                    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
                    np.testing.assert_array_equal(got[1], want[1])


def test_a_folder_without_config_serves_with_a_complete_model_config(
    repository: Path, exported_models: Path
) -> None:
    assert not (repository / EP_MODEL / "config.pbtxt").exists()
    (repository / "static" / "1").mkdir(parents=True)  # no dynamic batch dimension: served unbatched
    shutil.copy(exported_models / "static.pt2", repository / "static" / "1" / "model.pt2")
    with running_server(repository) as server:
        client = triton.InferenceServerClient(server.target)
        try:
            config = client.get_model_config(EP_MODEL, as_json=True)["config"]
            metadata = client.get_model_metadata(EP_MODEL, as_json=True)
            static = client.get_model_config("static", as_json=True)["config"]
        finally:
            client.close()
        with Client(server.target, timeout=60) as ours:
            feed = inputs(2)
            np.testing.assert_array_equal(ours.predict("static", feed)["OUTPUT__1"], eager(feed)[1])
    assert static.get("max_batch_size", 0) == 0 and "dynamic_batching" not in static
    assert [t["dims"] for t in static["input"]] == [["2", "4"], ["2", "3"]]
    assert config["name"] == EP_MODEL
    assert config["platform"] == "torch_export" and config["backend"] == "pytorch"
    assert config["max_batch_size"] == MAX_BATCH
    assert "dynamic_batching" in config
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("INPUT__0", "TYPE_FP32", ["4"]),
        ("INPUT__1", "TYPE_INT64", ["3"]),
    ]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        ("OUTPUT__0", "TYPE_FP32", ["3"]),
        ("OUTPUT__1", "TYPE_INT64", ["3"]),
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("INPUT__0", "FP32", ["-1", "4"]),
        ("INPUT__1", "INT64", ["-1", "3"]),
    ]


def test_a_partial_config_is_completed_from_the_program_and_keeps_what_it_says(
    tmp_path: Path, exported_models: Path
) -> None:
    written = {
        # Only what Triton users often write; inputs, outputs and dynamic batching are completed.
        "bare": 'platform: "torch_export"\ninstance_group [ { count: 2 kind: KIND_CPU } ]\n',
        # Its max_batch_size and its input names stay; the outputs are completed.
        "named": 'platform: "torch_export"\nmax_batch_size: 4\ninput [\n'
        '  { name: "x" data_type: TYPE_FP32 dims: [ 4 ] },\n'
        '  { name: "y" data_type: TYPE_INT64 dims: [ 3 ] }\n]\n',
    }
    for name, text in written.items():
        copy_model(exported_models, EP_MODEL, tmp_path, name)
        (tmp_path / name / "config.pbtxt").write_text(f'name: "{name}"\n{text}')
    with running_server(tmp_path) as server:
        client = triton.InferenceServerClient(server.target)
        try:
            configs = {name: client.get_model_config(name, as_json=True)["config"] for name in written}
        finally:
            client.close()
        with Client(server.target, timeout=60) as ours:
            feed = inputs(4)
            want = eager(feed)
            bare = ours.predict("bare", feed)
            named = ours.predict("named", {"x": feed["INPUT__0"], "y": feed["INPUT__1"]})
    for got in (bare, named):
        np.testing.assert_allclose(got["OUTPUT__0"], want[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["OUTPUT__1"], want[1])
    bare_config, named_config = configs["bare"], configs["named"]
    assert bare_config["max_batch_size"] == MAX_BATCH and "dynamic_batching" in bare_config
    assert bare_config["instance_group"][0]["count"] == 2
    assert [(t["name"], t["dims"]) for t in bare_config["input"]] == [
        ("INPUT__0", ["4"]),
        ("INPUT__1", ["3"]),
    ]
    assert named_config["max_batch_size"] == 4 and "dynamic_batching" not in named_config
    assert [t["name"] for t in named_config["input"]] == ["x", "y"]
    assert [(t["name"], t["data_type"], t["dims"]) for t in named_config["output"]] == [
        ("OUTPUT__0", "TYPE_FP32", ["3"]),
        ("OUTPUT__1", "TYPE_INT64", ["3"]),
    ]


@pytest.mark.parametrize("model", [AOTI_MODEL, EP_MODEL])
def test_concurrent_callers_are_batched(repository: Path, model: str) -> None:
    failures: list[BaseException] = []
    calls = 40

    def call(target: str, index: int) -> None:
        feed = inputs(1 + index % 3)
        want = eager(feed)
        with Client(target, timeout=60) as client:
            for _ in range(calls):
                try:
                    got = client.predict(model, feed)
                    np.testing.assert_allclose(got["OUTPUT__0"], want[0], rtol=1e-5, atol=1e-5)
                    np.testing.assert_array_equal(got["OUTPUT__1"], want[1])
                except BaseException as exc:
                    failures.append(exc)

    with running_server(repository) as server:
        threads = [threading.Thread(target=call, args=(server.target, i)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        stats = statistics(server.target, model)["1"]
    assert failures == []
    assert stats.inference_stats.success.count == 12 * calls
    # Warmup runs outside the statistics: every execution counted here served requests.
    assert 0 < stats.execution_count < stats.inference_count


def test_a_new_pt2_version_hot_swaps_under_load(tmp_path: Path, exported_models: Path) -> None:
    model_dir = copy_model(exported_models, AOTI_MODEL, tmp_path, "swapped")
    (model_dir / "config.pbtxt").unlink()  # completed from the package's recorded signature
    feed = inputs(2)
    want = eager(feed)
    failures: list[BaseException] = []
    answered = [0]
    stop = threading.Event()

    def load(target: str) -> None:
        with Client(target, timeout=60) as client:
            while not stop.is_set():
                try:
                    got = client.predict("swapped", feed)
                    np.testing.assert_allclose(got["OUTPUT__0"], want[0], rtol=1e-5, atol=1e-5)
                    answered[0] += 1
                except BaseException as exc:
                    failures.append(exc)

    with running_server(tmp_path, model_control_mode="poll", repository_poll_secs=0.2) as server:
        threads = [threading.Thread(target=load, args=(server.target,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: answered[0] > 50, "version 1 answers")
            staging = tmp_path / ".staging-2"
            shutil.copytree(model_dir / "1", staging)
            staging.rename(model_dir / "2")
            with Client(server.target, timeout=30) as client:
                wait_until(lambda: client.metadata("swapped").versions == ("2",), "version 2 alone serves")
                index = {(m.name, m.version): m for m in client.repository_index()}
            before = answered[0]
            wait_until(lambda: answered[0] > before + 50, "version 2 answers")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
        stats = statistics(server.target, "swapped")
    assert failures == []
    assert index[("swapped", "1")].state in ("UNLOADING", "UNAVAILABLE")
    assert stats["2"].inference_stats.success.count > 0


def _index(target: str) -> dict[str, pb.RepositoryIndexResponse.ModelIndex]:
    with Client(target, timeout=30) as client:
        return {m.name: m for m in client.repository_index()}


def test_broken_mismatched_static_and_foreign_packages_are_unavailable_with_a_reason(
    tmp_path: Path, exported_models: Path
) -> None:
    copy_model(exported_models, EP_MODEL, tmp_path)  # serves throughout
    broken = copy_model(exported_models, AOTI_MODEL, tmp_path, "broken")
    (broken / "1" / "model.pt2").write_bytes(b"not a zip file")

    mismatched = copy_model(exported_models, AOTI_MODEL, tmp_path, "mismatched")
    config = (mismatched / "config.pbtxt").read_text().replace("TYPE_INT64", "TYPE_INT32", 1)
    (mismatched / "config.pbtxt").write_text(config.replace('name: "two_aoti"', 'name: "mismatched"'))

    too_big = copy_model(exported_models, EP_MODEL, tmp_path, "too_big")
    text = (mismatched / "config.pbtxt").read_text().replace("TYPE_INT32", "TYPE_INT64")
    (too_big / "config.pbtxt").write_text(
        text.replace('name: "mismatched"', "").replace("torch_aoti", "torch_export").replace("16", "64")
    )

    static = tmp_path / "static" / "1"
    static.mkdir(parents=True)
    shutil.copy(exported_models / "static.pt2", static / "model.pt2")
    (tmp_path / "static" / "config.pbtxt").write_text(
        text.replace('name: "mismatched"', "").replace("torch_aoti", "torch_export")
    )

    wrong_kind = copy_model(exported_models, EP_MODEL, tmp_path, "wrong_kind")
    (wrong_kind / "config.pbtxt").write_text(text.replace('name: "mismatched"', ""))

    foreign_arch = copy_model(exported_models, AOTI_MODEL, tmp_path, "foreign_arch")
    rewrite_metadata(foreign_arch / "1" / "model.pt2", {"AOTI_MACHINE": "aarch64"})
    foreign_torch = copy_model(exported_models, AOTI_MODEL, tmp_path, "foreign_torch")
    rewrite_metadata(foreign_torch / "1" / "model.pt2", {"torchwire.torch_version": "2.9.1+cpu"})
    for folder in (broken, foreign_arch, foreign_torch):
        config_file = folder / "config.pbtxt"
        config_file.write_text(config_file.read_text().replace('name: "two_aoti"', ""))

    with running_server(tmp_path, readiness="any") as server:
        index = _index(server.target)
        with Client(server.target, timeout=60) as client:
            feed = inputs(2)
            np.testing.assert_array_equal(client.predict(EP_MODEL, feed)["OUTPUT__1"], eager(feed)[1])
    assert index[EP_MODEL].state == "READY"
    expected = {
        "broken": "not a PT2 archive",
        "mismatched": "input 1 ('INPUT__1'): config.pbtxt says INT32, the program's is INT64",
        "too_big": "takes 0..16 rows only",
        "static": "the program's batch dimension is static",
        "wrong_kind": "the file is an ExportedProgram (torch.export.save): set platform 'torch_export'",
        "foreign_arch": "built for machine 'aarch64', this server runs on 'x86_64'",
        "foreign_torch": "built with torch 2.9.1+cpu, this server runs torch 2.13",
    }
    for name, reason in expected.items():
        assert index[name].state == "UNAVAILABLE", name
        assert reason in index[name].reason, (name, index[name].reason)
    assert "max_batch_size is 64" in index["too_big"].reason
    assert "torch.export.Dim('batch', max=16)" in index["static"].reason


def test_a_file_of_another_kind_is_named_with_the_platform_that_serves_it(
    tmp_path: Path, exported_models: Path
) -> None:
    """Each loader says what a wrong file is (issue 13's repository errors, for every kind)."""
    copy_model(exported_models, EP_MODEL, tmp_path)  # serves throughout
    for name, source in (
        ("ep_as_torchscript", exported_models / "static.pt2"),
        ("aoti_as_torchscript", exported_models / AOTI_MODEL / "1" / "model.pt2"),
    ):
        folder = write_model(tmp_path, name, None, single_io_config(name, "FP32", [4], 4))
        shutil.copy(source, folder / "1" / "model.pt")
    pickled = write_model(
        tmp_path, "pickled_export", None, single_io_config("pickled_export", "FP32", [4], 4)
    )
    (pickled / "config.pbtxt").write_text(
        (pickled / "config.pbtxt").read_text().replace("pytorch_libtorch", "torch_export")
    )
    torch.save(torch.nn.Linear(4, 4), pickled / "1" / "model.pt2")
    for name in ("pickled_alone", "script_alone"):  # no config.pbtxt: nothing to complete it from
        (tmp_path / name / "1").mkdir(parents=True)
    torch.save(torch.nn.Linear(4, 4).state_dict(), tmp_path / "pickled_alone" / "1" / "model.pt2")
    torch.jit.save(torch.jit.script(Identity()), str(tmp_path / "script_alone" / "1" / "model.pt2"))

    with running_server(tmp_path, readiness="any") as server:
        index = _index(server.target)
    assert index[EP_MODEL].state == "READY"
    expected = {
        "ep_as_torchscript": "model.pt: not TorchScript: it is an ExportedProgram (torch.export.save): set "
        "platform 'torch_export' in config.pbtxt",
        "aoti_as_torchscript": "model.pt: not TorchScript: it is an AOTInductor package: set platform "
        "'torch_aoti' in config.pbtxt",
        "pickled_export": "config.pbtxt says platform 'torch_export' (an ExportedProgram "
        "(torch.export.save)), the file is a module or state_dict saved with torch.save (pickled): "
        "export the module with torch.export.save",
        "pickled_alone": "the file is a module or state_dict saved with torch.save (pickled), which no "
        "platform serves",
        "script_alone": "the file is TorchScript (torch.jit.save), not an exported program: give it a "
        "config.pbtxt with platform 'pytorch_libtorch'",
    }
    for name, reason in expected.items():
        assert index[name].state == "UNAVAILABLE", name
        assert reason in index[name].reason, (name, index[name].reason)


def test_the_bench_ceiling_runs_exported_models_as_the_server_loads_them(repository: Path) -> None:
    from torchwire.bench import ceilings
    from torchwire.models import REPOSITORY

    for folder, name in ((repository, EP_MODEL), (REPOSITORY, "mlp_aoti")):
        local = ceilings.find_model(folder, name)
        assert local is not None and local.path.name == "model.pt2"
        feed = inputs(1) if name == EP_MODEL else {"INPUT__0": np.zeros((1, 64), np.float32)}
        measured = ceilings.measure(local, feed, [1, 4], threads=1, seconds=0.05)
        assert sorted(measured) == [1, 4]
        assert all(m.rows_per_s > 0 and m.batch == b for b, m in measured.items())
    # Without a config.pbtxt, the bench completes the config as the server does.
    assert ceilings.find_model(repository, EP_MODEL).spec.config.platform == "torch_export"  # type: ignore[union-attr]


def test_streams_and_metrics_count_exported_models(repository: Path) -> None:
    import urllib.request

    feeds = [inputs(1 + i % 4) for i in range(30)]
    with running_server(repository, metrics_port=-1) as server, Client(server.target, timeout=60) as client:
        results = list(client.stream(AOTI_MODEL, feeds))
        assert server.app.metrics is not None
        url = f"http://127.0.0.1:{server.app.metrics.port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as reply:
            metrics = reply.read().decode()
    assert [r.index for r in results] == list(range(30))
    for result, feed in zip(results, feeds, strict=True):
        np.testing.assert_array_equal(result.unwrap()["OUTPUT__1"], eager(feed)[1])
    rows = sum(len(feed["INPUT__0"]) for feed in feeds)
    assert f'torchwire_inference_count_total{{model="{AOTI_MODEL}",version="1"}} {rows}.0' in metrics
