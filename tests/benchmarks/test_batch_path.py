"""``benchmarks/batch_path.py`` runs, and what it measures besides time holds: through the
shared buffer a batch costs a header on the socket and no copy in the worker."""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks.scripts import run_script


def test_the_batch_path_benchmark_runs_and_counts_bytes(tmp_path: Path) -> None:
    out = tmp_path / "batch_path.json"
    report = run_script("batch_path.py", "--repeats", "1", "--json", str(out), report=out)
    big = 64 * 3 * 224 * 224
    for kind, itemsize in (("float32", 4), ("uint8", 1)):
        case = report[f"64x3x224x224 {kind}"]
        assert case["before"]["socket_bytes"] > 4 * big  # the float32 batch in the message
        assert big * itemsize < case["socket"]["socket_bytes"] < big * itemsize + 1000
        assert case["shared"]["socket_bytes"] < 200  # a header
        # The worker reads the slot in place: no copy of the batch (38.5 MB) in it.
        assert case["before"]["worker_peak"] >= 4 * big
    assert report["64x3x224x224 float32"]["shared"]["worker_peak"] < 1e6
