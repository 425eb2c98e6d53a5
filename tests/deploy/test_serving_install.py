"""A serving install, as a user gets it: ``pip install gradsentry`` without the lab.

The serving dependency set (pyproject's ``dependencies``, torch pinned by the Makefile to
its CPU build) is collected into the wheelhouse the image uses (``make
build/wheelhouse/requirements.txt``), installed into a fresh virtual environment with no
index, together with the project's own wheel. Then:

- ``pip check`` passes: the set is complete and consistent;
- ``gradsentry serve`` runs the bundled demo until the standard health service says
  SERVING, answers a real ``Check``, and drains on SIGTERM;
- no process of it — the gRPC server nor the model worker — imports any lab package, or
  even tries to (every Python process started with ``PYTHONPROFILEIMPORTTIME`` lists the
  imports it attempts; the lab is not installed, so an attempt that mattered would fail).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from service.client import ReliabilityClient
from service.health import check_health

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = ROOT / "build" / "wheelhouse"
ARTIFACTS = ROOT / "detectors" / "demo" / "artifacts"
# The lab's packages (ART, OpenCV, numba, plots, image filters, H's fitting side). Not
# tqdm: torch.hub tries `from tqdm import tqdm` at import and falls back when it is absent
# (it is not installed here), and the import listing shows attempts as well as imports.
LAB = {"art", "matplotlib", "skimage", "cv2", "imagecorruptions", "numba", "sklearn", "scipy"}
LAB |= {"skl2onnx"}
INSTALL_S = 20 * 60
START_S = 180.0
_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|( *)(\S+)$")


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``cmd`` without the test process's PYTHON* variables: a PYTHONPATH naming a source
    tree would make the fresh venv's pip see gradsentry as installed already and skip it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_S, env=env, **kwargs)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the serving set from the wheelhouse and the project's wheel."""
    run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(ROOT),
            "-o",
            ".venv/.installed",
            "build/wheelhouse/requirements.txt",
            f"PY={sys.executable}",
        ]
    )
    work = tmp_path_factory.mktemp("serving")
    venv = work / "venv"
    run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    run(
        [
            *pip,
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--find-links",
            str(WHEELHOUSE),
            "-r",
            str(WHEELHOUSE / "requirements.txt"),
        ]
    )
    run(
        [
            *pip,
            "wheel",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(work / "dist"),
            str(ROOT),
        ]
    )
    (wheel,) = (work / "dist").glob("gradsentry-*.whl")
    run([*pip, "install", "--quiet", "--no-index", "--no-deps", str(wheel)])
    assert (venv / "bin" / "gradsentry").is_file(), "the wheel installed no console script"
    return venv


def test_the_serving_set_is_consistent(serving_venv: Path) -> None:
    python = str(serving_venv / "bin" / "python")
    out = run([python, "-m", "pip", "check"]).stdout
    assert "No broken requirements" in out
    installed = run([python, "-m", "pip", "list", "--format", "freeze"]).stdout.lower()
    names = {line.split("==")[0].replace("_", "-") for line in installed.splitlines()}
    assert not names & {
        "adversarial-robustness-toolbox",
        "scikit-learn",
        "matplotlib",
        "scikit-image",
        "opencv-python",
        "numba",
        "imagecorruptions-imaug",
    }


def imported(stderr: str) -> tuple[set[str], int]:
    """(top-level packages imported by any process, number of Python processes seen)."""
    names, processes = set(), 0
    for line in stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            names.add(m[2].split(".")[0])
            # Every interpreter imports `encodings` at start, once, at the top level.
            processes += m[1] == " " and m[2] == "encodings"
    return names, processes


def test_serve_imports_none_of_the_lab(serving_venv: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GRADSENTRY_", "PYTHON"))},
        "GRADSENTRY_PORT": "0",
        "GRADSENTRY_METRICS_PORT": "0",
        "PYTHONPROFILEIMPORTTIME": "1",
    }
    with log.open("w") as out:
        # cwd outside the checkout: the installed package, not the source tree, is imported.
        proc = subprocess.Popen(
            [str(serving_venv / "bin" / "gradsentry"), "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        port = 0
        deadline = time.monotonic() + START_S
        while not port and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())
            port = int(found[1]) if found else 0
            time.sleep(0.2)
        assert port, log.read_text()[-3000:]
        target = f"127.0.0.1:{port}"
        with grpc.insecure_channel(target) as ch:
            while check_health(ch, "", timeout=30) != "SERVING":
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                time.sleep(0.2)
        samples = np.load(ARTIFACTS / "samples.npz", allow_pickle=False)
        with ReliabilityClient(target, timeout=60) as client:
            result = client.check(samples["images"][0])
        assert result.predicted_class == int(samples["labels"][0])
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]
    text = log.read_text()
    names, processes = imported(text)
    assert processes >= 2, "the server's and the model worker's imports must both be seen"
    assert "torch" in names and "grpc" in names, "the import listing is incomplete"
    assert names & LAB == set()
