"""ModelStreamInfer: many requests in flight on one bidirectional stream, each through the batcher.

Reading stops while `max_in_flight` requests are being answered (backpressure, never dropping). Each
request is answered as soon as its batch is done, so answers may come out of order; each carries its
request's id. A request that fails gets an error response, and the stream stays open. When the client
half-closes, everything outstanding is answered before the stream ends. A cancelled or broken stream
cancels its outstanding work, which then leaves the batching queues.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from torchwire.client._proto import grpc_service_pb2 as pb

from ..core.service import InferenceCore
from .handlers import Undecodable
from .status import answer, status_of

FINAL_RESPONSE_FLAG = "triton_enable_empty_final_response"


async def _answer(
    core: InferenceCore, request: pb.ModelInferRequest | Undecodable
) -> pb.ModelStreamInferResponse:
    if isinstance(request, Undecodable):
        code, message = status_of(request.error)
        response = pb.ModelStreamInferResponse(error_message=message)
        response.infer_response.parameters["status_code"].string_param = code.name
        return response
    try:
        response = pb.ModelStreamInferResponse(infer_response=await core.infer(request))
    except Exception as exc:  # one request's error ends here: its stream stays open
        code, message = answer(exc)
        response = pb.ModelStreamInferResponse(error_message=message)
        failed = response.infer_response
        failed.model_name, failed.model_version, failed.id = (
            request.model_name,
            request.model_version,
            request.id,
        )
        # Triton's stream carries only a message; the status name lets typed clients keep the code.
        failed.parameters["status_code"].string_param = code.name
    if FINAL_RESPONSE_FLAG in request.parameters:
        response.infer_response.parameters["triton_final_response"].bool_param = True
    return response


async def serve_stream(
    core: InferenceCore, requests: AsyncIterator[pb.ModelInferRequest], max_in_flight: int
) -> AsyncIterator[pb.ModelStreamInferResponse]:
    answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
    slots = asyncio.Semaphore(max_in_flight)
    pending: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    async def answer_one(request: pb.ModelInferRequest) -> None:
        try:
            answers.put_nowait(await _answer(core, request))
        finally:
            slots.release()

    async def read_all() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                task = loop.create_task(answer_one(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*list(pending), return_exceptions=True)
        finally:
            answers.put_nowait(None)

    reader = loop.create_task(read_all())
    try:
        while (answer := await answers.get()) is not None:
            yield answer
        await reader  # surfaces a broken request stream as this RPC's error
    finally:
        reader.cancel()
        for task in list(pending):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
