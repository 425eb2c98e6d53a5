"""The data plane: what every transport asks of the server, in the transport's own words.

A transport translates a call into ``DataPlane`` steps and the answer back:

1. ``admit()``: refused (NotReadyError) until the model has warmed up; budgets, auth and
   the drain come before (``service.dataplane.admission``, ``service.dataplane.auth``).
2. ``check_count(n)``: a call's input count against the queue, before any decoding.
3. ``decode(items, decode_one)``: each input of the call -> arrays [N, C, H, W] of the
   model's spec (``service.dataplane.codec``): small ones on the event loop, images and
   large tensors in a bounded pool, within ``decode_budget_seconds``; the "decode" stage
   is recorded per input.
4. ``score(arrays, timeout)``: queued on the batcher all or none, with the call's deadline,
   and awaited; when the call ends early its inputs still queued are cancelled.
5. ``record(results)``: verdict metrics per scored input.

``info()`` is the model's metadata (input spec, labels, features, detector facts), which
every transport describes in its own terms; ``close()`` stops the decode pool, the batcher
and the pipeline (after the transports have drained).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from service.dataplane.admission import Admission
from service.dataplane.codec import CodecError
from service.dataplane.deadline import deadline_of, wait_results
from service.engine.batcher import Batcher
from service.engine.pipeline import BasePipeline, Result
from service.errors import ClientError, NotReadyError
from service.metrics import Metrics
from service.spec import InputSpec

# A call whose tensors hold at most this many bytes is decoded on the event loop: a few
# copies and comparisons, ~1 ms for the whole amount; sending it to the decode pool would
# cost two thread switches per call.
INLINE_TENSOR_BYTES = 256 * 1024

T = TypeVar("T")


@dataclass(frozen=True)
class ModelInfo:
    """What a client may ask about the served model and detector."""

    name: str
    spec: InputSpec
    labels: list[str]
    feature_names: list[str]
    threshold: float
    target_fpr: float
    kinds: list[str]
    model_fingerprint: str
    max_batch_size: int
    versions: dict[str, str] = field(default_factory=dict)


class DataPlane:
    """Admission, decoding, scoring and verdict metrics for one pipeline and its batcher."""

    def __init__(
        self,
        pipeline: BasePipeline,
        batcher: Batcher,
        admission: Admission,
        metrics: Metrics | None = None,
        decode_workers: int = 2,
        decode_budget_seconds: float = 2.0,
        model_name: str = "gradsentry",
    ) -> None:
        self.pipeline = pipeline
        self.batcher = batcher
        self.admission = admission
        self.metrics = metrics
        self.model_name = model_name
        self.ready = threading.Event()  # set once the model has warmed up
        # Images (and large tensors) are decoded here, off the event loop, so that one
        # expensive call cannot stall every other call and health check.
        self.decoder = ThreadPoolExecutor(decode_workers, thread_name_prefix="decode")
        self.decode_budget_seconds = decode_budget_seconds
        self._info: ModelInfo | None = None
        self.num_classes = 0  # the model's output size, known once it has warmed up

    @property
    def spec(self) -> InputSpec:
        return self.pipeline.spec

    @property
    def serving(self) -> bool:
        """Ready for scoring: warmed up and not draining."""
        return self.ready.is_set() and not self.admission.draining

    def admit(self) -> None:
        """Refuse work until the model has warmed up."""
        if not self.ready.is_set():
            raise NotReadyError("the model is still loading; retry when health is SERVING")

    def check_count(self, n: int) -> None:
        """A call's input count: at most what the queue holds (checked before decoding)."""
        if n > self.batcher.queue_size:
            raise ClientError(
                f"{n} inputs in one call; this server queues at most "
                f"{self.batcher.queue_size} at a time: split the call"
            )

    async def decode(
        self,
        items: Sequence[T],
        decode_one: Callable[[T], np.ndarray],
        nbytes: int,
        inline: bool = True,
        where: str | None = None,
        offset: int = 0,
    ) -> tuple[list[np.ndarray], list[float]]:
        """Each item -> array [N, C, H, W] (``decode_one``) and its decode seconds: on the
        event loop when ``inline`` and the call's tensors hold at most INLINE_TENSOR_BYTES
        (``nbytes``), else in the decode pool within ``decode_budget_seconds``."""
        if inline and nbytes <= INLINE_TENSOR_BYTES:
            return self.decode_now(items, decode_one, where, offset)
        deadline = time.perf_counter() + self.decode_budget_seconds
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.decoder, self.decode_now, items, decode_one, where, offset, deadline
        )

    def decode_now(
        self,
        items: Sequence[T],
        decode_one: Callable[[T], np.ndarray],
        where: str | None = None,
        offset: int = 0,
        deadline: float | None = None,
    ) -> tuple[list[np.ndarray], list[float]]:
        """Decode in this thread; a CodecError names ``where`` and the item's index
        (``offset`` + position) when ``where`` is given; past ``deadline`` (a
        ``time.perf_counter()`` value) the call is refused."""
        arrays: list[np.ndarray] = []
        decode_times: list[float] = []
        for i, item in enumerate(items):
            t0 = time.perf_counter()
            if deadline is not None and t0 > deadline:
                raise ClientError(
                    f"decoding this call's inputs took more than {self.decode_budget_seconds:g} "
                    f"s (the server's decode_budget_seconds) after {i} of {len(items)}: "
                    "send fewer or smaller inputs per call"
                )
            try:
                arrays.append(decode_one(item))
            except CodecError as exc:
                if where is None:
                    raise
                raise CodecError(f"{where} {offset + i}: {exc}") from None
            decode_times.append(time.perf_counter() - t0)
        if self.metrics is not None:
            for dt in decode_times:
                self.metrics.observe_stage("decode", dt)
        return arrays, decode_times

    def submit(self, rows: Sequence[np.ndarray], timeout: float | None) -> list[Future[Result]]:
        """Queue inputs [1, C, H, W] all or none, dropped unscored ``timeout`` seconds from
        now (None: no deadline)."""
        return self.batcher.submit_many(rows, deadline_of(timeout))

    async def score(self, rows: Sequence[np.ndarray], timeout: float | None) -> list[Result]:
        """Queue inputs [1, C, H, W] (the batcher may group them with other calls' inputs)
        and wait for their results within ``timeout``; verdict metrics are recorded."""
        results = await wait_results(self.submit(rows, timeout), timeout)
        self.record(results)
        return results

    def record(self, results: Sequence[Result]) -> None:
        """Verdict metrics of scored inputs (batch metrics are the batcher's)."""
        if self.metrics is not None:
            for r in results:
                self.metrics.observe_result(r.kind, r.flagged, r.score)

    def info(self) -> ModelInfo:
        """The model's metadata (``versions`` includes the server's packages); read once."""
        if self._info is None:
            self._info = self._read_info()
        return self._info

    def _read_info(self) -> ModelInfo:
        manifest = self.pipeline.manifest
        versions = {str(k): str(v) for k, v in manifest.get("versions", {}).items()}
        for dist in ("gradsentry", "grpcio"):
            try:
                versions[f"server.{dist}"] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                versions[f"server.{dist}"] = "unknown"
        return ModelInfo(
            name=self.model_name,
            spec=self.spec,
            labels=list(self.spec.labels),
            feature_names=self.pipeline.feature_names,
            threshold=float(manifest["threshold"]),
            target_fpr=float(manifest["target_fpr"]),
            kinds=self.pipeline.kinds,
            model_fingerprint=str(manifest["model_fingerprint"]),
            max_batch_size=self.pipeline.max_batch_size,
            versions=versions,
        )

    def close(self) -> None:
        """Stop the decode pool, answer what is queued, stop the pipeline (its worker)."""
        self.decoder.shutdown(wait=False, cancel_futures=True)
        self.batcher.close(drain=True)
        self.pipeline.close()
