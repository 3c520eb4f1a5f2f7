"""An exported program's signature against config.pbtxt, and the config it completes, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from torchwire.client._proto import model_config_pb2 as mc
from torchwire.server.core.errors import ConfigError
from torchwire.server.repository import ModelSpec, build_spec
from torchwire.server.runtime.signature import Signature, TensorSignature, check, completed_config

WHERE = Path("/repo/m/1/model.pt2")
TWO = Signature(
    inputs=(TensorSignature("FP32", (-1, 4)), TensorSignature("INT64", (-1, 3))),
    outputs=(TensorSignature("FP32", (-1, 3)),),
    batch=(1, 16),
)


def spec_of(text: str) -> ModelSpec:
    return build_spec(Path("/repo/m"), text_format.Parse(text, mc.ModelConfig()))


def config_text(max_batch_size: int, first: str = "TYPE_FP32") -> str:
    return f"""platform: "torch_export" max_batch_size: {max_batch_size}
        input [ {{ name: "a" data_type: {first} dims: [4] }},
                {{ name: "b" data_type: TYPE_INT64 dims: [3] }} ]
        output [ {{ name: "y" data_type: TYPE_FP32 dims: [3] }} ]"""


def test_the_signature_survives_package_metadata() -> None:
    assert Signature.from_json(TWO.to_json()) == TWO
    unbounded = Signature(TWO.inputs, TWO.outputs, (1, None))
    assert Signature.from_json(unbounded.to_json()) == unbounded


def test_completed_config_names_tensors_as_triton_s_pytorch_backend() -> None:
    config = completed_config(TWO, "m", "torch_aoti")
    assert (config.name, config.platform, config.backend) == ("m", "torch_aoti", "pytorch")
    assert config.max_batch_size == 16 and config.HasField("dynamic_batching")
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == [
        ("INPUT__0", "TYPE_FP32", [4]),
        ("INPUT__1", "TYPE_INT64", [3]),
    ]
    assert [t.name for t in config.output] == ["OUTPUT__0"]
    assert spec_of(text_format.MessageToString(config)).max_batch_size == 16  # a config the server takes
    assert (
        completed_config(Signature(TWO.inputs, TWO.outputs, (1, None)), "m", "torch_aoti").max_batch_size
        == 32
    )


def test_a_static_program_completes_an_unbatched_config() -> None:
    static = Signature((TensorSignature("FP32", (2, 4)),), (TensorSignature("FP32", (2, 3)),), None)
    config = completed_config(static, "m", "torch_export")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [2, 4]


def test_an_agreeing_config_passes() -> None:
    check(TWO, spec_of(config_text(16)), WHERE)
    check(TWO, spec_of(config_text(8)), WHERE)  # a smaller max_batch_size fits in the Dim's range


@pytest.mark.parametrize(
    ("signature", "text", "message"),
    [
        (TWO, config_text(16, "TYPE_FP16"), "input 0 ('a'): config.pbtxt says FP16, the program's is FP32"),
        (
            TWO,
            config_text(32),
            "max_batch_size is 32, but the program's batch dimension takes 1..16 rows only",
        ),
        (
            Signature(TWO.inputs, TWO.outputs, None),
            config_text(16),
            "max_batch_size is 16, but the program's batch dimension is static",
        ),
        (
            Signature((TensorSignature("FP32", (-1, 5)), TWO.inputs[1]), TWO.outputs, (1, 16)),
            config_text(16),
            "input 0 ('a'): config.pbtxt gives shape [-1 (batch), 4], the program's is [-1, 5]",
        ),
        (
            Signature(TWO.inputs[:1], TWO.outputs, (1, 16)),
            config_text(16),
            "config.pbtxt lists 2 input(s) (a, b), the program has 1",
        ),
    ],
)
def test_a_disagreeing_config_names_both_sides(signature: Signature, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check(signature, spec_of(text), WHERE)
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(WHERE))
