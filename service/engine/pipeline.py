"""Transport-agnostic scoring: validated input arrays -> one Sentry batch -> per-input results.

The pipeline knows nothing about gRPC; the batcher hands it lists of arrays [1, C, H, W]
produced by ``service.dataplane.codec`` and gets plain ``Result`` objects back. An input is
of ``spec.dtype`` or uint8 pixels: a batch of pixels goes to the model's device as uint8
and is mapped there (``Pipeline.model_input``, ``codec.pixel_table``); a batch that mixes
both has its pixels mapped here first (``codec.to_model``), with the same values.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from detectors.verdicts import Verdicts
from service.dataplane.codec import pixel_table, to_model
from service.spec import InputSpec

if TYPE_CHECKING:  # the in-process Pipeline only; the gRPC process never imports torch
    import torch

    from detectors.sentry import Sentry

log = logging.getLogger(__name__)

# Calibration of min_rows: a random probe batch of max_batch_size rows is the reference
# (the largest batch the server runs: a kernel path taken only by larger batches is never
# met, and on CPUs whose kernels change between a few rows and 16, a larger reference left
# no candidate that matched it)...
# ...and these are the candidate minimum batch sizes, smallest first, below max_batch_size
# (which is the last candidate).
MIN_ROWS_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# "The same result": equal up to float64 noise of the statistics computed after the model.
_SAME_RTOL = 1e-9


class PipelineError(RuntimeError):
    """The model or detector cannot serve this spec (a server-side configuration problem)."""


@dataclass(frozen=True)
class Result:
    """The outcome for one input.

    probabilities and logits float32 [num_classes]; features float64 [num_features]; ``kind`` is the
    most likely challenge kind (None when the detector has no kinds); ``timings`` holds
    seconds for "queue" (waiting for the model: the batcher sets it from submit to batch
    start), "forward", "backward", "statistics" and "detector" (of the whole batch) and
    "batch_size".
    """

    predicted_class: int
    label: str
    probabilities: np.ndarray
    score: float
    flagged: bool
    threshold: float
    kind: str | None
    kind_scores: dict[str, float]
    features: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    logits: np.ndarray | None = None  # float32 [num_classes]


class BasePipeline:
    """Scores batches of validated inputs on one device; subclasses say where the model runs.

    A subclass implements ``_check(batch) -> Verdicts`` (called with ``_lock`` held: one
    batch at a time) and sets ``manifest`` (the detector bundle's manifest). Everything
    else — chunking, padding, calibration, warm-up, per-input Results — lives here, so the
    in-process ``Pipeline`` and the child-process ``service.engine.worker.ProcessPipeline`` answer
    alike.

    Batch invariance: BLAS and oneDNN kernels take other code paths (another float summation
    order) for batches of a few rows, so an input's logits differ in the last bits between a
    batch of 1 and a batch of 16, and features that cancel (the predicted-class gradient
    when the softmax is near one-hot) amplify that to ~1e-4 relative. ``calibrate`` finds
    ``min_rows``, the batch size from which results stop depending on it on this device,
    and ``run`` pads smaller batches up to it, so an input gets the same answer alone or
    batched with others.
    """

    manifest: dict[str, Any]

    def __init__(self, spec: InputSpec, device: torch.device | str, max_batch_size: int) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.spec = spec
        # A name ("cpu", "cuda:1"): the pipeline whose model runs in a worker process knows
        # its device without importing torch.
        self.device = str(device)
        self.max_batch_size = max_batch_size
        self.min_rows = 1  # set by calibrate()
        # On a GPU every batch is padded to max_batch_size: one shape, so one set of kernels
        # (cuDNN and cuBLAS pick algorithms by shape), and an input's answer cannot depend
        # on the batch it shares. Padding rows cost little there: the GPU is wide.
        self.fixed_batch = self.device.startswith("cuda")
        self._lock = threading.Lock()

    @property
    def threshold(self) -> float:
        """The detector's decision threshold on P(challenging)."""
        return float(self.manifest["threshold"])

    @property
    def feature_names(self) -> list[str]:
        """Names of the detector's feature columns, in order."""
        return [str(col["name"]) for col in self.manifest["feature_schema"]]

    @property
    def kinds(self) -> list[str]:
        """Challenge kinds the detector distinguishes."""
        return [str(k) for k in self.manifest["kinds"]]

    # How many batches the batcher may hand over before the first is answered: 1 when the
    # model computes in the caller's thread; more when it computes elsewhere, so that the
    # next batch is already waiting when the model finishes one.
    max_in_flight = 1

    def close(self) -> None:
        """Release what the pipeline holds (nothing here; a child process in subclasses)."""

    def run_async(self, inputs: Sequence[np.ndarray], pad: bool = True) -> Future[list[Result]]:
        """``run`` as a Future. Here it computes before returning; a pipeline whose model runs
        elsewhere returns as soon as the batch is on its way (see ``max_in_flight``)."""
        future: Future[list[Result]] = Future()
        try:
            future.set_result(self.run(inputs, pad))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def _check(self, batch: np.ndarray) -> Verdicts:
        """batch [B, C, H, W] -> Verdicts (caller holds the lock)."""
        raise NotImplementedError

    def run(self, inputs: Sequence[np.ndarray], pad: bool = True) -> list[Result]:
        """Score inputs, each [1, C, H, W] of ``spec.dtype``, in chunks of max_batch_size.
        With ``pad`` a chunk smaller than ``min_rows`` is padded with copies of its first
        input (their results dropped) so that results do not depend on the chunk's size."""
        results: list[Result] = []
        for start in range(0, len(inputs), self.max_batch_size):
            chunk = inputs[start : start + self.max_batch_size]
            results.extend(self._run_batch(chunk, self.min_rows if pad else 1))
        return results

    def calibrate(self, seed: int = 0) -> int:
        """Set and return ``min_rows``: the smallest candidate m such that a random probe
        input scored in batches of m, m + 1 and 2m + 1 rows (those not above
        max_batch_size) gets the features, probabilities and score it gets in a batch of
        max_batch_size rows. m = max_batch_size, one shape, always qualifies unless the
        kernels are not deterministic: then 1 (no padding) with a warning.

        With ``fixed_batch`` (a GPU) ``min_rows`` is max_batch_size, and calibration checks
        that a few rows padded to it get the answers they get in the full random batch; a
        warning when they do not (non-deterministic kernels: see ``cuda_numerics``)."""
        # Kernels are chosen by shape, not value: any generic finite input shows the paths.
        lo, hi = self.spec.value_range
        rows = self.max_batch_size
        rng = np.random.default_rng(seed)
        probe = rng.uniform(lo, hi, (rows, *self.spec.shape))
        probe = probe.astype(self.spec.dtype)
        with self._lock:
            ref = self._check(probe)
            if self.fixed_batch:
                self.min_rows = self.max_batch_size
                sizes = sorted({1, (rows + 1) // 2, rows})
                if all(
                    _same_rows(
                        self._check(padded_batch(list(probe[:k, None]), rows, self.spec)), ref, k
                    )
                    for k in sizes
                ):
                    return self.min_rows
                log.warning(
                    "results on %s differ beyond float rounding between two batches of %d rows "
                    "that share an input: its kernels are not deterministic (is cuda_numerics "
                    "'fast'?); batched answers may differ slightly from unbatched ones",
                    self.device,
                    rows,
                )
                return self.min_rows
            candidates = [m for m in MIN_ROWS_CANDIDATES if m < rows] + [rows]
            for m in candidates:
                sizes = sorted({k for k in (m, m + 1, 2 * m + 1) if k <= rows})
                if all(_same_rows(self._check(probe[:k]), ref, k) for k in sizes):
                    self.min_rows = m
                    return m
        log.warning(
            "results on %s depend on the batch size beyond float rounding for every batch "
            "size tried %s: batched answers may differ slightly from unbatched ones",
            self.device,
            candidates,
        )
        self.min_rows = 1
        return 1

    def warm_up(self) -> list[Result]:
        """Score a full batch of max_batch_size inputs at the bottom of the value range
        (first-call allocations at the largest shape the server will run, lazy
        initialisation, a GPU's kernel selection), check the labels match the model's number
        of classes and, when batches can hold several inputs, ``calibrate``. Returns the
        first input's result."""
        x = np.full(
            (self.max_batch_size, *self.spec.shape), self.spec.value_range[0], self.spec.dtype
        )
        with self._lock:
            verdicts = self._check(x)
        n_classes = verdicts.logits.shape[1]
        if self.spec.labels and len(self.spec.labels) != n_classes:
            raise PipelineError(
                f"{len(self.spec.labels)} labels are configured but the model has "
                f"{n_classes} classes"
            )
        if self.max_batch_size > 1:
            self.calibrate()
        return self._split(verdicts, n=1)

    def _run_batch(self, inputs: Sequence[np.ndarray], min_rows: int = 1) -> list[Result]:
        if not inputs:
            return []
        batch = padded_batch(inputs, min_rows, self.spec)
        t0 = time.perf_counter()
        with self._lock:
            waited = time.perf_counter() - t0
            verdicts = self._check(batch)
        return self._split(verdicts, queue_seconds=waited, n=len(inputs))

    def _split(self, v: Verdicts, queue_seconds: float = 0.0, n: int | None = None) -> list[Result]:
        """The first ``n`` rows of ``v`` (all when None) as Results."""
        kinds = v.kind
        labels = self.spec.labels
        n = len(v.score) if n is None else n
        timings = {
            **{k: float(t) for k, t in v.timings.items()},
            "queue": queue_seconds,
            "batch_size": float(n),
        }
        out: list[Result] = []
        for i in range(n):
            cls = int(v.predicted[i])
            out.append(
                Result(
                    predicted_class=cls,
                    label=labels[cls] if cls < len(labels) else "",
                    probabilities=v.probabilities[i],
                    score=float(v.score[i]),
                    flagged=bool(v.flagged[i]),
                    threshold=self.threshold,
                    kind=kinds[i],
                    kind_scores={k: float(s[i]) for k, s in v.kind_scores.items()},
                    features=v.features[i],
                    timings=timings,
                    logits=v.logits[i],
                )
            )
        return out


class Pipeline(BasePipeline):
    """The pipeline with its Sentry (model + detector) in this process."""

    def __init__(
        self, sentry: Sentry, spec: InputSpec, device: torch.device, max_batch_size: int
    ) -> None:
        super().__init__(spec, device, max_batch_size)
        self.sentry = sentry
        self.manifest = sentry.bundle.manifest
        self._staging: Any = None  # service.staging.Staging, made at the first batch
        self._pixels = DevicePixels(spec)

    def _check(self, batch: np.ndarray) -> Verdicts:
        from service.faults import check_in_pieces
        from service.staging import Staging

        if self._staging is None:  # a pinned buffer on a GPU, no copy on the CPU
            self._staging = Staging(self.device, self.max_batch_size)
        x = self._pixels(self._staging.to_device(batch))
        # Out of device memory: in halves, down to single inputs (service.faults).
        return check_in_pieces(self.sentry.check, x)


class DevicePixels:
    """``DevicePixels(spec)(x)``: x [B, C, H, W] on the model's device -> the model's
    input there: uint8 pixels mapped through ``codec.pixel_table`` (bit for bit
    ``codec.to_model``), floats as they are. On a GPU one gather; on the CPU ``to_model``
    itself (NumPy's lookup took 28 ms for 64x3x224x224 where torch's indexing took 80-140)."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self._tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if x.dtype != torch.uint8:
            return x
        if x.device.type == "cpu":
            return torch.from_numpy(to_model(x.numpy(), self.spec))
        return self.gather(x)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels x [B, C, H, W] -> the model's input, by torch ops on x's device."""
        import torch

        key = str(x.device)
        if key not in self._tables:
            table = torch.tensor(pixel_table(self.spec).reshape(-1), device=x.device)
            c = self.spec.channels
            offsets = torch.arange(0, 256 * c, 256, dtype=torch.int32, device=x.device)
            self._tables[key] = table, offsets.view(1, c, 1, 1)
        table, offsets = self._tables[key]
        # Entry c * 256 + level of the flattened [C, 256] table (an int32 index: a uint8
        # one would index as a mask).
        return table[x.to(torch.int32).add_(offsets)]


def padding(inputs: Sequence[np.ndarray], min_rows: int) -> list[np.ndarray]:
    """Inputs [1, C, H, W] each -> the rows of a batch of max(n, min_rows): the inputs, then
    copies of the first (their results are dropped). Not yet concatenated: the model worker
    writes them straight into its shared buffer."""
    return [*inputs, *[inputs[0]] * (min_rows - len(inputs))]


def one_dtype(parts: Sequence[np.ndarray], spec: InputSpec) -> list[np.ndarray]:
    """Parts of a batch (each [k, C, H, W]) in one dtype: as they are when they share one
    (all pixels, or all ``spec.dtype``), else with the pixels mapped (``codec.to_model``)."""
    if len({p.dtype for p in parts}) == 1:
        return list(parts)
    return [to_model(p, spec) for p in parts]


def padded_batch(inputs: Sequence[np.ndarray], min_rows: int, spec: InputSpec) -> np.ndarray:
    """Inputs [1, C, H, W] each -> one batch [max(n, min_rows), C, H, W] (``padding``) of
    one dtype (``one_dtype``)."""
    return np.concatenate(one_dtype(padding(inputs, min_rows), spec), axis=0)


def _same_rows(v: Verdicts, ref: Verdicts, k: int) -> bool:
    """Rows 0..k-1 of ``v`` equal those of ``ref`` up to float64 noise."""
    return bool(
        np.allclose(v.features[:k], ref.features[:k], rtol=_SAME_RTOL, atol=0)
        and np.allclose(v.probabilities[:k], ref.probabilities[:k], rtol=_SAME_RTOL, atol=0)
        and np.allclose(v.score[:k], ref.score[:k], rtol=_SAME_RTOL, atol=0)
    )
