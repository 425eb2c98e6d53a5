"""Deadlines: a call's time left, whatever its transport, and waiting within it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Future

from service.engine.batcher import DeadlineExceededError
from service.engine.pipeline import Result

# Larger than this many seconds counts as no deadline (grpc reports ~9.2e18 s remaining
# for a call without one).
NO_DEADLINE = 1e9


def timeout_of(remaining: float | None) -> float | None:
    """A transport's "seconds remaining" -> seconds left (>= 0), None without a deadline."""
    if remaining is None or remaining > NO_DEADLINE:
        return None
    return max(remaining, 0.0)


def time_left(limit: float | None, started: float, other: float | None = None) -> float | None:
    """Seconds left (>= 0) of a ``limit`` in seconds counted from ``started`` (a
    ``time.monotonic()`` value) or of ``other`` seconds left, whichever ends first; None
    when neither is set. A request's own timeout parameter beside the transport's deadline."""
    if limit is not None:
        limit = max(limit - (time.monotonic() - started), 0.0)
    return other if limit is None else limit if other is None else min(limit, other)


def deadline_of(timeout: float | None) -> float | None:
    """Seconds left -> a ``time.monotonic()`` deadline (what the batcher drops by)."""
    return None if timeout is None else time.monotonic() + timeout


async def wait_results(futures: Sequence[Future[Result]], timeout: float | None) -> list[Result]:
    """The futures' results, within ``timeout`` seconds. When the call ends first (client
    cancel, deadline, server stop: this task is cancelled) or the time runs out, the
    futures are cancelled, so inputs still queued are never computed."""
    waiting = [asyncio.wrap_future(f) for f in futures]
    together = waiting[0] if len(waiting) == 1 else asyncio.gather(*waiting)
    try:
        done = await asyncio.wait_for(together, timeout)
    except TimeoutError as exc:  # our wait ran out, or the batcher dropped it as expired
        if isinstance(exc, DeadlineExceededError):
            raise
        raise DeadlineExceededError("the deadline passed before the input was scored") from None
    finally:
        for f in futures:  # a no-op for every future already answered
            f.cancel()
    return [done] if len(waiting) == 1 else list(done)
