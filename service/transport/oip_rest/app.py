"""The Open Inference Protocol over HTTP/REST <-> the data plane, as a Starlette app.

Endpoints: ``GET /v2/health/live``,
``GET /v2/health/ready``, ``GET /v2`` (server metadata), ``GET /v2/models/{name}`` (model
metadata), ``GET /v2/models/{name}/ready`` and ``POST /v2/models/{name}/infer``, each also
under ``/v2/models/{name}/versions/{version}``. Tensors are those of
``service.transport.oip_tensors``; ``data`` may be flat or nested, in row-major order.
The binary tensor extension (what tritonclient sends by default) is served too: with an
``Inference-Header-Content-Length`` header the body is that many bytes of JSON followed by
each binary input's raw little-endian bytes (its ``parameters.binary_data_size``), and
outputs asked for with ``parameters.binary_data`` (or the request's
``parameters.binary_data_output``) come back the same way.

A request's ``parameters.timeout`` (microseconds, what tritonclient.http's
``infer(timeout=...)`` sends: Triton's schedule-policy parameter) is the call's deadline,
kept as a gRPC deadline is: inputs still queued when it passes are dropped unscored and the
call gets 504. A client that disconnects before its answer has its queued inputs cancelled
(never computed), as a gRPC call that ends early does.

Errors are ``{"error": "<message>"}`` with the status the gRPC transports would map to:
400 (malformed input, naming the problem), 401 (missing or wrong bearer token), 404
(unknown model or path), 413 (body over ``max_message_bytes``), 429 (over budget, queue
full), 503 (not ready, draining, worker restarting), 504 (deadline), 500 (a server fault,
logged, no internals in the message); a client that left is recorded as 499 / CANCELLED.
Every call is admitted by the data plane like a gRPC call (``ModelInfer`` shares the unary
budget; the health endpoints are free and need no token, so kubelet probes work with auth
on) and recorded in the same metrics, under the service label ``REST_SERVICE``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive

from service.dataplane.auth import AUTH_KEY, BearerCheck
from service.dataplane.deadline import time_left, wait_results
from service.dataplane.plane import DataPlane
from service.dataplane.request_id import REQUEST_ID_KEY, call_request_id, check_request_id
from service.engine.pipeline import Result
from service.errors import (
    ClientError,
    DrainingError,
    NotFoundError,
    NotReadyError,
    QueueFullError,
    WorkerError,
)
from service.transport import oip_tensors as oip
from service.transport.oip_grpc.servicer import server_version

log = logging.getLogger(__name__)

REST_SERVICE = "inference.REST"
# (exception class, HTTP status, gRPC code name for the metrics), first match wins.
_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (NotFoundError, 404, "NOT_FOUND"),
    (ClientError, 400, "INVALID_ARGUMENT"),
    (QueueFullError, 429, "RESOURCE_EXHAUSTED"),
    (NotReadyError, 503, "FAILED_PRECONDITION"),
    (DrainingError, 503, "UNAVAILABLE"),
    (WorkerError, 503, "UNAVAILABLE"),
    (TimeoutError, 504, "DEADLINE_EXCEEDED"),
)
_JSON = "application/json"
HEADER_LENGTH = "inference-header-content-length"
# A call still unanswered this long after its inputs were queued starts watching for its
# client leaving; the many calls answered sooner never pay for a watching task.
WATCH_AFTER_SECONDS = 0.05


class BodyTooLargeError(ClientError):
    """The request body is over ``max_message_bytes`` (HTTP 413)."""


class UnauthenticatedError(ClientError):
    """No or a wrong bearer token (HTTP 401)."""


class ClientGoneError(Exception):
    """The client disconnected before its answer (recorded as 499 / CANCELLED; the answer
    goes nowhere)."""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``body`` as compact JSON (floats in their shortest exact form)."""
    text = json.dumps(body, separators=(",", ":"), allow_nan=False)
    return Response(text, status_code=status, media_type=_JSON, headers=headers)


def status_of(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and gRPC code name of an exception (500 / INTERNAL when unexpected)."""
    if isinstance(exc, BodyTooLargeError):
        return 413, "INVALID_ARGUMENT"
    if isinstance(exc, UnauthenticatedError):
        return 401, "UNAUTHENTICATED"
    if isinstance(exc, ClientGoneError):
        return 499, "CANCELLED"
    for kind, status, code in _STATUS:
        if isinstance(exc, kind):
            return status, code
    return 500, "INTERNAL"


def _field(body: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ClientError(f"{where}.{key} must be {_JSON_NAME.get(names, names)}")
    return value


_JSON_NAME = {"str": "a string", "list": "a list", "dict": "an object"}


def _parameters(item: dict[str, Any], where: str) -> dict[str, Any]:
    params = item.get("parameters", {})
    if not isinstance(params, dict):
        raise ClientError(f"{where}.parameters must be an object")
    return params


async def _cancel_on_disconnect(receive: Receive, futures: Sequence[Future[Result]]) -> None:
    """Cancel ``futures`` when the client disconnects. The body has been read, so the next
    ASGI message is ``http.disconnect``: the server sends it when the connection closes
    (at once when it already has; until then ``receive`` waits on an event, nothing polls)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    for f in futures:
        f.cancel()


class DisconnectWatch:
    """Cancels a call's queued inputs (``futures``) when its HTTP client disconnects.

    uvicorn does not cancel a handler whose client left (grpc.aio does, and ``wait_results``
    then cancels the inputs), so a task waiting for the ASGI ``http.disconnect`` message
    does it. Such a task costs about 10 µs of the event loop per call, so it starts only
    ``after`` seconds: a call answered sooner pays for a timer (about 3 µs with this
    object), and a client that left before then is noticed then."""

    def __init__(
        self,
        receive: Receive,
        futures: Sequence[Future[Result]],
        after: float = WATCH_AFTER_SECONDS,
    ) -> None:
        self._receive, self._futures = receive, futures
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(after, self._start)

    def _start(self) -> None:
        self._task = asyncio.ensure_future(_cancel_on_disconnect(self._receive, self._futures))

    @property
    def client_left(self) -> bool:
        """True once the client disconnected (and the futures were cancelled)."""
        task = self._task
        return task is not None and task.done() and not task.cancelled()

    def close(self) -> None:
        """Stop watching (the call is over)."""
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


def input_tensors(items: list[Any], binary: bytes) -> list[oip.InputTensor]:
    """A request's "inputs" -> InputTensors (JSON values not yet converted); binary inputs
    take their ``binary_data_size`` bytes of ``binary`` in order."""
    tensors, offset = [], 0
    for i, item in enumerate(items):
        where = f"inputs[{i}]"
        if not isinstance(item, dict):
            raise ClientError(f"{where} must be an object")
        name = _field(item, "name", str, where)
        datatype = _field(item, "datatype", str, where)
        shape = _field(item, "shape", list, where)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise ClientError(f"input {name[:64]!r}: shape must be a list of integers")
        size = _parameters(item, where).get("binary_data_size")
        if size is None:
            if "data" not in item:
                raise ClientError(f"input {name[:64]!r}: no data and no binary_data_size")
            tensors.append(oip.InputTensor(name, datatype, tuple(shape), values=item["data"]))
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ClientError(f"input {name[:64]!r}: binary_data_size must be an integer >= 0")
        if "data" in item:
            raise ClientError(f"input {name[:64]!r}: both data and binary_data_size; send one")
        if offset + size > len(binary):
            raise ClientError(
                f"input {name[:64]!r}: binary_data_size {size} runs past the body's "
                f"{len(binary)} binary bytes"
            )
        tensors.append(
            oip.InputTensor(name, datatype, tuple(shape), raw=binary[offset : offset + size])
        )
        offset += size
    if offset != len(binary):
        raise ClientError(
            f"the body holds {len(binary)} binary bytes but the inputs' binary_data_size "
            f"add up to {offset}"
        )
    return tensors


def json_values(tensor: oip.InputTensor) -> oip.InputTensor:
    """The tensor's JSON ``data`` (flat or nested numbers) -> a flat numeric array."""
    if tensor.raw is not None:
        return tensor
    data = tensor.values
    name = tensor.name
    if not isinstance(data, list):
        raise ClientError(f"input {name!r}: data must be a list of numbers")
    try:
        array = np.asarray(data)
    except ValueError:  # ragged nesting
        raise ClientError(f"input {name!r}: data must be a (nested) list of numbers") from None
    if array.dtype.kind not in "iuf":
        raise ClientError(f"input {name!r}: data must hold numbers only")
    return oip.InputTensor(
        name=name, datatype=tensor.datatype, shape=tensor.shape, values=array.reshape(-1)
    )


def output_json(out: oip.OutputTensor) -> dict[str, Any]:
    """One output as its JSON form: data flat, row-major; BYTES as strings."""
    flat = out.data.reshape(-1)
    if out.datatype == "BYTES":
        data = [b.decode("utf-8", "replace") for b in flat]
    else:
        data = flat.tolist()
    return {"name": out.name, "datatype": out.datatype, "shape": out.shape, "data": data}


class RestApp:
    """The routes on one data plane; ``app`` is the ASGI application."""

    def __init__(self, plane: DataPlane, token: str = "", max_body_bytes: int = 16 << 20) -> None:
        self.plane = plane
        self.auth = BearerCheck(token) if token else None
        self.max_body_bytes = max_body_bytes
        metrics = plane.metrics
        self.metrics = metrics
        routes = [
            Route("/v2/health/live", self._route("ServerLive", self.live, free=True)),
            Route("/v2/health/ready", self._route("ServerReady", self.ready, free=True)),
            Route("/v2", self._route("ServerMetadata", self.server_metadata, free=True)),
        ]
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            routes += [
                Route(base, self._route("ModelMetadata", self.model_metadata, free=True)),
                Route(f"{base}/ready", self._route("ModelReady", self.model_ready, free=True)),
                Route(f"{base}/infer", self._route("ModelInfer", self.infer), methods=["POST"]),
            ]
        self.app = Starlette(routes=routes)
        self.app.add_exception_handler(404, self._not_found)
        self.app.add_exception_handler(405, self._not_allowed)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return json_response({"error": f"no such endpoint: {request.url.path[:200]}"}, 404)

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return json_response({"error": f"method {request.method} not allowed here"}, 405)

    def _route(
        self,
        method: str,
        handler: Callable[[Request], Awaitable[Response]],
        free: bool = False,
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` admitted by the data plane, authenticated (all but the health
        endpoints), errors mapped, recorded in the metrics as ``method``."""
        full = f"/{REST_SERVICE}/{method}"
        probe = method in ("ServerLive", "ServerReady")
        plane = self.plane

        async def endpoint(request: Request) -> Response:
            start = time.perf_counter()
            gauge = self.metrics.in_flight_gauge(full) if self.metrics is not None else None
            if gauge is not None:
                gauge.inc()
            code, headers = "OK", {}
            try:
                sent = request.headers.getlist(REQUEST_ID_KEY)
                headers[REQUEST_ID_KEY] = call_request_id(sent)
                if probe:  # answered while draining too (not ready then), like health Check
                    plane.admission.came_in()
                    response = await handler(request)
                else:
                    self._authenticate(request)
                    async with plane.admission.unary_call(free=free):
                        response = await handler(request)
                code = _code_of(response.status_code)
            except Exception as exc:
                status, code = status_of(exc)
                if status == 500:
                    log.exception("unexpected error in %s", full)
                    message = f"internal error in {full}"
                else:
                    message = str(exc)
                if status == 401:
                    headers["www-authenticate"] = "Bearer"
                response = json_response({"error": message}, status)
            finally:
                if gauge is not None:
                    gauge.dec()
                if self.metrics is not None:
                    self.metrics.observe_request(full, code, time.perf_counter() - start)
            response.headers.update(headers)
            return response

        return endpoint

    def _authenticate(self, request: Request) -> None:
        if self.auth is None:
            return
        problem = self.auth.problem(request.headers.getlist(AUTH_KEY), "header")
        if problem is not None:
            raise UnauthenticatedError(problem)

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = self.plane.serving
        return json_response({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response({"name": "gradsentry", "version": server_version(), "extensions": []})

    def _model(self, request: Request) -> None:
        params = request.path_params
        oip.check_model(params["name"], params.get("version", ""), self.plane.model_name)

    async def model_metadata(self, request: Request) -> Response:
        self._model(request)
        return json_response(oip.model_metadata(self.plane.info(), self.plane.num_classes))

    async def model_ready(self, request: Request) -> Response:
        self._model(request)
        ready = self.plane.serving
        return json_response({"name": self.plane.model_name, "ready": ready}, 200 if ready else 503)

    async def infer(self, request: Request) -> Response:
        arrived = time.monotonic()  # a timeout counts from here, reading the body included
        plane = self.plane
        self._model(request)
        plane.admit()
        body, binary = await self._body(request)
        rid = body.get("id", "")
        if not isinstance(rid, str):
            raise ClientError("id must be a string")
        check_request_id(rid, "id")
        params = _parameters(body, "request")
        timeout = oip.timeout_seconds(params["timeout"]) if "timeout" in params else None
        inputs = _field(body, "inputs", list, "request")
        asked = body.get("outputs", [])
        if not isinstance(asked, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked
        ):
            raise ClientError('outputs must be a list of objects {"name": ...}')
        chosen = oip.requested_outputs([o["name"] for o in asked])
        all_binary = _parameters(body, "request").get("binary_data_output") is True
        binary_out = {
            o["name"]: _parameters(o, "outputs[]").get("binary_data", all_binary) is True
            for o in asked
        }
        tensor = oip.the_input(input_tensors(inputs, binary))
        spec, most = plane.spec, plane.batcher.queue_size
        n = oip.input_rows(tensor, spec, most)  # before any data is read
        count = n * math.prod(spec.shape)
        (batch,), _ = await plane.decode(
            [tensor],
            lambda t: oip.decode_input(json_values(t), spec, most),
            nbytes=8 * count,
        )
        results = await self._score(request, list(batch[:, None]), time_left(timeout, arrived))
        reply: dict[str, Any] = {"model_name": plane.model_name, "model_version": oip.MODEL_VERSION}
        if rid:
            reply["id"] = rid
        blobs: list[bytes] = []
        reply["outputs"] = []
        for out in oip.outputs(results, chosen):
            if binary_out.get(out.name, all_binary):
                blob = oip.raw_bytes(out)
                blobs.append(blob)
                reply["outputs"].append(
                    {
                        "name": out.name,
                        "datatype": out.datatype,
                        "shape": out.shape,
                        "parameters": {"binary_data_size": len(blob)},
                    }
                )
            else:
                reply["outputs"].append(output_json(out))
        if not blobs:
            return json_response(reply)
        header = json.dumps(reply, separators=(",", ":"), allow_nan=False).encode()
        return Response(
            b"".join([header, *blobs]),
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(len(header))},
        )

    async def _score(
        self, request: Request, rows: list[np.ndarray], timeout: float | None
    ) -> list[Result]:
        """``plane.score`` for inputs [1, C, H, W], which also cancels the inputs still
        queued when the client disconnects first (``DisconnectWatch``)."""
        plane = self.plane
        futures = plane.submit(rows, timeout)
        watch = DisconnectWatch(request.receive, futures)
        try:
            results = await wait_results(futures, timeout)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if watch.client_left and not (task is not None and task.cancelling()):
                raise ClientGoneError("the client disconnected before its answer") from None
            raise  # this handler itself is being cancelled (the server stops)
        finally:
            watch.close()
        plane.record(results)
        return results

    async def _body(self, request: Request) -> tuple[dict[str, Any], bytes]:
        """The JSON body (an object) and the binary bytes after it, read up to
        ``max_body_bytes``."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise BodyTooLargeError(
                f"request body of {declared} bytes; this server takes at most "
                f"{self.max_body_bytes} (max_message_bytes)"
            )
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise BodyTooLargeError(
                        f"request body over {self.max_body_bytes} bytes (max_message_bytes)"
                    )
                chunks.append(chunk)
        except ClientDisconnect:
            raise ClientGoneError("the client disconnected while sending the body") from None
        raw = b"".join(chunks)
        binary = b""
        length = request.headers.get(HEADER_LENGTH)
        if length is not None:
            if not length.isdigit() or int(length) > len(raw):
                raise ClientError(
                    f"{HEADER_LENGTH} must be the JSON header's size in bytes, at most the "
                    f"body's {len(raw)}"
                )
            raw, binary = raw[: int(length)], raw[int(length) :]
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ClientError(f"request body is not valid JSON: {str(exc)[:200]}") from None
        if not isinstance(body, dict):
            raise ClientError("request body must be a JSON object")
        return body, binary


def _code_of(status: int) -> str:
    """The gRPC code name recorded for a handler's own response status."""
    return {200: "OK", 503: "UNAVAILABLE"}.get(status, "OK" if status < 400 else "UNKNOWN")
