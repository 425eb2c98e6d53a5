"""Server interceptors: metrics of every call, and domain exceptions -> gRPC status codes.

``ErrorInterceptor``: a client's mistake is never INTERNAL: ``ClientError`` (and so
``CodecError``) becomes INVALID_ARGUMENT with the exception's message. Anything unexpected
is logged with its traceback and returned as INTERNAL without internals in the message.

``MetricsInterceptor`` counts every call by method and final status code, its duration and
the calls in flight. It must come first in the server's interceptor list (outermost), so it
sees the status every inner interceptor and handler settled on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc

from service.errors import (
    ClientError,
    DrainingError,
    NotReadyError,
    QueueFullError,
    WorkerError,
)
from service.metrics import UNKNOWN_METHOD, Metrics

log = logging.getLogger(__name__)

STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (ClientError, grpc.StatusCode.INVALID_ARGUMENT),
    (QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReadyError, grpc.StatusCode.FAILED_PRECONDITION),
    (DrainingError, grpc.StatusCode.UNAVAILABLE),
    (WorkerError, grpc.StatusCode.UNAVAILABLE),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code a domain exception maps to, or None for an unexpected one."""
    for kind, code in STATUS_OF:
        if isinstance(exc, kind):
            return code
    return None


def _abort(context: grpc.ServicerContext, method: str, exc: Exception) -> NoReturn:
    if context.code() is not None:  # already aborted by the handler itself
        raise exc
    code = status_for(exc)
    if code is None:
        log.exception("unexpected error in %s", method, exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")
    context.abort(code, str(exc))


class ErrorInterceptor(grpc.ServerInterceptor):
    """Wraps every handler so that raised exceptions end the call with a mapped status."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return _rewrap(handler, _unary(handler, method), _streaming(handler, method))


def _rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[..., Any],
    streaming: Callable[..., Any],
) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind and codec with its behaviour replaced: ``unary`` for
    calls with one response, ``streaming`` for calls with a response stream."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **codec)
    return grpc.stream_stream_rpc_method_handler(streaming, **codec)


def _behavior(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The one behaviour function a handler carries, whatever its kind."""
    return (
        handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream
    )


def _unary(handler: grpc.RpcMethodHandler, method: str) -> Callable[..., Any]:
    behavior = _behavior(handler)

    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as exc:
            _abort(context, method, exc)

    return wrapper


def _streaming(handler: grpc.RpcMethodHandler, method: str) -> Callable[..., Any]:
    behavior = _behavior(handler)

    def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except Exception as exc:
            _abort(context, method, exc)

    return wrapper


class MetricsInterceptor(grpc.ServerInterceptor):
    """Records every call in ``metrics``: count by method and status code, duration and
    in-flight. Calls to methods the server does not have count as UNIMPLEMENTED under the
    method label "unknown" (client-chosen names would make label values unbounded)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            unknown = f"/{UNKNOWN_METHOD}/{UNKNOWN_METHOD}"
            self.metrics.observe_request(unknown, grpc.StatusCode.UNIMPLEMENTED.name, 0.0)
            return None
        method = handler_call_details.method
        behavior = _behavior(handler)
        metrics = self.metrics

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            with metrics.inflight(method):
                try:
                    response = behavior(request, context)
                    code = final_code(context, grpc.StatusCode.OK)
                    return response
                except BaseException:
                    code = final_code(context, grpc.StatusCode.UNKNOWN)
                    raise
                finally:
                    metrics.observe_request(method, code.name, time.perf_counter() - start)

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            with metrics.inflight(method):
                try:
                    yield from behavior(request, context)
                    code = final_code(context, grpc.StatusCode.OK)
                except GeneratorExit:  # gRPC closed the stream early: the client went away
                    code = final_code(context, grpc.StatusCode.CANCELLED)
                    raise
                except BaseException:
                    code = final_code(context, grpc.StatusCode.UNKNOWN)
                    raise
                finally:
                    metrics.observe_request(method, code.name, time.perf_counter() - start)

        return _rewrap(handler, unary, streaming)


def final_code(context: grpc.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    """The status a call ends with: the code the handler set or aborted with; else
    DEADLINE_EXCEEDED / CANCELLED when the client is gone (its answer is lost); else
    ``default``."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if not context.is_active():
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return default
