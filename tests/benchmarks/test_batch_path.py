"""``benchmarks/batch_path.py`` runs, and what it measures besides time holds: through the
shared buffer a batch costs a header on the socket and no copy in the worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_batch_path_benchmark_runs_and_counts_bytes(tmp_path: Path) -> None:
    out = tmp_path / "batch_path.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/batch_path.py", "--repeats", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    big = 64 * 3 * 224 * 224
    for kind, itemsize in (("float32", 4), ("uint8", 1)):
        case = report[f"64x3x224x224 {kind}"]
        assert case["before"]["socket_bytes"] > 4 * big  # the float32 batch in the message
        assert big * itemsize < case["socket"]["socket_bytes"] < big * itemsize + 1000
        assert case["shared"]["socket_bytes"] < 200  # a header
        # The worker reads the slot in place: no copy of the batch (38.5 MB) in it.
        assert case["before"]["worker_peak"] >= 4 * big
    assert report["64x3x224x224 float32"]["shared"]["worker_peak"] < 1e6
