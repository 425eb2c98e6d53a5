"""``gradsentry bench``: the probe-cost benchmark (ResNet-18, probe vs vmap vs loop)."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of this subcommand; sets ``run``."""
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark script")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_cost.py"
    if not script.is_file():
        print(
            "gradsentry bench needs a source checkout (benchmarks/probe_cost.py)", file=sys.stderr
        )
        return 2
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0
