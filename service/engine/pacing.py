"""When the model will be free: so that a batch can leave just in time, not once it idles.

With two batches in flight (a model worker process), the next batch should already be at
the worker when the current one finishes, yet gather company for as long as it can. The
batcher cannot see the worker; ``PipelineClock`` predicts it from what it can see: the
batches handed over and not yet answered, in order, and how long batches of each size
took (``ComputeEstimate``). When an answer arrives, the next batch in flight has just
started; when none is left, the pipeline is idle.
"""

from __future__ import annotations

import collections
import threading


class ComputeEstimate:
    """Seconds a batch of n inputs takes, a + b·n, fitted by least squares over the batches
    seen with weights that decay by ``decay`` per batch (recent ones count most)."""

    def __init__(self, decay: float = 0.95) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self._w = self._n = self._t = self._nn = self._nt = 0.0

    def observe(self, n: int, seconds: float) -> None:
        """One batch of ``n`` inputs took ``seconds`` of compute."""
        if n < 1 or not seconds >= 0:
            return
        d = self.decay
        self._w = d * self._w + 1.0
        self._n = d * self._n + n
        self._t = d * self._t + seconds
        self._nn = d * self._nn + n * n
        self._nt = d * self._nt + n * seconds

    def seconds(self, n: int) -> float | None:
        """The predicted compute seconds of a batch of ``n`` (None before any batch)."""
        if self._w == 0:
            return None
        mean_n, mean_t = self._n / self._w, self._t / self._w
        var = self._nn / self._w - mean_n * mean_n
        if var <= 1e-9 * max(mean_n * mean_n, 1.0):  # one size seen so far: proportional
            return mean_t * n / mean_n
        slope = max((self._nt / self._w - mean_n * mean_t) / var, 0.0)
        return max(mean_t + slope * (n - mean_n), 0.0)


class PipelineClock:
    """The batches with the pipeline (their sizes, oldest first) and when all of them
    should be done. Thread-safe: batches are handed over and answered on different
    threads."""

    def __init__(self, estimate: ComputeEstimate | None = None) -> None:
        self.estimate = estimate if estimate is not None else ComputeEstimate()
        self._lock = threading.Lock()
        self._sizes: collections.deque[int] = collections.deque()
        self._free_at: float | None = None

    def handed_over(self, n: int, now: float) -> None:
        """A batch of ``n`` inputs went to the pipeline at ``now`` (time.monotonic())."""
        with self._lock:
            self._sizes.append(n)
            cost = self.estimate.seconds(n)
            if cost is None:
                self._free_at = None  # nothing to predict from yet
            elif len(self._sizes) == 1 or self._free_at is None:
                self._free_at = now + cost  # the pipeline was idle: it starts now
            else:
                self._free_at += cost  # it starts when those before it are done

    def answered(self, now: float, compute_seconds: float | None = None) -> None:
        """The oldest batch came back at ``now``; ``compute_seconds``: what it took (None
        when it failed). The next one in flight, if any, has just started."""
        with self._lock:
            if not self._sizes:
                return
            n = self._sizes.popleft()
            if compute_seconds is not None:
                self.estimate.observe(n, compute_seconds)
            costs = [self.estimate.seconds(m) for m in self._sizes]
            if not self._sizes or any(c is None for c in costs):
                self._free_at = None
            else:
                self._free_at = now + sum(c for c in costs if c is not None)

    def free_at(self) -> float | None:
        """When every batch in flight should be done (time.monotonic()); None when none is
        in flight or nothing is known yet."""
        with self._lock:
            return self._free_at if self._sizes else None
