"""config.pbtxt -> ModelSpec without a server: Triton's defaults filled, bad fields named."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from torchwire.client._proto import model_config_pb2 as mc
from torchwire.server.core.errors import ConfigError
from torchwire.server.repository import ModelSpec, QueuePolicy, build_spec, read_config

WHERE = Path("/repo/m")
IO = """
  input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
  output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


def spec_of(text: str) -> ModelSpec:
    return build_spec(WHERE, text_format.Parse(text, mc.ModelConfig()))


def test_defaults_are_triton_s() -> None:
    spec = spec_of(f"max_batch_size: 8 {IO}")
    assert spec.name == "m"
    assert (spec.config.platform, spec.config.backend) == ("pytorch_libtorch", "pytorch")
    assert (spec.batching, spec.instances, spec.model_file) == (None, 1, "model.pt")
    assert spec.wire_shape(spec.inputs[0]) == [-1, 4]
    assert spec.inputs[0].row_elements == 4 and spec.outputs[0].row_elements is None
    assert spec.version_policy.select([1, 3, 2]) == (3,)  # latest 1


def test_dynamic_batching_with_priorities_and_queue_policies() -> None:
    spec = spec_of(
        f"""max_batch_size: 8 {IO}
        dynamic_batching {{
          preferred_batch_size: [ 8, 4 ]
          max_queue_delay_microseconds: 500
          priority_levels: 3
          default_queue_policy {{ max_queue_size: 5 }}
          priority_queue_policy {{
            key: 1
            value {{ default_timeout_microseconds: 2000 timeout_action: DELAY allow_timeout_override: true }}
          }}
        }}
        instance_group [ {{ count: 2 kind: KIND_CPU }}, {{ kind: KIND_AUTO }} ]"""
    )
    policy = spec.batching
    assert policy is not None
    assert (policy.max_queue_delay_s, policy.preferred_batch_sizes) == (0.0005, (4, 8))
    assert (policy.priority_levels, policy.default_priority) == (3, 2)
    assert policy.queue(1) == QueuePolicy(0, 0.002, True, False)
    assert policy.queue(2) == policy.queue(3) == QueuePolicy(max_queue_size=5)
    assert spec.instances == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f'name: "other" {IO}', "field 'name' is 'other' but the model folder is 'm'"),
        (f'platform: "onnxruntime_onnx" {IO}', "field 'platform' is 'onnxruntime_onnx', torchwire serves"),
        ("max_batch_size: 8", "field 'input' is empty (list the tensors forward() takes)"),
        (f"{IO} dynamic_batching {{ }}", "field 'dynamic_batching' needs 'max_batch_size' > 0"),
        (
            f"max_batch_size: 4 {IO} dynamic_batching {{ preferred_batch_size: [ 8 ] }}",
            "field 'dynamic_batching.preferred_batch_size' [8] must be within 1..max_batch_size (4)",
        ),
        (
            'input [ { name: "x" data_type: TYPE_UINT16 dims: [ 1 ] } ] '
            'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "input[0] 'x': field 'data_type' TYPE_UINT16 is not supported for TorchScript",
        ),
        (
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 0 ] } ] '
            'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "input[0] 'x': field 'dims' [0] must be positive or -1",
        ),
        (f"{IO} instance_group [ {{ kind: KIND_GPU }} ]", "field 'instance_group.kind' must be KIND_CPU"),
        (
            f'{IO} parameters {{ key: "INTRA_OP_THREAD_COUNT" value {{ string_value: "two" }} }}',
            "parameters 'INTRA_OP_THREAD_COUNT' must be a non-negative integer, got 'two'",
        ),
    ],
)
def test_a_bad_config_names_its_file_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        spec_of(text)
    assert str(raised.value).startswith(f"{WHERE / 'config.pbtxt'}: ")
    assert message in str(raised.value)


def test_read_config_names_a_missing_or_unparsable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config.pbtxt: not found \(every model needs a config.pbtxt\)"):
        read_config(tmp_path)
    (tmp_path / "config.pbtxt").write_text("max_batch_size: eight")
    with pytest.raises(ConfigError, match=r"config.pbtxt: 1:17 : "):
        read_config(tmp_path)


@pytest.mark.parametrize(
    ("dims", "batch", "accepted"),
    [
        ([1], 8, True),
        ([1, 1], 8, True),
        ([2], 8, False),
        ([-1], 8, False),
        ([-1], 0, True),
        ([3, 2], 0, False),
    ],
)
def test_string_tensors_are_one_flat_list(dims: list[int], batch: int, accepted: bool) -> None:
    config = text_format.Parse(
        f'max_batch_size: {batch} input [ {{ name: "T" data_type: TYPE_STRING dims: {dims} }} ] '
        f'output [ {{ name: "O" data_type: TYPE_STRING dims: {dims} }} ]',
        mc.ModelConfig(),
    )
    if accepted:
        assert build_spec(WHERE, config).inputs[0].datatype == "BYTES"
    else:
        with pytest.raises(ConfigError, match=r"reaches forward\(\) as one List\[str\]"):
            build_spec(WHERE, config)


def test_the_platform_names_the_kind_as_triton_does() -> None:
    def kind(text: str) -> tuple[str, str]:
        built = spec_of(f"{text} {IO}")
        return built.platform, built.model_file

    assert kind('platform: "torch_aoti"') == ("torch_aoti", "model.pt2")
    assert kind('platform: "torch_export"') == ("torch_export", "model.pt2")
    assert kind('backend: "pytorch" default_model_filename: "net.pt2"') == ("torch_aoti", "net.pt2")
    assert kind('backend: "pytorch"') == ("pytorch_libtorch", "model.pt")
    assert spec_of(f'platform: "torch_aoti" {IO}').config.platform == "torch_aoti"  # what ModelConfig says
    with pytest.raises(ConfigError, match="field 'platform' is 'onnxruntime_onnx', torchwire serves"):
        spec_of(f'platform: "onnxruntime_onnx" {IO}')
