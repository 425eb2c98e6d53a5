"""Admission of every gRPC call before its request is read: budgets, drain, stream timeouts.

``AdmissionInterceptor`` decides, from the method alone, whether a call may start. Calls are
sorted into classes, each with its own budget, so that no class can starve another:

- ``free``: health ``Check`` and ``GetInfo`` (answered from memory at once): no budget.
  Health ``Check`` is answered even while draining (it reports NOT_SERVING then).
- ``unary``: ``Check`` and ``CheckBatch``: at most ``max_workers`` at once.
- ``streams``: ``CheckStream``: at most ``max_streams`` at once.
- ``open_streams``: health ``Watch`` and reflection, which need no token when auth is on:
  at most ``max_open_streams`` at once.

A call beyond its budget is refused with RESOURCE_EXHAUSTED without its message being read
(``service.interceptors.refusal``); gRPC's own concurrency limit is not used, because it
counts health checks with everything else. Every admitted stream is watched: it ends with
DEADLINE_EXCEEDED when no message has passed either way for ``stream_idle_seconds``, or
when it has been open ``stream_max_seconds`` (0 turns either off).

Drain (``begin_drain``): new calls other than health ``Check`` are refused with UNAVAILABLE;
a stream still open stops taking messages (its next read ends it with UNAVAILABLE after the
answers to the messages it already read); ``end_open_streams`` ends the health watches and
reflection streams that would otherwise stay open to the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from service.errors import DrainingError
from service.interceptors import Continuation, refusal, streaming, unary, wrap_handler

RELIABILITY = "gradsentry.v1.Reliability"
HEALTH = "grpc.health.v1.Health"
FREE_METHODS = frozenset({f"/{HEALTH}/Check", f"/{RELIABILITY}/GetInfo"})
ALWAYS_METHODS = frozenset({f"/{HEALTH}/Check"})  # answered while draining too


@dataclass(frozen=True)
class Limits:
    """Budgets (calls at once) and stream timeouts (seconds; 0 = none)."""

    max_workers: int = 256
    max_streams: int = 64
    max_open_streams: int = 16
    stream_idle_seconds: float = 60.0
    stream_max_seconds: float = 3600.0


class StreamTimeoutError(TimeoutError):
    """A stream was idle, or open, longer than the server allows."""


class Budget:
    """Calls of one class admitted and not yet finished (touched on the event loop only)."""

    def __init__(self, name: str, limit: int | None) -> None:
        self.name, self.limit, self.active = name, limit, 0

    def take(self) -> bool:
        if self.limit is not None and self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1


class StreamWatch:
    """One admitted stream's clock (last message either way, opening time) and its
    watchdog, which cancels the call's task when the stream times out or the server asks
    it to end; ``error()`` then says why."""

    def __init__(self, limits: Limits, drained: asyncio.Future[None]) -> None:
        self.limits = limits
        self.drained = drained
        self.opened = self.last = time.monotonic()
        self.closing: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.reason: Exception | None = None
        self._watchdog: asyncio.Task[None] | None = None

    def touch(self) -> None:
        self.last = time.monotonic()

    def close(self, reason: str) -> None:
        """End the stream with UNAVAILABLE and ``reason`` (the server is stopping)."""
        if not self.closing.done():
            self.closing.set_result(reason)

    def time_left(self) -> tuple[float | None, str]:
        """Seconds until the stream times out (None: never), and why it would."""
        now = time.monotonic()
        left: list[tuple[float, str]] = []
        idle, total = self.limits.stream_idle_seconds, self.limits.stream_max_seconds
        if idle > 0:
            left.append(
                (self.last + idle - now, f"no message for {idle:g} s (stream_idle_seconds)")
            )
        if total > 0:
            left.append(
                (self.opened + total - now, f"open for {total:g} s (stream_max_seconds); reopen it")
            )
        if not left:
            return None, ""
        return min(left)

    def start(self, task: asyncio.Task[Any]) -> None:
        """Watch the call running in ``task``."""
        self._watchdog = asyncio.get_running_loop().create_task(self._watch(task))

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    async def _watch(self, task: asyncio.Task[Any]) -> None:
        while True:
            timeout, why = self.time_left()
            if timeout is not None and timeout <= 0:
                self.reason = StreamTimeoutError(f"stream closed by the server: {why}")
                break
            await asyncio.wait((self.closing,), timeout=timeout)
            if self.closing.done():
                self.reason = DrainingError(self.closing.result())
                break
        task.cancel()

    def error(self, cancelled: asyncio.CancelledError) -> Exception:
        """What a cancellation of the call's task means: the watchdog's reason (the
        cancellation is withdrawn), else it is re-raised (the client went away)."""
        if self.reason is None:
            raise cancelled
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return self.reason

    async def requests(self, messages: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """``messages``, touching the clock on each; once the server drains, the next read
        raises DrainingError (what was read before is still answered)."""
        source = messages.__aiter__()
        while True:
            if self.drained.done():
                raise DrainingError(_DRAINING)
            read = asyncio.ensure_future(source.__anext__())
            read.add_done_callback(_retrieved)  # its end is read below, or of no interest
            try:
                await asyncio.wait((read, self.drained), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not read.done():  # drained first (or this reader was cancelled)
                    read.cancel()
            if read.cancelled() or not read.done():
                raise DrainingError(_DRAINING)
            try:
                message = read.result()
            except StopAsyncIteration:
                return
            self.touch()
            yield message


_DRAINING = "the server is shutting down; retry on another replica"
_CUT = (
    "the server stopped before this call was answered (its grace period ran out); retry on "
    "another replica"
)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark ``task``'s exception as seen (asyncio logs the ones nobody read)."""
    if not task.cancelled():
        task.exception()


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

    def __init__(self, limits: Limits, open_services: frozenset[str]) -> None:
        self.limits = limits
        self.open_services = open_services
        self.unary = Budget("unary", limits.max_workers)
        self.streams = Budget("streams", limits.max_streams)
        self.open_streams = Budget("open_streams", limits.max_open_streams)
        self.free = Budget("free", None)
        self.drained: asyncio.Future[None] | None = None  # made on the event loop
        self.watches: set[StreamWatch] = set()
        # Unary calls running now -> whether the drain has cut them short.
        self.plain: dict[asyncio.Task[Any], bool] = {}
        self.last_call = time.monotonic()  # when a call last came in (admitted or not)

    @property
    def draining(self) -> bool:
        return self.drained is not None and self.drained.done()

    @property
    def busy(self) -> int:
        """Calls admitted and not finished, open streams aside (what a drain waits for)."""
        return self.unary.active + self.streams.active + self.free.active

    def begin_drain(self) -> None:
        """Refuse new calls (except health Check), end streams at their next read. Call on
        the event loop."""
        if not self._drained().done():
            self.drained.set_result(None)  # type: ignore[union-attr]

    def _drained(self) -> asyncio.Future[None]:
        if self.drained is None:
            self.drained = asyncio.get_running_loop().create_future()
        return self.drained

    def end_open_streams(self) -> None:
        """End every stream still open (health watches, reflection) with UNAVAILABLE."""
        for watch in list(self.watches):
            watch.close(_DRAINING)

    def cut_all(self) -> None:
        """The grace period ran out: end every call still running with UNAVAILABLE (a
        status that says why and invites a retry, where gRPC's stop would say CANCELLED)."""
        for watch in list(self.watches):
            watch.close(_CUT)
        for task in list(self.plain):
            self.plain[task] = True
            task.cancel()

    def budget_of(self, method: str, handler: grpc.RpcMethodHandler) -> Budget:
        service = method.lstrip("/").partition("/")[0]
        if method in FREE_METHODS:
            return self.free
        streamed = bool(handler.stream_stream or handler.unary_stream or handler.stream_unary)
        if service in self.open_services:
            return self.open_streams if streamed else self.free
        return self.streams if streamed else self.unary

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        self.last_call = time.monotonic()
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if self.draining and method not in ALWAYS_METHODS:
            return refusal(handler, grpc.StatusCode.UNAVAILABLE, _DRAINING)
        budget = self.budget_of(method, handler)
        if not budget.take():
            return refusal(
                handler,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is serving its most {budget.name.replace('_', ' ')} calls at once "
                f"({budget.limit}); retry with backoff",
            )
        # The budget is held from here: gRPC runs the returned handler (the call has
        # started), which releases it once.
        inner_unary, inner_streaming = unary(handler), streaming(handler)
        limits, watches, drained = self.limits, self.watches, self._drained()
        plain = self.plain
        request_streamed = bool(handler.stream_unary or handler.stream_stream)
        response_streamed = bool(handler.unary_stream or handler.stream_stream)
        if not (request_streamed or response_streamed):

            async def on_plain(request: Any, context: grpc.aio.ServicerContext) -> Any:
                task = asyncio.current_task()
                plain[task] = False  # type: ignore[index]
                try:
                    return await inner_unary(request, context)
                except asyncio.CancelledError:
                    if not plain.get(task):  # type: ignore[arg-type]
                        raise  # the client went away
                    task.uncancel()  # type: ignore[union-attr]
                    raise DrainingError(_CUT) from None
                finally:
                    plain.pop(task, None)  # type: ignore[arg-type]
                    budget.release()

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
