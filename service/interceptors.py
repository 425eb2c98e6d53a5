"""Server interceptors: metrics of every call, and domain exceptions -> gRPC status codes.

``ErrorInterceptor``: a client's mistake is never INTERNAL: ``ClientError`` (and so
``CodecError``) becomes INVALID_ARGUMENT with the exception's message. Anything unexpected
is logged with its traceback and returned as INTERNAL without internals in the message.

``MetricsInterceptor`` counts every call by method and final status code, its duration and
the calls in flight. It must come first in the server's interceptor list (outermost), so it
sees the status every inner interceptor and handler settled on.

``DecodeInterceptor`` must come last (innermost): it hands gRPC a handler that takes the raw
request bytes, and parses them itself inside the call, so a message that is not valid
protobuf is a ``ClientError`` (INVALID_ARGUMENT, counted, one log-free answer) like any other
bad input, for every method and in streams too. (gRPC's own parsing would end the call
UNKNOWN with a logged traceback, outside every interceptor, and leave a streaming handler
waiting for a message that never comes.)

``refusal(handler, code, message)`` ends a call without reading its request: interceptors
that refuse calls (auth, admission) use it, so a refused call's message is never received.

The server is ``grpc.aio``: handlers are coroutines (unary responses) or async generators
(streamed responses), and ``wrap_handler`` gives an interceptor a handler of the same kind
with its behaviour replaced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from service.errors import (
    ClientError,
    DrainingError,
    NotFoundError,
    NotReadyError,
    QueueFullError,
    WorkerError,
)
from service.metrics import UNKNOWN_METHOD, Metrics

log = logging.getLogger(__name__)

STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ClientError, grpc.StatusCode.INVALID_ARGUMENT),
    (QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReadyError, grpc.StatusCode.FAILED_PRECONDITION),
    (DrainingError, grpc.StatusCode.UNAVAILABLE),
    (WorkerError, grpc.StatusCode.UNAVAILABLE),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
)

# A handler's next step: (handler call details) -> its handler, or None (unknown method).
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code a domain exception maps to, or None for an unexpected one."""
    for kind, code in STATUS_OF:
        if isinstance(exc, kind):
            return code
    return None


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> NoReturn:
    if isinstance(exc, grpc.aio.AbortError):  # the handler aborted the call itself
        raise exc
    code = status_for(exc)
    if code is None:
        log.exception("unexpected error in %s", method, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")
    await context.abort(code, str(exc))


def behaviour(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The one behaviour function a handler carries, whatever its kind."""
    return (
        handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream
    )


def unary(handler: grpc.RpcMethodHandler) -> Unary:
    """The behaviour of a handler with one response (a coroutine function: every handler of
    this aio server is asynchronous)."""
    return behaviour(handler)


def streaming(handler: grpc.RpcMethodHandler) -> Streaming:
    """The behaviour of a handler with a response stream as an async generator function:
    an async generator's responses are passed on; a coroutine writing its responses with
    ``context.write`` (grpc.aio's health Watch) is awaited."""
    fn = behaviour(handler)

    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        responses = fn(request, context)
        if asyncio.iscoroutine(responses):
            await responses
        else:
            async for response in responses:
                yield response

    return call


def wrap_handler(
    handler: grpc.RpcMethodHandler, on_unary: Unary, on_streaming: Streaming
) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind and codec with its behaviour replaced: ``on_unary``
    for calls with one response, ``on_streaming`` for calls with a response stream."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(on_unary, **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(on_unary, **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(on_streaming, **codec)
    return grpc.stream_stream_rpc_method_handler(on_streaming, **codec)


def refusal(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler that ends the call with ``code`` and ``message`` without reading the request.

    It is registered as request-streaming whatever ``handler`` is: gRPC receives the request
    message of a unary-request handler before the handler runs, and never for a streaming
    one. The wire is the same for both (a method's arity is not sent), so the client sees
    its own kind of call end with this status.
    """

    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def refuse_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover - abort raises; this only makes the function a generator

    serializer = handler.response_serializer
    if handler.unary_unary or handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, None, serializer)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, None, serializer)


class MalformedMessageError(ClientError):
    """A request message is not valid protobuf of the method's request type."""


def parser(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any]:
    """``deserializer`` as a function that raises ``MalformedMessageError`` (with the method
    and the message size, never the bytes) for anything it cannot parse."""
    if deserializer is None:
        return lambda raw: raw

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError and whatever a custom deserializer raises
            raise MalformedMessageError(
                f"malformed request message for {method}: {len(raw)} bytes that are not a "
                f"valid protobuf message of the method's request type ({type(exc).__name__})"
            ) from None

    return parse


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """Parses request messages inside the call (see the module docstring); innermost."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = parser(handler.request_deserializer, handler_call_details.method)
        fn = behaviour(handler)
        streamed = bool(handler.stream_unary or handler.stream_stream)

        async def messages(raw: AsyncIterator[bytes]) -> AsyncIterator[Any]:
            async for item in raw:
                yield parse(item)

        def request_of(raw: Any) -> Any:
            return messages(raw) if streamed else parse(raw)

        async def on_unary(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            return await fn(request_of(raw), context)

        def on_streaming(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            return fn(request_of(raw), context)  # an async generator, or a coroutine (Watch)

        codec = {"request_deserializer": None, "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(on_unary, **codec)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(on_unary, **codec)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(on_streaming, **codec)
        return grpc.stream_stream_rpc_method_handler(on_streaming, **codec)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler so that raised exceptions end the call with a mapped status."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        inner_unary, inner_streaming = unary(handler), streaming(handler)

        async def on_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner_unary(request, context)
            except Exception as exc:
                await _abort(context, method, exc)

        async def on_streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for response in inner_streaming(request, context):
                    yield response
            except Exception as exc:
                await _abort(context, method, exc)

        return wrap_handler(handler, on_unary, on_streaming)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Records every call in ``metrics``: count by method and status code, duration and
    in-flight. Calls to methods the server does not have count as UNIMPLEMENTED under the
    method label "unknown" (client-chosen names would make label values unbounded)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            unknown = f"/{UNKNOWN_METHOD}/{UNKNOWN_METHOD}"
            self.metrics.observe_request(unknown, grpc.StatusCode.UNIMPLEMENTED.name, 0.0)
            return None
        method = handler_call_details.method
        metrics = self.metrics
        inner_unary, inner_streaming = unary(handler), streaming(handler)

        in_flight = metrics.in_flight_gauge(method)

        async def on_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with _Recorded(metrics, method, in_flight, context):
                return await inner_unary(request, context)

        async def on_streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with _Recorded(metrics, method, in_flight, context):
                async for response in inner_streaming(request, context):
                    yield response

        return wrap_handler(handler, on_unary, on_streaming)


class _Recorded:
    """One call counted in flight while it runs, then recorded with its final status code
    and duration (CANCELLED / DEADLINE_EXCEEDED when the client went away)."""

    def __init__(
        self, metrics: Metrics, method: str, in_flight: Any, context: grpc.aio.ServicerContext
    ) -> None:
        self.metrics, self.method = metrics, method
        self.in_flight, self.context = in_flight, context

    def __enter__(self) -> None:
        self.start = time.perf_counter()
        self.in_flight.inc()

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if kind is None:
            default = grpc.StatusCode.OK
        elif issubclass(kind, (asyncio.CancelledError, GeneratorExit)):  # the client went away
            default = grpc.StatusCode.CANCELLED
        else:
            default = grpc.StatusCode.UNKNOWN
        code = final_code(self.context, default)
        self.in_flight.dec()
        self.metrics.observe_request(self.method, code.name, time.perf_counter() - self.start)


# A client gives up at its deadline by resetting the stream, which looks like any other
# cancel. The server's copy of that deadline (grpc-timeout, a relative time) starts when it
# reads the call's headers, later than the client's by the time they took to be read: tens
# of milliseconds when the GIL or a busy core delays the event loop. A cancel that comes
# this close to the server's copy is the client's deadline.
CLIENT_DEADLINE_SLACK = 0.5  # seconds


def final_code(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    """The status a call ends with: the code the handler set or aborted with; else
    DEADLINE_EXCEEDED / CANCELLED when the client is gone (its answer is lost; deadline
    when it went within CLIENT_DEADLINE_SLACK of its deadline); else ``default``."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if context.cancelled() or default is grpc.StatusCode.CANCELLED:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= CLIENT_DEADLINE_SLACK:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return default
