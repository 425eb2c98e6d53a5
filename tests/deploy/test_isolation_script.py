"""``.ci/isolation`` (the suite's isolation check, too long for CI) on a small path: every
file alone and random-order seeds pass; a run that collects no test fails, named."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def isolation(tests: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / ".ci" / "isolation"), *args],
        cwd=ROOT,
        env={**os.environ, "TESTS": tests},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_files_alone_and_seeds_pass_on_a_small_path() -> None:
    done = isolation("tests/service/test_codec.py", "--files", "3", "4")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert all(line.startswith("rc=0 ") and " passed in " in line for line in lines[:3])
    assert [line.split(": ")[0].split("s ", 1)[1] for line in lines[:3]] == [
        "tests/service/test_codec.py",
        "random order, seed 3",
        "random order, seed 4",
    ]
    assert lines[-1] == "all passed"


def test_a_run_without_tests_fails_and_is_named() -> None:
    done = isolation("docs", "1")
    assert done.returncode == 1
    assert "failed: random order, seed 1" in done.stdout


def test_a_bad_argument_is_one_line_and_exit_2() -> None:
    done = isolation("docs", "--seeds")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: not a seed: --seeds (usage: .ci/isolation [--files] [SEED ...])"
    ]
