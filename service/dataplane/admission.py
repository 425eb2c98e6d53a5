"""Admission of every call, whatever its transport: budgets, drain, stream timeouts.

``Admission`` holds the state every transport consults before it reads a request. Calls
are sorted into classes, each with its own budget, so that no class can starve another:

- ``free``: health checks and metadata (answered from memory at once): no budget. Health
  checks are answered even while draining (they report NOT_SERVING then).
- ``unary``: one-answer scoring calls (gradsentry.v1 ``Check`` and ``CheckBatch``, OIP
  ``ModelInfer`` over gRPC and REST): at most ``max_workers`` at once, all transports
  together.
- ``streams``: ``CheckStream``: at most ``max_streams`` at once.
- ``open_streams``: health ``Watch`` and reflection, which need no token when auth is on:
  at most ``max_open_streams`` at once.

A call beyond its budget is refused (RESOURCE_EXHAUSTED, HTTP 429) without its message
being read. Every admitted stream is watched: it ends with DEADLINE_EXCEEDED when no
message has passed either way for ``stream_idle_seconds``, or when it has been open
``stream_max_seconds`` (0 turns either off).

Drain (``begin_drain``): new calls other than health checks are refused (UNAVAILABLE, HTTP
503); a stream still open stops taking messages (its next read ends it with UNAVAILABLE
after the answers to the messages it already read); ``end_open_streams`` ends the health
watches and reflection streams that would otherwise stay open to the end; ``cut_all`` ends
every call still running when the grace period runs out. The gRPC face of this is
``service.transport.grpc_admission``; REST calls take ``unary_call``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from service.errors import DrainingError, QueueFullError


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
                raise DrainingError(DRAINING)
            read = asyncio.ensure_future(source.__anext__())
            read.add_done_callback(_retrieved)  # its end is read below, or of no interest
            try:
                await asyncio.wait((read, self.drained), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not read.done():  # drained first (or this reader was cancelled)
                    read.cancel()
            if read.cancelled() or not read.done():
                raise DrainingError(DRAINING)
            try:
                message = read.result()
            except StopAsyncIteration:
                return
            self.touch()
            yield message


DRAINING = "the server is shutting down; retry on another replica"
CUT = (
    "the server stopped before this call was answered (its grace period ran out); retry on "
    "another replica"
)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark ``task``'s exception as seen (asyncio logs the ones nobody read)."""
    if not task.cancelled():
        task.exception()


class OverBudgetError(QueueFullError):
    """A class of calls is at its budget (RESOURCE_EXHAUSTED, HTTP 429)."""


def over_budget(budget: Budget) -> str:
    """The refusal message for a call beyond ``budget``."""
    return (
        f"the server is serving its most {budget.name.replace('_', ' ')} calls at once "
        f"({budget.limit}); retry with backoff"
    )


class Admission:
    """Budgets per call class, the drain, open streams and running calls (module doc).
    Touched on the server's event loop only."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
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
        """Refuse new calls (except health checks), end streams at their next read. Call on
        the event loop."""
        if not self.drained_future().done():
            self.drained.set_result(None)  # type: ignore[union-attr]

    def drained_future(self) -> asyncio.Future[None]:
        """Done once the drain has begun (made on first use, on the event loop)."""
        if self.drained is None:
            self.drained = asyncio.get_running_loop().create_future()
        return self.drained

    def end_open_streams(self) -> None:
        """End every stream still open (health watches, reflection) with UNAVAILABLE."""
        for watch in list(self.watches):
            watch.close(DRAINING)

    def cut_all(self) -> None:
        """The grace period ran out: end every call still running with UNAVAILABLE (a
        status that says why and invites a retry, where gRPC's stop would say CANCELLED)."""
        for watch in list(self.watches):
            watch.close(CUT)
        for task in list(self.plain):
            self.plain[task] = True
            task.cancel()

    def came_in(self) -> None:
        """A call arrived (admitted or not): the drain waits for a quiet moment."""
        self.last_call = time.monotonic()

    async def run_unary(self, budget: Budget, call: Any) -> Any:
        """Await ``call`` (a coroutine) as an admitted call holding ``budget`` (taken by
        the caller; released here): the drain waits for it, and ``cut_all`` ends it with
        DrainingError."""
        task = asyncio.current_task()
        plain = self.plain
        plain[task] = False  # type: ignore[index]
        try:
            return await call
        except asyncio.CancelledError:
            if not plain.get(task):  # type: ignore[arg-type]
                raise  # the client went away
            task.uncancel()  # type: ignore[union-attr]
            raise DrainingError(CUT) from None
        finally:
            plain.pop(task, None)  # type: ignore[arg-type]
            budget.release()

    @asynccontextmanager
    async def unary_call(self, free: bool = False) -> AsyncIterator[None]:
        """Admit one call of a transport without interceptors (REST): refused with
        DrainingError while draining (``free`` calls too: a REST health probe answers
        itself), with OverBudgetError beyond the ``unary`` budget; ``free`` calls take no
        budget. The body runs as ``run_unary`` runs a call."""
        self.came_in()
        if self.draining:
            raise DrainingError(DRAINING)
        budget = self.free if free else self.unary
        if not budget.take():
            raise OverBudgetError(over_budget(budget))
        # The caller's block runs as an admitted call: registered for cut_all, budget held.
        task = asyncio.current_task()
        self.plain[task] = False  # type: ignore[index]
        try:
            yield
        except asyncio.CancelledError:
            if not self.plain.get(task):  # type: ignore[arg-type]
                raise
            task.uncancel()  # type: ignore[union-attr]
            raise DrainingError(CUT) from None
        finally:
            self.plain.pop(task, None)  # type: ignore[arg-type]
            budget.release()
