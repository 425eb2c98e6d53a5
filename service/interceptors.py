"""Server interceptor: domain exceptions -> gRPC status codes with actionable messages.

A client's mistake is never INTERNAL: ``ClientError`` (and so ``CodecError``) becomes
INVALID_ARGUMENT with the exception's message. Anything unexpected is logged with its
traceback and returned as INTERNAL without internals in the message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc

from service.errors import ClientError, DrainingError, NotReadyError, QueueFullError

log = logging.getLogger(__name__)

STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (ClientError, grpc.StatusCode.INVALID_ARGUMENT),
    (QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReadyError, grpc.StatusCode.FAILED_PRECONDITION),
    (DrainingError, grpc.StatusCode.UNAVAILABLE),
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
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, method), **codec)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _unary(handler.stream_unary, method), **codec
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, method), **codec
            )
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream, method), **codec
        )


def _unary(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as exc:
            _abort(context, method, exc)

    return wrapper


def _streaming(behavior: Callable[..., Iterator[Any]], method: str) -> Callable[..., Any]:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except Exception as exc:
            _abort(context, method, exc)

    return wrapper
