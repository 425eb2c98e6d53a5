"""Dynamic batching: concurrent single inputs -> one pipeline batch on the device's worker.

``Batcher.submit(x, deadline)`` puts one input [1, C, H, W] on a bounded queue and returns
a ``Future`` of its ``Result``. One worker thread per device (a Batcher wraps the pipeline
of one device) takes the oldest request, waits until ``max_delay_ms`` after that request
was submitted for more to arrive (up to ``max_batch_size``), drops requests whose deadline
has passed or whose caller gave up (cancelled future) without computing them, hands the
rest to ``pipeline.run_async`` and resolves their futures when it answers. Up to
``pipeline.max_in_flight`` batches are with the pipeline at once (1 when the model computes
in this process; 2 for a model worker process, so that it never waits for the next batch).

With ``dispatch_when_idle`` a batch that holds the pipeline's ``min_rows`` (the size smaller
batches are padded to) stops waiting early when waiting would leave the model idle: at once
when nothing is in flight, and, with a batch in flight, ``HANDOFF_SECONDS`` before that
batch should be done (``service.engine.pacing`` predicts it from the sizes and compute times of
the batches before), so the next batch is there when the model is free yet gathered
company for as long as it could.

A full queue refuses new work at once with ``QueueFullError`` (RESOURCE_EXHAUSTED): the
memory held by waiting inputs is bounded by ``queue_size`` plus the batches in flight.
``max_batch_size == 1`` or ``max_delay_ms == 0`` turns batching off (inputs still go
through the queue, one per batch).

Optional metrics (duck-typed): ``set_queue_depth(n)`` whenever the depth changes,
``observe_batch(size)`` per computed batch, ``observe_stage(stage, seconds)`` with stage
"queue" once per computed request (submit -> batch start) and "forward", "backward",
"statistics", "detector" once per computed batch (the whole batch's time in that stage).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.engine.pacing import PipelineClock
from service.engine.pipeline import BasePipeline, Result
from service.errors import DrainingError, QueueFullError

log = logging.getLogger(__name__)

COMPUTE_STAGES = ("forward", "backward", "statistics", "detector")
# How long before the model should be free a batch leaves with a batch still in flight:
# handing it over (serialising, the socket, the worker reading it) takes about this long.
HANDOFF_SECONDS = 0.001


class DeadlineExceededError(TimeoutError):
    """The request's deadline passed before it was scored (DEADLINE_EXCEEDED)."""


class BatcherClosedError(DrainingError):
    """The batcher no longer takes work: the server is shutting down (UNAVAILABLE)."""


class BatchMetrics(Protocol):
    """What the batcher reports to; the service's metrics class implements it."""

    def set_queue_depth(self, n: int) -> None: ...

    def observe_batch(self, size: int) -> None: ...

    def observe_stage(self, stage: str, seconds: float) -> None: ...


@dataclass(frozen=True)
class BatcherStats:
    """Counters since start: inputs submitted, refused because the queue was full, dropped
    unscored because their deadline passed or their caller cancelled, scored (in
    ``batches`` pipeline runs); the largest batch, the deepest queue and the most batches
    with the pipeline at once seen."""

    submitted: int = 0
    rejected: int = 0
    expired: int = 0
    cancelled: int = 0
    scored: int = 0
    batches: int = 0
    largest_batch: int = 0
    peak_depth: int = 0
    peak_in_flight: int = 0


@dataclass
class _Request:
    array: np.ndarray  # [1, C, H, W]
    deadline: float | None  # time.monotonic() value
    submitted: float  # time.monotonic() value
    future: Future[Result]


class Batcher:
    """Groups concurrent inputs into batches for one pipeline (one device, one worker).

    ``max_batch_size`` caps a batch; ``max_delay_ms`` is how long the oldest waiting input
    may wait for company (less with ``dispatch_when_idle``, see the module docstring);
    ``queue_size`` caps the inputs waiting (submitted, not yet being computed).
    """

    def __init__(
        self,
        pipeline: BasePipeline,
        max_batch_size: int,
        max_delay_ms: float,
        queue_size: int,
        metrics: BatchMetrics | None = None,
        dispatch_when_idle: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not max_delay_ms >= 0:  # also refuses NaN
            raise ValueError(f"max_delay_ms must be >= 0, got {max_delay_ms}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.pipeline = pipeline
        self.max_batch_size = max_batch_size
        self.max_delay_ms = max_delay_ms
        self.queue_size = queue_size
        self.metrics = metrics
        self.dispatch_when_idle = dispatch_when_idle
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        # Batches handed to the pipeline and not yet answered (at most max_in_flight).
        self._slots = threading.Condition()
        self._in_flight = 0
        self._clock = PipelineClock()
        self._closed = False
        self._counts = {f.name: 0 for f in dataclasses.fields(BatcherStats)}
        self._worker = threading.Thread(
            target=self._loop, name=f"batcher-{pipeline.device}", daemon=True
        )
        self._worker.start()

    @property
    def batching(self) -> bool:
        """False when every batch holds one input (max_batch_size 1 or max_delay_ms 0)."""
        return self.max_batch_size > 1 and self.max_delay_ms > 0

    @property
    def depth(self) -> int:
        """Inputs waiting in the queue (not counting the batch being computed)."""
        with self._cond:
            return len(self._queue)

    @property
    def closed(self) -> bool:
        """True once ``close`` was called: submits are refused."""
        return self._closed

    def stats(self) -> BatcherStats:
        """A snapshot of the counters."""
        with self._cond:
            return BatcherStats(**self._counts)

    def submit(self, array: np.ndarray, deadline: float | None = None) -> Future[Result]:
        """Queue one input [1, C, H, W]; ``deadline`` is a ``time.monotonic()`` value after
        which it is dropped unscored. Raises QueueFullError when the queue is full and
        BatcherClosedError after ``close``."""
        return self.submit_many([array], deadline)[0]

    def submit_many(
        self, arrays: Sequence[np.ndarray], deadline: float | None = None
    ) -> list[Future[Result]]:
        """Queue several inputs [1, C, H, W] all or none (QueueFullError when they do not
        all fit), so that a refused multi-input call leaves no orphans to compute."""
        now = time.monotonic()
        requests = [_Request(a, deadline, now, Future()) for a in arrays]
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the server is shutting down; retry on another replica")
            if len(self._queue) + len(requests) > self.queue_size:
                self._count(rejected=len(requests))
                raise QueueFullError(
                    f"the server is overloaded ({len(self._queue)} of {self.queue_size} queue "
                    f"slots taken, {len(requests)} needed); retry with backoff"
                )
            self._queue.extend(requests)
            depth = len(self._queue)
            self._count(submitted=len(requests))
            self._counts["peak_depth"] = max(self._counts["peak_depth"], depth)
            # Reported under the lock so that concurrent updates reach the gauge in order.
            self._report("set_queue_depth", depth)
            self._cond.notify()
        return [r.future for r in requests]

    def close(self, drain: bool = True, timeout: float | None = None) -> bool:
        """Refuse new submits and stop the worker. ``drain``: answer everything already
        queued first; otherwise fail it with BatcherClosedError. Returns True if the worker
        stopped within ``timeout`` seconds."""
        dropped: list[_Request] = []
        with self._cond:
            self._closed = True
            if not drain:
                dropped = list(self._queue)
                self._queue.clear()
            self._cond.notify_all()
            if dropped:
                self._report("set_queue_depth", 0)
        for r in dropped:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(
                    BatcherClosedError("the server stopped before this input was scored")
                )
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)
        return not self._worker.is_alive()

    # -- worker ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            # A free slot first, then gather: the next batch keeps filling while the
            # pipeline is busy with the ones in flight.
            self._wait_in_flight(self.pipeline.max_in_flight - 1)
            batch = self._collect()
            if batch is None:
                self._wait_in_flight(0)  # draining: every batch handed over is answered
                return
            try:
                self._dispatch(batch)
            except BaseException as exc:  # never leave a caller waiting forever
                log.exception("batch of %d failed", len(batch))
                _fail(batch, exc)

    def _ready_at(self) -> float | None:
        """With ``dispatch_when_idle``, when the gathering batch should leave because the
        model is (about to be) idle: now when nothing is in flight, shortly before the
        batches in flight should be done otherwise; None when there is no such moment
        (too few inputs for ``min_rows``, nothing predicted yet). Caller holds ``_cond``."""
        if not self.dispatch_when_idle or len(self._queue) < self.pipeline.min_rows:
            return None
        if self._in_flight == 0:
            return -float("inf")
        free_at = self._clock.free_at()
        return None if free_at is None else free_at - HANDOFF_SECONDS

    def _wait_in_flight(self, most: int) -> None:
        """Block until at most ``most`` batches are with the pipeline."""
        with self._slots:
            while self._in_flight > most:
                self._slots.wait()

    def _collect(self) -> list[_Request] | None:
        """Block for a request, then until max_batch_size are queued, the oldest has
        waited max_delay_ms, or the model is idle and min_rows are queued; take them. None
        when closed and empty. Requests stay in the queue while the batch gathers: they
        count against queue_size and in the depth."""
        # A batch cannot gather more than the queue holds: a full queue leaves at once.
        limit = min(self.max_batch_size, self.queue_size) if self.batching else 1
        with self._cond:
            while True:
                while not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                # The delay counts from the oldest request's submit: under load it has
                # already waited and the batch leaves with whatever is there.
                until = self._queue[0].submitted + self.max_delay_ms / 1000.0
                while 0 < len(self._queue) < limit and not self._closed:
                    ready_at = self._ready_at()
                    if ready_at is not None:
                        until = min(until, ready_at)
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._queue:  # close(drain=False) may have emptied it meanwhile
                    break
            batch = [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]
            self._report("set_queue_depth", len(self._queue))
        return batch

    def _dispatch(self, batch: list[_Request]) -> None:
        """Drop expired and cancelled requests, hand the rest to the pipeline; they are
        answered by ``_deliver`` when it is done."""
        now = time.monotonic()
        live: list[_Request] = []
        expired = cancelled = 0
        for r in batch:
            if not r.future.set_running_or_notify_cancel():
                cancelled += 1  # the caller gave up (client cancel, deadline, shutdown)
            elif r.deadline is not None and r.deadline <= now:
                expired += 1
                r.future.set_exception(
                    DeadlineExceededError("the deadline passed while the input was queued")
                )
            else:
                live.append(r)
        with self._cond:
            self._count(expired=expired, cancelled=cancelled)
        if not live:
            return
        with self._slots:
            self._in_flight += 1
            self._clock.handed_over(len(live), now)
            with self._cond:
                self._counts["peak_in_flight"] = max(
                    self._counts["peak_in_flight"], self._in_flight
                )
        try:
            # Padded to the pipeline's min_rows only when batching: then an input's answer
            # is the same whether it shares its batch or not.
            results = self.pipeline.run_async([r.array for r in live], pad=self.batching)
        except BaseException:
            self._release_slot(None)
            raise
        results.add_done_callback(lambda f: self._deliver(live, now, f))

    def _deliver(self, live: list[_Request], started: float, done: Future[list[Result]]) -> None:
        """Answer a computed batch's callers (or fail them with its error), then record."""
        # The pipeline is done with this batch: let the next one go before answering.
        try:
            results = done.result()
        except BaseException as exc:
            self._release_slot(None)
            log.error("batch of %d failed: %s", len(live), exc)
            _fail(live, exc)
            return
        timings = results[0].timings if results else {}
        self._release_slot(sum(timings.get(stage, 0.0) for stage in COMPUTE_STAGES))
        try:
            with self._cond:
                self._count(scored=len(live), batches=1)
                self._counts["largest_batch"] = max(self._counts["largest_batch"], len(live))
            for r, result in zip(live, results, strict=True):  # answer first, then record
                timings = {**result.timings, "queue": started - r.submitted}
                r.future.set_result(dataclasses.replace(result, timings=timings))
            self._report("observe_batch", len(live))
            for stage in COMPUTE_STAGES:
                if stage in results[0].timings:
                    self._report("observe_stage", stage, results[0].timings[stage])
            for r in live:
                self._report("observe_stage", "queue", started - r.submitted)
        except BaseException as exc:  # never leave a caller waiting forever
            log.exception("answering a batch of %d failed", len(live))
            _fail(live, exc)

    def _release_slot(self, compute_seconds: float | None) -> None:
        """One batch is back (``compute_seconds``: what it took; None when it failed)."""
        with self._slots:
            self._in_flight -= 1
            self._clock.answered(time.monotonic(), compute_seconds)
            self._slots.notify_all()
        with self._cond:  # a batch waiting for company may leave now the pipeline is idle
            self._cond.notify_all()

    def _count(self, **increments: int) -> None:
        """Add to the stats counters (caller holds the lock)."""
        for name, n in increments.items():
            self._counts[name] += n

    def _report(self, method: str, *args: Any) -> None:
        """Call ``metrics.<method>(*args)``; a failing metrics sink never stops scoring."""
        if self.metrics is None:
            return
        try:
            getattr(self.metrics, method)(*args)
        except Exception:
            log.exception("metrics.%s failed", method)


def _fail(requests: Sequence[_Request], exc: BaseException) -> None:
    """End every request not yet answered with ``exc``: no caller is left waiting."""
    for r in requests:
        if not r.future.done():
            r.future.set_exception(exc)
