"""Protobuf answers of the core as the JSON objects of the v2 REST API and Triton's extensions."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from torchwire.client._proto import grpc_service_pb2 as pb

from ..core.errors import InvalidRequest


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: absurd nesting
        raise InvalidRequest(f"request body is not valid JSON: {type(exc).__name__}: {exc}") from exc


def plain(message: Message) -> dict[str, Any]:
    """Every field, integers as JSON numbers (protobuf's JSON writes 64-bit ones as strings, which
    Triton's metadata, statistics and index answers do not)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.name] = {
                key: _value(field.message_type.fields_by_name["value"], v) for key, v in value.items()
            }
        elif _repeated(field):
            out[field.name] = [_value(field, v) for v in value]
        else:
            out[field.name] = _value(field, value)
    return out


def _repeated(field: Any) -> bool:  # the pure-Python or the upb descriptor
    flag = getattr(field, "is_repeated", None)  # protobuf 6 deprecates `label` in favour of it
    return flag if isinstance(flag, bool) else field.label == FieldDescriptor.LABEL_REPEATED


def _value(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return plain(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.decode("utf-8", "replace")
    return value


def model_config(response: pb.ModelConfigResponse) -> dict[str, Any]:
    # Triton answers the configuration in protobuf's own JSON form, field names as in config.pbtxt.
    config: dict[str, Any] = json_format.MessageToDict(response.config, preserving_proto_field_name=True)
    return config


def json_parameters(value: Any, where: str, target: Any) -> None:
    """JSON parameters into a protobuf parameters map (bool, integer, number or string values)."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}.parameters must be a JSON object")
    for key, item in value.items():
        param = target[key]
        if isinstance(item, bool):
            param.bool_param = item
        elif isinstance(item, int):
            if not -(2**63) <= item < 2**64:
                raise InvalidRequest(f"{where}.parameters.{key}: {item} is out of the 64-bit range")
            if item < 2**63:
                param.int64_param = item
            else:
                param.uint64_param = item
        elif isinstance(item, float):
            param.double_param = item
        elif isinstance(item, str):
            param.string_param = item
        else:
            raise InvalidRequest(f"{where}.parameters.{key} must be a bool, number or string")


def load_request(name: str, body: Any) -> pb.RepositoryModelLoadRequest:
    """Triton's load body: {"parameters": {"config": "<ModelConfig JSON>", ...}} (all optional)."""
    request = pb.RepositoryModelLoadRequest(model_name=name)
    if body is not None and not isinstance(body, dict):
        raise InvalidRequest("load request: the body must be a JSON object")
    json_parameters((body or {}).get("parameters"), "load request", request.parameters)
    return request
