"""gradsentry.v1.Reliability: CheckRequest / CheckResponse <-> ``service.dataplane``.

Each input is decoded by ``service.transport.grpc_v1.codec`` (errors name the input's index
in batches and streams) and scored by the data plane, which batches it with other calls'
inputs; its Result becomes a CheckResponse. Admission, request ids, deadlines, limits,
decoding, scoring and verdict metrics are the data plane's; this class only translates.

Handlers are ``grpc.aio`` coroutines on the server's one event-loop thread: a call costs no
thread of its own and no thread switch while it waits for the model (the batcher's worker
thread resolves its futures).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future

import grpc
import numpy as np

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.dataplane.deadline import wait_results
from service.dataplane.plane import DataPlane
from service.dataplane.request_id import check_request_id
from service.engine.pipeline import Result
from service.errors import ClientError
from service.transport import grpc_calls
from service.transport.grpc_v1.codec import decode

KIND_ENUM: dict[str, int] = {
    "adversarial": pb.ADVERSARIAL,
    "ood": pb.OOD,
    "corrupted": pb.CORRUPTED,
}
_DTYPE_ENUM: dict[str, int] = {"float32": pb.FLOAT32, "float64": pb.FLOAT64}
# One stream message in flight: (index, request, decode seconds, future); an Exception ends
# the stream with that error; None ends it normally.
_StreamItem = tuple[int, pb.CheckRequest, float, Future[Result]] | Exception | None


def check_request_ids(requests: Sequence[pb.CheckRequest]) -> None:
    """Each request's own ``request_id`` (echoed in its response) follows the header's rule:
    1-128 printable ASCII characters without spaces, or empty."""
    for request in requests:
        check_request_id(request.request_id, "CheckRequest.request_id")


def to_response(
    result: Result,
    request: pb.CheckRequest,
    request_id: str,
    decode_seconds: float,
) -> pb.CheckResponse:
    """One pipeline Result -> CheckResponse, honouring the request's return_* options."""
    response = pb.CheckResponse(
        request_id=request.request_id or request_id,  # checked by check_request_ids
        predicted_class=result.predicted_class,
        label=result.label,
        verdict=pb.FLAGGED if result.flagged else pb.RELIABLE,
        score=result.score,
        threshold=result.threshold,
        kind=KIND_ENUM.get(result.kind or "", pb.KIND_UNSPECIFIED),
        kind_scores=result.kind_scores,
        timings=pb.Timings(
            decode_seconds=decode_seconds,
            queue_seconds=result.timings.get("queue", 0.0),
            forward_seconds=result.timings.get("forward", 0.0),
            backward_seconds=result.timings.get("backward", 0.0),
            statistics_seconds=result.timings.get("statistics", 0.0),
            detector_seconds=result.timings.get("detector", 0.0),
        ),
    )
    if request.return_probabilities:
        response.probabilities.extend(result.probabilities.tolist())
    if request.return_features:
        response.features.extend(result.features.tolist())
    return response


class ReliabilityServicer(pb_grpc.ReliabilityServicer):
    """The Reliability service on a data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def Check(
        self, request: pb.CheckRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckResponse:
        self.plane.admit()
        rid = await grpc_calls.request_id(context)
        return (await self._score([request], [rid], context))[0]

    async def CheckBatch(
        self, request: pb.CheckBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckBatchResponse:
        self.plane.admit()
        rid = await grpc_calls.request_id(context)
        if not request.requests:
            raise ClientError("empty batch: CheckBatchRequest.requests holds no inputs")
        ids = [f"{rid}/{i}" for i in range(len(request.requests))]
        responses = await self._score(request.requests, ids, context, "requests")
        return pb.CheckBatchResponse(responses=responses)

    async def CheckStream(
        self, request_iterator: AsyncIterator[pb.CheckRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CheckResponse]:
        """Responses in request order. A reader task decodes and queues messages while
        earlier ones are scored (up to max_batch_size ahead), so one stream's inputs are
        batched together; an error ends the stream after the responses before it."""
        self.plane.admit()
        async for response in self._stream(request_iterator, context):
            yield response

    async def _stream(
        self, request_iterator: AsyncIterator[pb.CheckRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CheckResponse]:
        plane = self.plane
        rid = await grpc_calls.request_id(context, stream=True)
        window: asyncio.Queue[_StreamItem] = asyncio.Queue(maxsize=plane.batcher.max_batch_size)

        async def read() -> None:
            i = 0
            try:
                async for request in request_iterator:
                    plane.admit()
                    check_request_ids([request])
                    (array,), (dt,) = await self._decode([request], "stream message", i)
                    (future,) = plane.submit([array], grpc_calls.timeout(context))
                    await window.put((i, request, dt, future))
                    i += 1
            except (grpc.aio.AioRpcError, grpc.RpcError, ConnectionError):
                pass  # the client went away mid-stream: end after what was read
            except Exception as exc:  # a bad message, a full queue, the server draining...
                await window.put(exc)  # ... ends the stream after the answers before it
                return
            await window.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                item = await window.get()
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                i, request, dt, future = item
                results = await wait_results([future], grpc_calls.timeout(context))
                plane.record(results)
                yield to_response(results[0], request, f"{rid}/{i}", dt)
        finally:
            reader.cancel()
            while not window.empty():  # inputs queued but not yet answered are not computed
                item = window.get_nowait()
                if isinstance(item, tuple):
                    item[3].cancel()

    async def GetInfo(
        self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.InfoResponse:
        info = self.plane.info()
        spec = info.spec
        return pb.InfoResponse(
            input=pb.InputSpec(
                shape=list(spec.shape),
                dtype=_DTYPE_ENUM[spec.dtype],
                min_value=spec.value_range[0],
                max_value=spec.value_range[1],
                mean=list(spec.mean),
                std=list(spec.std),
            ),
            labels=info.labels,
            feature_names=info.feature_names,
            threshold=info.threshold,
            target_fpr=info.target_fpr,
            kinds=info.kinds,
            model_fingerprint=info.model_fingerprint,
            versions=info.versions,
            max_batch_size=info.max_batch_size,
        )

    async def _score(
        self,
        requests: Sequence[pb.CheckRequest],
        ids: Sequence[str],
        context: grpc.aio.ServicerContext,
        where: str | None = None,
    ) -> list[pb.CheckResponse]:
        """Count the requests, decode every one (naming the bad one), score them all or
        none, respond."""
        self.plane.check_count(len(requests))  # before decoding any of them
        check_request_ids(requests)
        arrays, decode_times = await self._decode(requests, where)
        results = await self.plane.score(arrays, grpc_calls.timeout(context))
        return [
            to_response(r, q, rid, dt)
            for r, q, rid, dt in zip(results, requests, ids, decode_times, strict=True)
        ]

    async def _decode(
        self, requests: Sequence[pb.CheckRequest], where: str | None = None, offset: int = 0
    ) -> tuple[list[np.ndarray], list[float]]:
        """Each request -> array [1, C, H, W] and its decode seconds: small tensors on the
        event loop, images and large tensors in the data plane's decode pool."""
        spec = self.plane.spec
        images = any(r.WhichOneof("input") == "image" for r in requests)
        return await self.plane.decode(
            requests,
            lambda r: decode(r, spec),
            nbytes=sum(len(r.tensor.data) for r in requests),
            inline=not images,
            where=where,
            offset=offset,
        )
