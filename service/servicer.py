"""gradsentry.v1.Reliability on top of the transport-agnostic pipeline.

Each input is decoded and validated by ``service.codec`` (errors name the input's index in
batches and streams), queued on the ``service.batcher`` (which groups concurrent inputs into
model batches) with the call's deadline, and its Result turned into a CheckResponse. Calls
are refused with NotReadyError until the server has warmed up (budgets and the drain are
``service.admission``'s, before a call reaches this class). A call's input count is checked
before any input is decoded; images and large tensors are decoded in a bounded pool off
the event loop, within ``decode_budget_seconds``. When a call ends early (client cancel,
deadline, server stop) its inputs still queued are cancelled, so the model never computes
answers nobody waits for.

Handlers are ``grpc.aio`` coroutines on the server's one event-loop thread: a call costs no
thread of its own and no thread switch while it waits for the model (the batcher's worker
thread resolves its futures).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import numpy as np

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.batcher import Batcher, DeadlineExceededError
from service.codec import CodecError, decode
from service.errors import ClientError, NotReadyError
from service.metrics import Metrics
from service.pipeline import BasePipeline, Result

REQUEST_ID_KEY = "x-request-id"
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
KIND_ENUM: dict[str, int] = {
    "adversarial": pb.ADVERSARIAL,
    "ood": pb.OOD,
    "corrupted": pb.CORRUPTED,
}
_DTYPE_ENUM: dict[str, int] = {"float32": pb.FLOAT32, "float64": pb.FLOAT64}
# A call whose tensors hold at most this many bytes is decoded on the event loop: a few
# copies and comparisons, ~1 ms for the whole amount; sending it to the decode pool would
# cost two thread switches per call.
_INLINE_TENSOR_BYTES = 256 * 1024
# grpc reports ~9.2e18 s remaining for a call without a deadline.
_NO_DEADLINE = 1e9
# One stream message in flight: (index, request, decode seconds, future); an Exception ends
# the stream with that error; None ends it normally.
_StreamItem = tuple[int, pb.CheckRequest, float, Future[Result]] | Exception | None


async def call_request_id(context: grpc.aio.ServicerContext, stream: bool = False) -> str:
    """The call's id: the client's "x-request-id" metadata or a fresh one; sent back as
    metadata: initial metadata of a stream (before its first response), trailing metadata
    of a unary call (sent with its status: a separate initial-metadata send would cost
    every call another round through the transport)."""
    sent = [v for k, v in context.invocation_metadata() or () if k == REQUEST_ID_KEY]
    if sent:
        rid = str(sent[0])
        if not _REQUEST_ID.match(rid):
            raise ClientError(
                f"{REQUEST_ID_KEY} must be 1-128 printable ASCII characters without spaces"
            )
    else:
        rid = uuid.uuid4().hex
    if stream:
        await context.send_initial_metadata(((REQUEST_ID_KEY, rid),))
    else:
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
    return rid


def check_request_ids(requests: Sequence[pb.CheckRequest]) -> None:
    """Each request's own ``request_id`` (echoed in its response) follows the header's rule:
    1-128 printable ASCII characters without spaces, or empty."""
    for request in requests:
        if request.request_id and not _REQUEST_ID.match(request.request_id):
            raise ClientError(
                f"CheckRequest.request_id must be 1-128 printable ASCII characters without "
                f"spaces (got {len(request.request_id)} characters)"
            )


def call_timeout(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds left until the call's deadline, None when it has none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE:
        return None
    return max(remaining, 0.0)


def call_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a ``time.monotonic()`` value, None when it has none."""
    timeout = call_timeout(context)
    return None if timeout is None else time.monotonic() + timeout


async def wait_results(
    futures: Sequence[Future[Result]], context: grpc.aio.ServicerContext
) -> list[Result]:
    """The futures' results, within the call's deadline. When the call ends first (client
    cancel, deadline, server stop: this task is cancelled) or the deadline passes, the
    futures are cancelled, so inputs still queued are never computed."""
    waiting = [asyncio.wrap_future(f) for f in futures]
    together = waiting[0] if len(waiting) == 1 else asyncio.gather(*waiting)
    try:
        done = await asyncio.wait_for(together, call_timeout(context))
    except TimeoutError as exc:  # our wait ran out, or the batcher dropped it as expired
        if isinstance(exc, DeadlineExceededError):
            raise
        raise DeadlineExceededError("the deadline passed before the input was scored") from None
    finally:
        for f in futures:  # a no-op for every future already answered
            f.cancel()
    return [done] if len(waiting) == 1 else list(done)


def to_response(
    result: Result,
    request: pb.CheckRequest,
    request_id: str,
    decode_seconds: float,
) -> pb.CheckResponse:
    """One pipeline Result -> CheckResponse, honouring the request's return_* options."""
    response = pb.CheckResponse(
        request_id=request.request_id or request_id,  # checked by check_request_id
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
    """The Reliability service for one pipeline, fed through its batcher."""

    def __init__(
        self,
        pipeline: BasePipeline,
        batcher: Batcher,
        decode_workers: int = 2,
        decode_budget_seconds: float = 2.0,
    ) -> None:
        self.pipeline = pipeline
        self.batcher = batcher
        self.ready = threading.Event()
        # Images (and large tensors) are decoded here, off the event loop, so that one
        # expensive call cannot stall every other call and health check.
        self.decoder = ThreadPoolExecutor(decode_workers, thread_name_prefix="decode")
        self.decode_budget_seconds = decode_budget_seconds
        self.metrics: Metrics | None = None  # set by create_server

    async def Check(
        self, request: pb.CheckRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckResponse:
        self._admit()
        rid = await call_request_id(context)
        return (await self._score([request], [rid], context))[0]

    async def CheckBatch(
        self, request: pb.CheckBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckBatchResponse:
        self._admit()
        rid = await call_request_id(context)
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
        self._admit()
        async for response in self._stream(request_iterator, context):
            yield response

    async def _stream(
        self, request_iterator: AsyncIterator[pb.CheckRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CheckResponse]:
        rid = await call_request_id(context, stream=True)
        window: asyncio.Queue[_StreamItem] = asyncio.Queue(maxsize=self.batcher.max_batch_size)

        async def read() -> None:
            i = 0
            try:
                async for request in request_iterator:
                    self._admit()
                    check_request_ids([request])
                    (array,), (dt,) = await self._decode([request], "stream message", i)
                    future = self.batcher.submit(array, call_deadline(context))
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
                (result,) = await wait_results([future], context)
                yield self._respond([result], [request], [f"{rid}/{i}"], [dt])[0]
        finally:
            reader.cancel()
            while not window.empty():  # inputs queued but not yet answered are not computed
                item = window.get_nowait()
                if isinstance(item, tuple):
                    item[3].cancel()

    async def GetInfo(
        self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.InfoResponse:
        spec = self.pipeline.spec
        manifest = self.pipeline.manifest
        versions = {str(k): str(v) for k, v in manifest.get("versions", {}).items()}
        for dist in ("gradsentry", "grpcio"):
            try:
                versions[f"server.{dist}"] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                versions[f"server.{dist}"] = "unknown"
        return pb.InfoResponse(
            input=pb.InputSpec(
                shape=list(spec.shape),
                dtype=_DTYPE_ENUM[spec.dtype],
                min_value=spec.value_range[0],
                max_value=spec.value_range[1],
                mean=list(spec.mean),
                std=list(spec.std),
            ),
            labels=list(spec.labels),
            feature_names=self.pipeline.feature_names,
            threshold=float(manifest["threshold"]),
            target_fpr=float(manifest["target_fpr"]),
            kinds=self.pipeline.kinds,
            model_fingerprint=str(manifest["model_fingerprint"]),
            versions=versions,
            max_batch_size=self.pipeline.max_batch_size,
        )

    def _admit(self) -> None:
        """Refuse work until the model has warmed up (budgets and draining are
        ``service.admission``'s)."""
        if not self.ready.is_set():
            raise NotReadyError("the model is still loading; retry when health is SERVING")

    async def _score(
        self,
        requests: Sequence[pb.CheckRequest],
        ids: Sequence[str],
        context: grpc.aio.ServicerContext,
        where: str | None = None,
    ) -> list[pb.CheckResponse]:
        """Count the requests, decode every one (naming the bad one), queue them all or
        none (the batcher may group them with other calls' inputs), wait for their
        results, respond."""
        if len(requests) > self.batcher.queue_size:  # before decoding any of them
            raise ClientError(
                f"{len(requests)} inputs in one call; this server queues at most "
                f"{self.batcher.queue_size} at a time: split the call"
            )
        check_request_ids(requests)
        arrays, decode_times = await self._decode(requests, where)
        futures = self.batcher.submit_many(arrays, call_deadline(context))
        results = await wait_results(futures, context)
        return self._respond(results, requests, ids, decode_times)

    async def _decode(
        self, requests: Sequence[pb.CheckRequest], where: str | None = None, offset: int = 0
    ) -> tuple[list[np.ndarray], list[float]]:
        """Each request -> array [1, C, H, W] and its decode seconds (``decode_now``):
        small tensors on the event loop (microseconds, their size checked first), images
        and large tensors in the decode pool, within ``decode_budget_seconds``."""
        inline = sum(len(r.tensor.data) for r in requests) <= _INLINE_TENSOR_BYTES and not any(
            r.WhichOneof("input") == "image" for r in requests
        )
        if inline:
            return self.decode_now(requests, where, offset)
        deadline = time.perf_counter() + self.decode_budget_seconds
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.decoder, self.decode_now, requests, where, offset, deadline
        )

    def decode_now(
        self,
        requests: Sequence[pb.CheckRequest],
        where: str | None = None,
        offset: int = 0,
        deadline: float | None = None,
    ) -> tuple[list[np.ndarray], list[float]]:
        """Decode in this thread; a CodecError names ``where`` and the request's index
        (``offset`` + position) when ``where`` is given; past ``deadline`` (a
        ``time.perf_counter()`` value) the call is refused."""
        arrays: list[np.ndarray] = []
        decode_times: list[float] = []
        for i, request in enumerate(requests):
            t0 = time.perf_counter()
            if deadline is not None and t0 > deadline:
                raise ClientError(
                    f"decoding this call's inputs took more than {self.decode_budget_seconds:g} "
                    f"s (the server's decode_budget_seconds) after {i} of {len(requests)}: "
                    "send fewer or smaller inputs per call"
                )
            try:
                arrays.append(decode(request, self.pipeline.spec))
            except CodecError as exc:
                if where is None:
                    raise
                raise CodecError(f"{where} {offset + i}: {exc}") from None
            decode_times.append(time.perf_counter() - t0)
        if self.metrics is not None:
            for dt in decode_times:
                self.metrics.observe_stage("decode", dt)
        return arrays, decode_times

    def _respond(
        self,
        results: Sequence[Result],
        requests: Sequence[pb.CheckRequest],
        ids: Sequence[str],
        decode_times: Sequence[float],
    ) -> list[pb.CheckResponse]:
        """Results -> CheckResponses (verdict metrics recorded here; batch metrics by the
        batcher)."""
        if self.metrics is not None:
            for r in results:
                self.metrics.observe_result(r.kind, r.flagged, r.score)
        return [
            to_response(r, q, rid, dt)
            for r, q, rid, dt in zip(results, requests, ids, decode_times, strict=True)
        ]
