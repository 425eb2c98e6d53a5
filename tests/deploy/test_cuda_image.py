"""The CUDA variant of the image, checked without building it (no GPU, no CUDA wheels
here): its build arguments pair torch and onnxruntime-gpu on one CUDA major, the build runs
the CUDA check, and the runtime bakes in no device choice. The check itself runs for real
on this CPU stack, where it must refuse."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from deploy.docker.check_cuda import check_index, index_cuda_major
from service.numerics import CUBLAS_WORKSPACE

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _arg(name: str) -> str:
    found = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert found, f"no ARG {name} with a default"
    return found.group(1)


def _stage(name: str) -> str:
    """The Dockerfile's lines from ``FROM ... AS name`` to the next FROM."""
    start = DOCKERFILE.index(f"AS {name}\n")
    end = DOCKERFILE.find("\nFROM ", start)
    return DOCKERFILE[start:end]


def test_torch_index_and_onnxruntime_gpu_share_a_cuda_major() -> None:
    assert _arg("CUDA_MAJOR") == "12"  # PyPI's onnxruntime-gpu: CUDA 12, cuDNN 9
    assert index_cuda_major(_arg("TORCH_CUDA_INDEX")) == _arg("CUDA_MAJOR")
    assert index_cuda_major("https://download.pytorch.org/whl/cu130") == "13"
    assert check_index("12", "https://download.pytorch.org/whl/cu130")  # refused
    assert not check_index("12", "https://download.pytorch.org/whl/cu126/")


def test_the_cuda_build_checks_before_and_after_installing() -> None:
    cuda_case = DOCKERFILE[DOCKERFILE.index("cuda) \\") : DOCKERFILE.index("*) \\")]
    lines = [ln.strip() for ln in cuda_case.splitlines()]
    index_only = next(i for i, ln in enumerate(lines) if "check_cuda.py" in ln)
    install = next(i for i, ln in enumerate(lines) if "--index-url" in ln)
    full = max(i for i, ln in enumerate(lines) if "check_cuda.py" in ln)
    assert "--index-only" in lines[index_only] and index_only < install < full
    assert "--index-only" not in lines[full]
    assert "!deploy/docker/check_cuda.py" in (ROOT / ".dockerignore").read_text()


def test_the_cuda_runtime_leaves_the_device_choice_to_the_container_runtime() -> None:
    runtime = _stage("runtime-cuda")
    assert "NVIDIA_VISIBLE_DEVICES" not in re.sub(r"#.*", "", DOCKERFILE)
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in runtime
    assert f"CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE}" in runtime
    assert "CUDA_CACHE_PATH=/tmp/" in runtime  # writable under a read-only root


def test_the_check_refuses_this_cpu_stack() -> None:
    done = subprocess.run(
        [sys.executable, "deploy/docker/check_cuda.py", "12", _arg("TORCH_CUDA_INDEX")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "is a CPU build" in done.stderr
    assert "not the GPU build (onnxruntime-gpu)" in done.stderr
