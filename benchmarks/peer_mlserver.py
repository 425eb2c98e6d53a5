"""gradsentry beside a current peer: MLServer serving the same demo model, forward only, under
the same Open Inference Protocol (OIP) load over gRPC.

    python benchmarks/peer_mlserver.py [--clients 16] [--duration 20] [--rounds 3]
                                       [--tree DIR] [--peer-venv DIR] [--json FILE]

- **MLServer** (Seldon, Apache-2.0), pinned in ``PEER_REQUIREMENTS``, runs from a virtual
  environment of its own (``--peer-venv``, default ``$XDG_CACHE_HOME/gradsentry/peer-mlserver``;
  created and installed on first use: MLServer pins gRPC and protobuf versions of its own,
  which must not enter the project's environment). It serves the demo's weights through
  ``benchmarks/peer/mlserver_model.py`` (the demo CNN's forward pass and a softmax, one torch
  thread) in one inference worker process, with MLServer's adaptive batching (``max_batch_size``
  / ``max_batch_time`` = ``--max-batch-size`` / ``--max-delay-ms``).
- **gradsentry**: ``gradsentry serve`` on the bundled demo (same weights; forward, confounding
  backward, features, H), from the source tree ``--tree`` (default: this one), one torch
  thread in its model worker process, the same batching settings. Its OIP model is
  ``--gradsentry-model`` (the server's ``model_name``). ``--server-nice`` sets how far its
  gRPC process yields to its model worker (``server_nice``, 10 by default; MLServer's
  processes all run at one priority: 0 puts both level against other work on the machine).

Both are driven, one after the other and never at once, by ``benchmarks/peer/oip_load.py``:
``tritonclient`` gRPC clients that know only the OIP (ModelMetadata, then raw-tensor
ModelInfer calls), ``--clients`` at once, each its own channel. Printed per run: requests/s,
p50/p99 latency, errors, the server processes' CPU (cores); then the ratio gradsentry /
MLServer of the median requests/s with the spread over rounds, each server's CPU seconds per
call (all its processes, over the whole drive: the figure that holds best on a machine
other work shares, where requests/s follow whatever CPU is left), and where gradsentry's time
goes per input: the model worker's forward, probe (confounding backward + statistics) and
detector (from its stage metrics, per input of the batches it ran), and the gRPC process's
CPU per input (transport: gRPC, protobuf, decoding, batching, the hand-off to the worker).

If ``--tree`` does not serve the OIP (``inference.GRPCInferenceService``), only MLServer's
figures are printed, with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, replace
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.load import (  # noqa: E402
    START_TIMEOUT,
    Outcome,
    add_load_arguments,
    check_load_arguments,
    free_port,
    measure,
    process_cpu,
)
from detectors.demo import ARTIFACTS  # noqa: E402

# The peer environment: MLServer, the OIP client, and torch's CPU build (from local disk
# here). uvloop 0.22+ raises in asyncio.get_event_loop(), which MLServer 1.7.1's inference
# workers call at start: 0.21 is the last release they run with.
PEER_REQUIREMENTS = (
    "mlserver==1.7.1",
    "tritonclient[grpc]==2.73.0",
    "uvloop==0.21.0",
    "torch==2.13.0",
)
PEER = ROOT / "benchmarks" / "peer"
SAMPLES = ARTIFACTS / "samples.npz"
MLSERVER, GRADSENTRY = "mlserver", "gradsentry"
PEER_MODEL = "mnist"
# Per-batch compute stages of gradsentry's stage metric, grouped as reported.
STAGE_GROUPS = {
    "forward": ("forward",),
    "probe": ("backward", "statistics"),
    "detector": ("detector",),
}


def default_peer_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "gradsentry" / "peer-mlserver"


def ensure_peer_venv(venv: Path) -> Path:
    """The peer environment's python, creating and installing it when missing or when its
    requirements changed (a stamp file records what was installed)."""
    python = venv / "bin" / "python"
    stamp = venv / "gradsentry-requirements.txt"
    wanted = "\n".join(PEER_REQUIREMENTS) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"peer environment: installing {' '.join(PEER_REQUIREMENTS)} into {venv}", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS], check=True)
    stamp.write_text(wanted)
    return python


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM to the process group the server leads (MLServer's workers included), then its
    exit code; SIGKILL to the group if it does not end in time."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(10)


def start_mlserver(
    python: Path, args: argparse.Namespace, workdir: Path
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``mlserver start`` on the demo model; (process, gRPC port, HTTP port, log)."""
    root = Path(tempfile.mkdtemp(prefix="mlserver-", dir=workdir))
    (root / PEER_MODEL).mkdir()
    grpc_port, http_port = free_port(), free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "parallel_workers": 1,  # one inference process, as gradsentry's one model worker
        "load_models_at_startup": True,
    }
    model = {
        "name": PEER_MODEL,
        "implementation": "mlserver_model.DemoClassifier",
        "max_batch_size": args.max_batch_size,
        "max_batch_time": args.max_delay_ms / 1e3,
        "parameters": {"uri": str(ARTIFACTS / "model.pt")},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }
    (root / "settings.json").write_text(json.dumps(settings))
    (root / PEER_MODEL / "model-settings.json").write_text(json.dumps(model))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{PEER}{os.pathsep}{ROOT}"}
    log = root / "mlserver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(python.parent / "mlserver"), "start", str(root)],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, grpc_port, http_port, log


def start_gradsentry(
    tree: Path, args: argparse.Namespace, workdir: Path
) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    """``gradsentry serve`` from ``tree`` on the demo; (process, gRPC port, metrics port, log)."""
    port, metrics_port = free_port(), free_port()
    config = {
        "host": "127.0.0.1",
        "port": port,
        "metrics_port": metrics_port,
        "device": "cpu",
        "max_batch_size": args.max_batch_size,
        "max_delay_ms": args.max_delay_ms,
        "max_workers": max(64, 4 * args.clients),
        "queue_size": max(256, 4 * args.clients),
        "server_nice": args.server_nice,
    }
    path = workdir / f"gradsentry-{port}.json"
    path.write_text(json.dumps(config))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADSENTRY_")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)})
    log = workdir / f"gradsentry-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--config", str(path)],
            cwd=tree,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, port, metrics_port, log


def drive(python: Path, target: str, model: str, args: argparse.Namespace) -> Outcome:
    """One run of the OIP load generator (in the peer environment) against ``target``."""
    cmd = [
        str(python),
        str(PEER / "oip_load.py"),
        f"--target={target}",
        f"--model={model}",
        f"--samples={SAMPLES}",
        f"--clients={args.clients}",
        f"--warmup={args.warmup}",
        f"--duration={args.duration}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    timeout = START_TIMEOUT + args.warmup + args.duration + 60
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    nan = float("nan")
    return Outcome(
        mode="", clients=args.clients, seconds=args.duration, requests=r["requests"],
        errors=r["errors"], requests_per_second=r["requests_per_second"], p50_ms=r["p50_ms"],
        p99_ms=r["p99_ms"], mean_batch_size=nan, server_cpu_cores=nan, machine_cpu_cores=nan,
        error_codes=r["error_codes"], calls_made=r["calls_made"],
    )  # fmt: skip


def scrape(metrics_port: int) -> dict[str, float]:
    """gradsentry's batch-size sum and count, and each stage's seconds (sum) and count."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if family.name == "gradsentry_batch_size" and s.name.endswith(("_sum", "_count")):
                found[s.name.rsplit("_", 1)[1] + ":batch"] = s.value
            elif family.name == "gradsentry_stage_duration_seconds" and "stage" in s.labels:
                if s.name.endswith(("_sum", "_count")):
                    found[f"{s.name.rsplit('_', 1)[1]}:{s.labels['stage']}"] = s.value
    return found


def own_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` alone (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_started(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"server exited:\n{log.read_text(errors='replace')[-3000:]}")


def run_mlserver(
    python: Path, args: argparse.Namespace, workdir: Path
) -> tuple[Outcome, dict[str, float]]:
    """The outcome and MLServer's CPU per call in ms (its processes, the whole drive)."""
    proc, port, http_port, log = start_mlserver(python, args, workdir)
    try:
        url = f"http://127.0.0.1:{http_port}/v2/models/{PEER_MODEL}/ready"
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # loaded before the clock starts, as gradsentry's warm-up
            wait_started(proc, log)
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("MLServer's model did not get ready")
            time.sleep(0.2)
        cpu0 = process_cpu(proc.pid)
        outcome = measure(
            MLSERVER, proc.pid, lambda: drive(python, f"127.0.0.1:{port}", PEER_MODEL, args)
        )
        cpu1 = process_cpu(proc.pid)
    finally:
        stop(proc)
    return outcome, {"server CPU per call": 1e3 * (cpu1 - cpu0) / max(outcome.calls_made, 1)}


def run_gradsentry(
    python: Path, args: argparse.Namespace, workdir: Path
) -> tuple[Outcome, dict[str, float]]:
    """The outcome and gradsentry's cost per input in ms (see the module docstring)."""
    proc, port, metrics_port, log = start_gradsentry(args.tree, args, workdir)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "gradsentry serving" not in log.read_text(errors="replace"):
            wait_started(proc, log)
            if time.monotonic() > deadline:
                raise RuntimeError("gradsentry did not start")
            time.sleep(0.2)
        before, own0, tree0 = scrape(metrics_port), own_cpu(proc.pid), process_cpu(proc.pid)
        outcome = measure(
            GRADSENTRY,
            proc.pid,
            lambda: drive(python, f"127.0.0.1:{port}", args.gradsentry_model, args),
        )
        after, own1, tree1 = scrape(metrics_port), own_cpu(proc.pid), process_cpu(proc.pid)
    finally:
        code = stop(proc)
    if code != 0:
        print(f"warning: gradsentry exited with {code}", file=sys.stderr)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    inputs = delta.get("sum:batch", 0.0)  # warm-up calls included, as the CPU counters
    batches = delta.get("count:batch", 0.0)
    cost = {
        group: 1e3 * sum(delta.get(f"sum:{s}", 0.0) for s in stages) / inputs
        for group, stages in STAGE_GROUPS.items()
    }
    cost["server CPU per call"] = 1e3 * (tree1 - tree0) / max(outcome.calls_made, 1)
    cost["model worker CPU"] = 1e3 * ((tree1 - tree0) - (own1 - own0)) / inputs
    cost["gRPC process CPU (transport)"] = 1e3 * (own1 - own0) / inputs
    cost["queue wait (mean, per call)"] = (
        1e3 * delta.get("sum:queue", 0.0) / max(delta.get("count:queue", 0.0), 1)
    )
    outcome = replace(outcome, mean_batch_size=inputs / batches if batches else float("nan"))
    return outcome, cost


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(parser, "server", target=0.0)
    parser.add_argument("--tree", type=Path, default=ROOT, help="gradsentry source tree to serve")
    parser.add_argument("--gradsentry-model", default="gradsentry", help="its OIP model name")
    parser.add_argument("--peer-venv", type=Path, default=default_peer_venv())
    parser.add_argument(
        "--server-nice",
        type=int,
        default=10,
        help="gradsentry's server_nice (10, its default: the gRPC process runs 10 below its "
        "model worker; MLServer's processes all run at this script's priority, so 0 puts "
        "both servers level against other work on the machine)",
    )
    args = parser.parse_args(argv)
    check_load_arguments(parser, args)
    args.tree = args.tree.resolve()
    python = ensure_peer_venv(args.peer_venv)

    runs: dict[str, list[Outcome]] = {MLSERVER: [], GRADSENTRY: []}
    costs: list[dict[str, float]] = []
    peer_costs: list[dict[str, float]] = []
    skipped = ""
    with tempfile.TemporaryDirectory(prefix="gradsentry-peer-") as tmp:
        for i in range(args.rounds):
            head = f"[{i + 1}/{args.rounds}]"
            batching = f"batch {args.max_batch_size}, delay {args.max_delay_ms:g} ms"
            print(f"{head} mlserver ({batching}), {args.clients} OIP clients", flush=True)
            outcome, cost = run_mlserver(python, args, Path(tmp))
            runs[MLSERVER].append(outcome)
            peer_costs.append(cost)
            if skipped:
                continue
            print(f"{head} gradsentry ({batching}), {args.clients} OIP clients", flush=True)
            try:
                outcome, cost = run_gradsentry(python, args, Path(tmp))
            except RuntimeError as exc:
                skipped = f"gradsentry from {args.tree} does not serve the OIP here: {exc}"
                print(skipped, flush=True)
                continue
            runs[GRADSENTRY].append(outcome)
            costs.append(cost)

    header = f"{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'batch':>7}{'server CPU':>12}"
    print(f"\n{'':<12}{header}")
    for outcomes in runs.values():
        for r in outcomes:
            print(
                f"{r.mode:<12}{r.requests_per_second:>9.1f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
                f"{r.errors:>8d}{r.mean_batch_size:>7.1f}{r.server_cpu_cores:>12.2f}"
            )
    rates = {name: [r.requests_per_second for r in rs] for name, rs in runs.items()}
    for name, values in rates.items():
        if values:
            spread = f"min {min(values):.1f}, max {max(values):.1f}"
            print(f"{name}: median {median(values):.1f} req/s ({spread})")
    payload: dict[str, object] = {"runs": {n: [asdict(r) for r in rs] for n, rs in runs.items()}}
    if rates[GRADSENTRY]:
        ratio = median(rates[GRADSENTRY]) / median(rates[MLSERVER])
        per_round = [g / m for g, m in zip(rates[GRADSENTRY], rates[MLSERVER], strict=False)]
        print(
            f"ratio gradsentry (checked) / mlserver (forward only), median requests/s: "
            f"{ratio:.2f}x (per round {min(per_round):.2f}-{max(per_round):.2f}x)"
        )
        cpu = [c["server CPU per call"] for c in costs]
        peer_cpu = [c["server CPU per call"] for c in peer_costs]
        print(
            f"server CPU per call, ms (median): gradsentry {median(cpu):.2f}, mlserver "
            f"{median(peer_cpu):.2f}: {median(cpu) / median(peer_cpu):.2f}x"
        )
        print("gradsentry per input, ms (median over rounds):")
        for key in costs[0]:
            if key != "server CPU per call":
                print(f"  {key:<32}{median([c[key] for c in costs]):>8.3f}")
        payload.update(
            ratio=ratio,
            per_round=per_round,
            gradsentry_ms=costs,
            mlserver_ms=peer_costs,
        )
    else:
        print(skipped)
        payload["skipped"] = skipped
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    errors = sum(r.errors for rs in runs.values() for r in rs)
    return 1 if args.check and (errors or not rates[GRADSENTRY]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
