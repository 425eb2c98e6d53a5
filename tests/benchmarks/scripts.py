"""Run a benchmark script as a user does, and read the JSON report it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_script(script: str, *args: str, report: Path, timeout: float = 600) -> dict[str, Any]:
    """``python benchmarks/<script> ARGS`` from the repository root; asserts exit 0 (showing
    the output's tail otherwise) and returns the JSON ``report`` it wrote."""
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(report.read_text())
