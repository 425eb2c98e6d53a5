"""Cost of per-sample gradient features on a ResNet-18 at 3×32×32, measured side by side.

Compares, at batch 16 and 64 on this machine's CPU:
  forward      one batched forward pass (no grad) — the unit of every ratio
  fwd+bwd      one batched forward + backward of the confounding loss (writes .grad)
  probe        gradsentry's GradientProbe.features (hooks, one backward, per-layer rules)
  vmap         pytorch-ood's GradUncertainty, its torch.func.vmap path
  loop         one forward + backward per sample
after checking all three feature paths agree. Peak memory of each path at batch 64 is
measured in a fresh subprocess (peak RSS growth over the loaded model).

    python benchmarks/probe_cost.py [--repeats 7] [--threads N] [--clock wall|cpu]
                                    [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.resnet import trained_like_resnet18
from detectors import GradientProbe
from detectors.losses import get_loss


def load_grad_uncertainty() -> type:
    """pytorch-ood's GradUncertainty without running the package __init__ (it imports
    torchvision, which has no CPU build beside this torch)."""
    loaded = sys.modules.get("pytorch_ood.detector.graduncertainty")
    if loaded is not None:
        return loaded.GradUncertainty
    spec = importlib.util.find_spec("pytorch_ood")
    if spec is None or spec.origin is None:
        raise SystemExit("pytorch-ood is not installed: pip install --no-deps pytorch-ood==0.4.0")
    root = Path(spec.origin).parent
    for name, path in [("pytorch_ood", root), ("pytorch_ood.detector", root / "detector")]:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(path)]
        sys.modules.setdefault(name, pkg)
    return importlib.import_module("pytorch_ood.detector.graduncertainty").GradUncertainty


def loop_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, L] one sample at a time with torch.autograd.grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = get_loss("all_ones")
    rows = []
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(loss(model(x[i : i + 1])).sum(), params)
        rows.append(torch.stack([g.pow(2).sum() for g in grads]))
    return torch.stack(rows)


def forward_backward(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    get_loss("all_ones")(model(x)).sum().backward()
    model.zero_grad(set_to_none=True)


def paths(model: torch.nn.Module) -> dict[str, Callable[[torch.Tensor], object]]:
    probe = GradientProbe(model)
    vmap_detector = load_grad_uncertainty()(model)

    def forward(x: torch.Tensor) -> object:
        with torch.no_grad():
            return model(x)

    return {
        "forward": forward,
        "fwd+bwd": lambda x: forward_backward(model, x),
        "probe": probe.features,
        "vmap": vmap_detector._predict_batched,
        "loop": lambda x: loop_features(model, x),
    }


def check_agreement(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Largest relative difference between the three feature paths (probe rows vs loop rows,
    probe row sums vs pytorch-ood's negated sums)."""
    run = paths(model)
    _, probe = run["probe"](x)
    loop = run["loop"](x)
    vmap_sum = -run["vmap"](x)
    rel_loop = ((probe - loop).abs() / loop.abs().clamp_min(1e-12)).max().item()
    rel_vmap = ((probe.sum(1) - vmap_sum).abs() / vmap_sum.abs()).max().item()
    return max(rel_loop, rel_vmap)


CLOCKS: dict[str, Callable[[], float]] = {
    # Wall time: what a caller waits. CPU time of the whole process (all threads): the work a
    # call costs, which other load on a shared machine barely changes.
    "wall": time.perf_counter,
    "cpu": time.process_time,
}


def time_paths(
    model: torch.nn.Module, batch: int, repeats: int, clock: str = "wall"
) -> dict[str, float]:
    """Median seconds per call, paths interleaved round-robin so machine noise hits all alike."""
    now = CLOCKS[clock]
    run = paths(model)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    for fn in run.values():  # warm-up
        fn(x)
    samples: dict[str, list[float]] = {k: [] for k in run}
    for _ in range(repeats):
        for name, fn in run.items():
            t0 = now()
            fn(x)
            samples[name].append(now() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def peak_memory_worker(path: str, batch: int) -> None:
    """Child process: print the peak RSS growth (bytes) during one call of ``path``,
    sampled every millisecond (a high-water mark reached before the call cannot hide it)."""
    model = trained_like_resnet18()
    run = paths(model)
    x = torch.rand(batch, 3, 32, 32)
    run["forward"](x[:1])  # load kernels before the baseline reading
    base = _rss_bytes()
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run[path](x)
    finally:
        done.set()
        sampler.join()
    print(max(peak, _rss_bytes()) - base)


def peak_memory(path: str, batch: int) -> int:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-worker", path, "--batch", str(batch)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--json", type=Path, help="also write the measurements as JSON")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall seconds, or CPU seconds of all threads (robust on a busy machine)",
    )
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        peak_memory_worker(args.memory_worker, args.batch)
        return

    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = trained_like_resnet18()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, ResNet-18 at 3×32×32, "
        f"{args.clock} clock"
    )
    err = check_agreement(model, torch.rand(8, 3, 32, 32))
    print(f"agreement: probe vs loop vs pytorch-ood vmap, max relative difference {err:.1e}")
    if err > 1e-4:
        raise SystemExit("feature paths disagree; timings would be meaningless")
    result: dict[str, object] = {"agreement_max_rel": err, "timing": {}, "memory": {}}
    for batch in args.batches:
        t = time_paths(model, batch, args.repeats, args.clock)
        result["timing"][batch] = t  # type: ignore[index]
        print(f"\nbatch {batch}: median of {args.repeats}, ratio to one forward pass")
        for name, sec in t.items():
            print(f"  {name:<8} {sec * 1e3:8.1f} ms  {sec / t['forward']:5.2f}×")
        print(
            f"  probe is {t['vmap'] / t['probe']:.2f}× faster than vmap, "
            f"{t['loop'] / t['probe']:.2f}× faster than the loop"
        )
    mem_batch = max(args.batches)
    mem = {name: peak_memory(name, mem_batch) for name in ("fwd+bwd", "probe", "vmap", "loop")}
    result["memory"] = mem
    print(f"\npeak memory growth at batch {mem_batch} (fresh process each)")
    for name, b in mem.items():
        print(f"  {name:<8} {b / 2**20:8.1f} MiB  {b / mem['fwd+bwd']:5.2f}× fwd+bwd")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
