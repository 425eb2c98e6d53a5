"""Cost of per-sample gradient features, measured side by side on one model.

Models (``--model``):
  resnet18-cifar     ResNet-18 at 3×32×32, BatchNorm statistics as training leaves them
                     (default; batches 16 and 64)
  efficientnet-lite0 the pretrained ImageNet EfficientNet-Lite0 at 3×224×224 (depthwise
                     convs, ReLU6, 'same'-padding Conv2d subclasses; batches 8 and 32)
  vit-s16            ViT-S/16 (DeiT-S size: 12 blocks, width 384, 6 heads) from
                     ``transformers`` with random weights at 3×224×224 (class token,
                     position embeddings, attention, Linear over 197 tokens; batches 8, 32)

Paths, timed interleaved round-robin so machine noise hits all alike:
  forward      one batched forward pass (no grad) — the unit of every ratio
  fwd+bwd      one batched forward + backward of the confounding loss (writes .grad) — the
               floor a per-sample method can hope for
  probe        gradsentry's GradientProbe.features (hooks, one backward, per-layer rules)
  vmap         pytorch-ood's GradUncertainty, its torch.func.vmap path (skipped where its
               B×P per-sample gradients would exceed --vmap-limit-mib)
  loop         one forward + backward per sample
after checking the feature paths agree. Peak memory of each path at the largest batch is
measured in a fresh subprocess (peak RSS growth over the loaded model).

``--clock cpu`` reads CPU seconds of the whole process (all threads), which other load on
a shared machine barely changes; it sets OMP_WAIT_POLICY=PASSIVE (unless set) so that
worker threads sleep instead of spinning between parallel regions — spinning would count
as CPU time and inflate whichever path has more serial Python between kernels.

    python benchmarks/probe_cost.py [--model NAME] [--batches 8 32] [--repeats 7]
                                    [--threads N] [--clock wall|cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

if "--clock=cpu" in sys.argv or ("--clock" in sys.argv and "cpu" in sys.argv):  # before torch
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.resnet import trained_like_resnet18
from detectors import GradientProbe
from detectors.losses import get_loss
from detectors.models import LogitsOf


def efficientnet_lite0() -> nn.Module:
    from detectors.examples.efficientnet import build_pretrained

    return build_pretrained()


def vit_s16() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=224,
        patch_size=16,
        num_labels=1000,
    )
    return LogitsOf(ViTForImageClassification(config)).eval()


# name -> (builder, input shape, default batches)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], list[int]]] = {
    "resnet18-cifar": (trained_like_resnet18, (3, 32, 32), [16, 64]),
    "efficientnet-lite0": (efficientnet_lite0, (3, 224, 224), [8, 32]),
    "vit-s16": (vit_s16, (3, 224, 224), [8, 32]),
}


def sample_input(shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    """[batch, *shape] in the range the models' normalised inputs take, about [-1, 1]."""
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(seed))
    return x * 2 - 1


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


def paths(
    model: torch.nn.Module, with_vmap: bool = True
) -> dict[str, Callable[[torch.Tensor], object]]:
    probe = GradientProbe(model)

    def forward(x: torch.Tensor) -> object:
        with torch.no_grad():
            return model(x)

    run: dict[str, Callable[[torch.Tensor], object]] = {
        "forward": forward,
        "fwd+bwd": lambda x: forward_backward(model, x),
        "probe": probe.features,
    }
    if with_vmap:
        run["vmap"] = load_grad_uncertainty()(model)._predict_batched
    run["loop"] = lambda x: loop_features(model, x)
    return run


def vmap_fits(model: torch.nn.Module, batch: int, limit_mib: float) -> bool:
    """Whether vmap's B×P per-sample gradients (float32) fit under ``limit_mib``."""
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return batch * params * 4 <= limit_mib * 2**20


def check_agreement(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Largest relative difference between the three feature paths (probe rows vs loop rows,
    probe row sums vs pytorch-ood's negated sums), all in float32."""
    run = paths(model)
    _, probe = run["probe"](x)
    loop = run["loop"](x)
    vmap_sum = -run["vmap"](x)
    # Features whose gradient is exactly zero in exact arithmetic (attention key biases:
    # softmax ignores a shift shared by all keys) hold rounding noise on both sides; they
    # are compared relative to their sample's largest feature instead.
    scale = torch.maximum(loop.abs(), loop.abs().amax(1, keepdim=True) * 1e-10)
    rel_loop = ((probe - loop).abs() / scale).max().item()
    rel_vmap = ((probe.sum(1) - vmap_sum).abs() / vmap_sum.abs()).max().item()
    return max(rel_loop, rel_vmap)


CLOCKS: dict[str, Callable[[], float]] = {
    # Wall time: what a caller waits. CPU time of the whole process (all threads): the work a
    # call costs, which other load on a shared machine barely changes.
    "wall": time.perf_counter,
    "cpu": time.process_time,
}


def time_paths(
    model: torch.nn.Module,
    shape: tuple[int, ...],
    batch: int,
    repeats: int,
    clock: str = "wall",
    with_vmap: bool = True,
) -> dict[str, list[float]]:
    """Seconds per call of each path, one sample per round; paths interleaved round-robin
    so machine noise hits all alike."""
    now = CLOCKS[clock]
    run = paths(model, with_vmap)
    x = sample_input(shape, batch, seed=batch)
    for fn in run.values():  # warm-up
        fn(x)
    samples: dict[str, list[float]] = {k: [] for k in run}
    for _ in range(repeats):
        for name, fn in run.items():
            t0 = now()
            fn(x)
            samples[name].append(now() - t0)
    return samples


def round_ratios(samples: dict[str, list[float]], num: str, den: str) -> list[float]:
    """num/den within each round (both measured seconds apart)."""
    return [a / b for a, b in zip(samples[num], samples[den], strict=True)]


def spread(values: list[float]) -> str:
    """'median (min–max)'."""
    return f"{statistics.median(values):.2f}× ({min(values):.2f}–{max(values):.2f})"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def peak_memory_worker(model_name: str, path: str, batch: int) -> None:
    """Child process: print the peak RSS growth (bytes) during one call of ``path``,
    sampled every millisecond (a high-water mark reached before the call cannot hide it)."""
    build, shape, _ = MODELS[model_name]
    model = build()
    run = paths(model, with_vmap=path == "vmap")
    x = sample_input(shape, batch, seed=batch)
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


def peak_memory(model_name: str, path: str, batch: int, threads: int | None) -> int:
    extra = ["--threads", str(threads)] if threads else []
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--model",
            model_name,
            "--memory-worker",
            path,
            "--batch",
            str(batch),
            *extra,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet18-cifar")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, nargs="+", help="default: the model's")
    parser.add_argument("--json", type=Path, help="also write the measurements as JSON")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall seconds, or CPU seconds of all threads (robust on a busy machine)",
    )
    parser.add_argument(
        "--vmap-limit-mib",
        type=float,
        default=1024,
        help="skip vmap where its per-sample gradients would need more (default 1024)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        peak_memory_worker(args.model, args.memory_worker, args.batch)
        return

    build, shape, default_batches = MODELS[args.model]
    batches = args.batches or default_batches
    torch.manual_seed(0)
    model = build()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model} at "
        f"{'×'.join(map(str, shape))}, {args.clock} clock, {args.repeats} interleaved rounds"
    )
    err = check_agreement(model, sample_input(shape, 4, seed=0))
    print(f"agreement: probe vs loop vs pytorch-ood vmap, max relative difference {err:.1e}")
    # float32 on both sides: a deep network's batched and one-sample kernels round
    # differently (1e-5 typical); 1e-3 would be a bug, not rounding.
    if err > 1e-3:
        raise SystemExit("feature paths disagree; timings would be meaningless")
    result: dict[str, object] = {
        "model": args.model,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "agreement_max_rel": err,
        "timing": {},
        "memory": {},
    }
    for batch in batches:
        with_vmap = vmap_fits(model, batch, args.vmap_limit_mib)
        t = time_paths(model, shape, batch, args.repeats, args.clock, with_vmap)
        result["timing"][batch] = t  # type: ignore[index]
        med = {k: statistics.median(v) for k, v in t.items()}
        print(f"\nbatch {batch}: median seconds, ratio to one forward pass")
        for name, sec in med.items():
            print(f"  {name:<8} {sec * 1e3:9.1f} ms  {sec / med['forward']:6.2f}×")
        if not with_vmap:
            print(f"  vmap     skipped: its per-sample gradients need > {args.vmap_limit_mib} MiB")
        print("  ratios within each round, median (min–max):")
        print(f"    probe / forward          {spread(round_ratios(t, 'probe', 'forward'))}")
        print(f"    probe / (forward+bwd)    {spread(round_ratios(t, 'probe', 'fwd+bwd'))}")
        print(f"    loop / probe             {spread(round_ratios(t, 'loop', 'probe'))}")
        print(f"    loop / (forward+bwd)     {spread(round_ratios(t, 'loop', 'fwd+bwd'))}")
        if with_vmap:
            print(f"    vmap / probe             {spread(round_ratios(t, 'vmap', 'probe'))}")
    if args.no_memory:
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return
    mem_batch = max(batches)
    names = ["fwd+bwd", "probe", "loop"]
    if vmap_fits(model, mem_batch, args.vmap_limit_mib):
        names.insert(2, "vmap")
    mem = {name: peak_memory(args.model, name, mem_batch, args.threads) for name in names}
    result["memory"] = mem
    print(f"\npeak memory growth at batch {mem_batch} (fresh process each)")
    for name, b in mem.items():
        print(f"  {name:<8} {b / 2**20:8.1f} MiB  {b / mem['fwd+bwd']:5.2f}× fwd+bwd")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
