"""The gRPC face of ``service.dataplane.admission``: an interceptor that admits or refuses
each call from its method alone, before its request is read.

Method classes: health ``Check``, gradsentry.v1 ``GetInfo`` and the OIP health and metadata
methods are ``free``; streams of the open services (health ``Watch``, reflection) are
``open_streams``; other streams are ``streams``; every other call (``Check``,
``CheckBatch``, OIP ``ModelInfer``) is ``unary``. A refused call is ended with
``service.interceptors.refusal`` (its message is never received); gRPC's own concurrency
limit is not used, because it counts health checks with everything else.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from service.dataplane.admission import (
    DRAINING,
    Admission,
    Budget,
    StreamWatch,
    over_budget,
)
from service.interceptors import Continuation, refusal, streaming, unary, wrap_handler

RELIABILITY = "gradsentry.v1.Reliability"
HEALTH = "grpc.health.v1.Health"
OIP = "inference.GRPCInferenceService"
_OIP_PROBES = ("ServerLive", "ServerReady", "ModelReady")
# Answered while draining too: probes report "not ready" then instead of failing.
ALWAYS_METHODS = frozenset({f"/{HEALTH}/Check", *(f"/{OIP}/{m}" for m in _OIP_PROBES)})
FREE_METHODS = frozenset(
    {
        *ALWAYS_METHODS,
        f"/{RELIABILITY}/GetInfo",
        f"/{OIP}/ServerMetadata",
        f"/{OIP}/ModelMetadata",
    }
)


class _WatchedContext:
    """The call's context, with ``write`` touching the stream's clock (grpc.aio's health
    ``Watch`` writes its responses itself instead of yielding them)."""

    def __init__(self, context: grpc.aio.ServicerContext, watch: StreamWatch) -> None:
        self._context, self._watch = context, watch

    async def write(self, message: Any) -> None:
        self._watch.touch()
        await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """Budgets per call class, refusal while draining, timeouts on streams (module doc)."""

    def __init__(self, admission: Admission, open_services: frozenset[str]) -> None:
        self.admission = admission
        self.open_services = open_services

    def budget_of(self, method: str, handler: grpc.RpcMethodHandler) -> Budget:
        admission = self.admission
        service = method.lstrip("/").partition("/")[0]
        if method in FREE_METHODS:
            return self.admission.free
        streamed = bool(handler.stream_stream or handler.unary_stream or handler.stream_unary)
        if service in self.open_services:
            return admission.open_streams if streamed else admission.free
        return admission.streams if streamed else admission.unary

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        admission = self.admission
        admission.came_in()
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if admission.draining and method not in ALWAYS_METHODS:
            return refusal(handler, grpc.StatusCode.UNAVAILABLE, DRAINING)
        budget = self.budget_of(method, handler)
        if not budget.take():
            return refusal(handler, grpc.StatusCode.RESOURCE_EXHAUSTED, over_budget(budget))
        # The budget is held from here: gRPC runs the returned handler (the call has
        # started), which releases it once.
        inner_unary, inner_streaming = unary(handler), streaming(handler)
        limits, watches = admission.limits, admission.watches
        drained = admission.drained_future()
        request_streamed = bool(handler.stream_unary or handler.stream_stream)
        response_streamed = bool(handler.unary_stream or handler.stream_stream)
        if not (request_streamed or response_streamed):

            async def on_plain(request: Any, context: grpc.aio.ServicerContext) -> Any:
                return await admission.run_unary(budget, inner_unary(request, context))

            return wrap_handler(handler, on_plain, inner_streaming)

        def watched() -> StreamWatch:
            watch = StreamWatch(limits, drained)
            watch.start(asyncio.current_task())  # type: ignore[arg-type]
            watches.add(watch)
            return watch

        def done(watch: StreamWatch) -> None:
            watch.stop()
            watches.discard(watch)
            budget.release()

        async def on_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            watch = watched()
            try:
                return await inner_unary(watch.requests(request), context)
            except asyncio.CancelledError as exc:
                raise watch.error(exc) from None
            finally:
                done(watch)

        async def on_streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            watch = watched()
            try:
                if request_streamed:
                    request = watch.requests(request)
                async for response in inner_streaming(request, _WatchedContext(context, watch)):
                    watch.touch()
                    yield response
            except asyncio.CancelledError as exc:
                raise watch.error(exc) from None
            finally:
                done(watch)

        return wrap_handler(handler, on_unary, on_streaming)
