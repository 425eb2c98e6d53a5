"""gradsentry.v1.Reliability on top of the transport-agnostic pipeline.

Each input is decoded and validated by ``service.codec`` (errors name the input's index in
batches and streams), queued on the ``service.batcher`` (which groups concurrent inputs into
model batches) with the call's deadline, and its Result turned into a CheckResponse. Calls
are refused with NotReadyError until the server has warmed up and DrainingError once it is
shutting down. When a call ends early (client cancel, deadline, server stop) its inputs
still queued are cancelled, so the model never computes answers nobody waits for.
"""

from __future__ import annotations

import importlib.metadata
import queue
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, Future

import grpc
import numpy as np

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.batcher import Batcher, DeadlineExceededError
from service.codec import CodecError, decode
from service.errors import ClientError, DrainingError, NotReadyError
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
# grpc reports ~9.2e18 s remaining for a call without a deadline.
_NO_DEADLINE = 1e9
# One stream message in flight: (index, request, decode seconds, future); an Exception ends
# the stream with that error; None ends it normally.
_StreamItem = tuple[int, pb.CheckRequest, float, Future[Result]] | Exception | None


def call_request_id(context: grpc.ServicerContext) -> str:
    """The call's id: the client's "x-request-id" metadata or a fresh one; sent back as
    initial metadata."""
    sent = [v for k, v in context.invocation_metadata() if k == REQUEST_ID_KEY]
    if sent:
        rid = str(sent[0])
        if not _REQUEST_ID.match(rid):
            raise ClientError(
                f"{REQUEST_ID_KEY} must be 1-128 printable ASCII characters without spaces"
            )
    else:
        rid = uuid.uuid4().hex
    context.send_initial_metadata(((REQUEST_ID_KEY, rid),))
    return rid


def call_deadline(context: grpc.ServicerContext) -> float | None:
    """The call's deadline as a ``time.monotonic()`` value, None when it has none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE:
        return None
    return time.monotonic() + remaining


def wait_results(
    futures: Sequence[Future[Result]], context: grpc.ServicerContext, watch: bool = True
) -> list[Result]:
    """Block until every future is resolved, within the call's deadline. With ``watch``, the
    futures are cancelled when the call ends first (client cancel, deadline, server stop),
    so inputs still queued are never computed."""

    def cancel() -> None:
        for f in futures:
            f.cancel()

    # The callback runs when the call ends, however it ends; False: it has already ended.
    if watch and not context.add_callback(cancel):
        cancel()
    deadline = call_deadline(context)
    results: list[Result] = []
    for f in futures:
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            results.append(f.result(timeout))
        except CancelledError:
            cancel()
            context.abort(grpc.StatusCode.CANCELLED, "the call ended before its input was scored")
        except TimeoutError as exc:  # our wait ran out, or the batcher dropped it as expired
            cancel()
            if isinstance(exc, DeadlineExceededError):
                raise
            raise DeadlineExceededError("the deadline passed before the input was scored") from None
    return results


def to_response(
    result: Result,
    request: pb.CheckRequest,
    request_id: str,
    decode_seconds: float,
) -> pb.CheckResponse:
    """One pipeline Result -> CheckResponse, honouring the request's return_* options."""
    response = pb.CheckResponse(
        request_id=request.request_id or request_id,
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

    def __init__(self, pipeline: BasePipeline, batcher: Batcher) -> None:
        self.pipeline = pipeline
        self.batcher = batcher
        self.ready = threading.Event()
        self.draining = threading.Event()
        self.metrics: Metrics | None = None  # set by create_server

    def Check(self, request: pb.CheckRequest, context: grpc.ServicerContext) -> pb.CheckResponse:
        self._admit()
        rid = call_request_id(context)
        return self._score([request], [rid], context)[0]

    def CheckBatch(
        self, request: pb.CheckBatchRequest, context: grpc.ServicerContext
    ) -> pb.CheckBatchResponse:
        self._admit()
        rid = call_request_id(context)
        if not request.requests:
            raise ClientError("empty batch: CheckBatchRequest.requests holds no inputs")
        ids = [f"{rid}/{i}" for i in range(len(request.requests))]
        responses = self._score(request.requests, ids, context, "requests")
        return pb.CheckBatchResponse(responses=responses)

    def CheckStream(
        self, request_iterator: Iterator[pb.CheckRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.CheckResponse]:
        """Responses in request order. A reader thread decodes and queues messages while
        earlier ones are scored (up to max_batch_size ahead), so one stream's inputs are
        batched together; an error ends the stream after the responses before it."""
        self._admit()
        rid = call_request_id(context)
        window: queue.Queue[_StreamItem] = queue.Queue(maxsize=self.batcher.max_batch_size)
        ended = threading.Event()

        def put(item: _StreamItem) -> bool:
            while not ended.is_set():
                try:
                    window.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            if isinstance(item, tuple):
                item[3].cancel()
            return False

        def read() -> None:
            i = 0
            try:
                while True:
                    try:
                        request = next(request_iterator)
                    except Exception:  # StopIteration, or the client went away
                        break
                    try:
                        self._admit()
                        (array,), (dt,) = self._decode([request], "stream message", i)
                        future = self.batcher.submit(array, call_deadline(context))
                    except Exception as exc:
                        put(exc)
                        return
                    if not put((i, request, dt, future)):
                        return
                    i += 1
            finally:
                put(None)

        current: list[Future[Result]] = []  # the future being waited for

        def end() -> None:
            ended.set()
            for f in current:
                f.cancel()
            while True:  # inputs queued but not yet answered are not computed
                try:
                    item = window.get_nowait()
                except queue.Empty:
                    return
                if isinstance(item, tuple):
                    item[3].cancel()

        if not context.add_callback(end):  # one callback per stream, not per message
            end()  # the call has already ended
        threading.Thread(target=read, name="stream-reader", daemon=True).start()
        try:
            while True:
                try:
                    item = window.get(timeout=0.1)
                except queue.Empty:
                    if ended.is_set():
                        return
                    continue
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                i, request, dt, future = item
                current[:] = [future]
                (result,) = wait_results(current, context, watch=False)
                yield self._respond([result], [request], [f"{rid}/{i}"], [dt])[0]
        finally:
            end()

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.InfoResponse:
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
        if self.draining.is_set():
            raise DrainingError("the server is shutting down; retry on another replica")
        if not self.ready.is_set():
            raise NotReadyError("the model is still loading; retry when health is SERVING")

    def _score(
        self,
        requests: Sequence[pb.CheckRequest],
        ids: Sequence[str],
        context: grpc.ServicerContext,
        where: str | None = None,
    ) -> list[pb.CheckResponse]:
        """Decode every request (naming the bad one), queue them all or none (the batcher
        may group them with other calls' inputs), wait for their results, respond."""
        arrays, decode_times = self._decode(requests, where)
        if len(arrays) > self.batcher.queue_size:
            raise ClientError(
                f"{len(arrays)} inputs in one call; this server queues at most "
                f"{self.batcher.queue_size} at a time: split the call"
            )
        results = wait_results(self.batcher.submit_many(arrays, call_deadline(context)), context)
        return self._respond(results, requests, ids, decode_times)

    def _decode(
        self, requests: Sequence[pb.CheckRequest], where: str | None = None, offset: int = 0
    ) -> tuple[list[np.ndarray], list[float]]:
        """Each request -> array [1, C, H, W] and its decode seconds; a CodecError names
        ``where`` and the request's index (``offset`` + position) when ``where`` is given."""
        arrays: list[np.ndarray] = []
        decode_times: list[float] = []
        for i, request in enumerate(requests):
            t0 = time.perf_counter()
            try:
                arrays.append(decode(request, self.pipeline.spec))
            except CodecError as exc:
                if where is None:
                    raise
                raise CodecError(f"{where} {offset + i}: {exc}") from exc
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
