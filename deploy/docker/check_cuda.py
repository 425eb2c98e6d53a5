"""Build-time check of the CUDA image: torch and onnxruntime-gpu agree on the CUDA major
version and their CUDA libraries load, without a GPU (the build machine has none).

    python check_cuda.py CUDA_MAJOR [TORCH_CUDA_INDEX]

- The PyTorch index URL names the CUDA build (``.../whl/cu128`` is CUDA 12.8): its major
  must be CUDA_MAJOR (checked before anything is installed when the URL is given alone,
  with ``--index-only``).
- ``torch.version.cuda`` must have that major, and torch's CUDA libraries (cuDNN, cuBLAS)
  must load: ``torch.backends.cudnn.version()`` opens cuDNN.
- onnxruntime must be the GPU build (``CUDAExecutionProvider`` available) and its CUDA
  provider library must load with torch's CUDA libraries (onnxruntime-gpu on PyPI is built
  for CUDA 12 and cuDNN 9; a mismatch fails here with the missing library's name, not at
  the first request on a GPU node). Loading it needs no device: the driver (libcuda) is
  opened only when a session starts.

Exit 0 when all hold; 1 with one line per failure otherwise.
"""

from __future__ import annotations

import ctypes
import re
import sys
from pathlib import Path


def index_cuda_major(url: str) -> str | None:
    """ ".../whl/cu128" -> "12"; ".../whl/cu130" -> "13"; None when the URL names no CUDA."""
    found = re.search(r"/cu(\d+)(\d)/?$", url)
    return found.group(1) if found else None


def check_index(cuda_major: str, url: str) -> list[str]:
    major = index_cuda_major(url)
    if major != cuda_major:
        return [f"TORCH_CUDA_INDEX {url} is CUDA {major} but CUDA_MAJOR is {cuda_major}"]
    return []


def check_torch(cuda_major: str) -> list[str]:
    import torch

    version = torch.version.cuda
    if not version:
        return [f"torch {torch.__version__} is a CPU build (torch.version.cuda is None)"]
    problems = []
    if version.split(".")[0] != cuda_major:
        problems.append(f"torch is built for CUDA {version}, not CUDA {cuda_major}")
    try:
        if not torch.backends.cudnn.is_available() or torch.backends.cudnn.version() is None:
            problems.append("torch's cuDNN library does not load")
    except (OSError, RuntimeError) as exc:
        problems.append(f"torch's cuDNN library does not load: {exc}")
    return problems


def check_onnxruntime() -> list[str]:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return [f"onnxruntime {onnxruntime.__version__} is not the GPU build (onnxruntime-gpu)"]
    preload = getattr(onnxruntime, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is not None:
        preload(cuda=True, cudnn=True, msvc=False)
    library = Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return [f"onnxruntime's CUDA provider library does not load: {exc}"]
    return []


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit():
        print("usage: check_cuda.py CUDA_MAJOR [TORCH_CUDA_INDEX] [--index-only]", file=sys.stderr)
        return 2
    cuda_major = argv[0]
    problems = check_index(cuda_major, argv[1]) if len(argv) > 1 else []
    if "--index-only" not in argv:
        import torch  # noqa: F401  (first: it loads the CUDA libraries onnxruntime links to)

        problems += check_torch(cuda_major) + check_onnxruntime()
    for problem in problems:
        print(f"check_cuda: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_cuda: CUDA {cuda_major}: torch and onnxruntime-gpu agree and load")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
