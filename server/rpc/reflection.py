"""Server reflection (for grpcurl), answering from a pool that holds exactly the served services."""

from __future__ import annotations

import grpc.aio
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from torchwire.client._proto import grpc_service_pb2, model_config_pb2

from .health import INFERENCE_SERVICE


def enable(server: grpc.aio.Server) -> None:
    # Our messages live in a private pool (see protos/generate.py); reflection gets its own pool with
    # every file it must describe, dependencies first.
    pool = descriptor_pool.DescriptorPool()
    for module in (model_config_pb2, grpc_service_pb2, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    names = (
        INFERENCE_SERVICE,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server, pool=pool)
