"""Device faults: which exceptions mean the accelerator, not the input or the model, failed.

Two kinds are told apart from ordinary errors (all three are ``RuntimeError`` in torch):

- out of memory (``torch.OutOfMemoryError``): the batch was too large for the device now;
  freeing the cache and scoring smaller pieces may succeed. Never a reason to report the
  model or bundle as broken.
- a device fault (``torch.AcceleratorError``, ``torch.cuda.CudaError`` or a RuntimeError
  whose message carries a CUDA, cuBLAS or cuDNN error): CUDA errors are sticky — every
  later call in the process fails too — so the process must end and a new one start.

Code that catches ``RuntimeError`` for its own reasons re-raises these first
(``reraise_device_errors``).
"""

from __future__ import annotations

import torch

# Message fragments of CUDA, cuBLAS and cuDNN failures torch raises as plain RuntimeError.
_FAULT_MARKERS = ("CUDA error", "CUBLAS_STATUS_", "CUDNN_STATUS_", "cuDNN error")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory."""
    return isinstance(exc, torch.OutOfMemoryError)


def is_device_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is a (sticky) accelerator error, other than running out of memory."""
    if is_out_of_memory(exc):
        return False
    accelerator = getattr(torch, "AcceleratorError", None)  # torch >= 2.8
    if accelerator is not None and isinstance(exc, accelerator):
        return True
    if isinstance(exc, torch.cuda.CudaError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _FAULT_MARKERS)


def reraise_device_errors(exc: BaseException) -> None:
    """Raise ``exc`` again when it is out of memory or a device fault (call it first in an
    ``except RuntimeError`` that means something else)."""
    if is_out_of_memory(exc) or is_device_fault(exc):
        raise exc


def free_device_memory(device: torch.device | str) -> None:
    """Return the caching allocator's unused blocks to the device (CUDA only)."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
