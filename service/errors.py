"""Domain errors the servicer raises; ``service.interceptors`` maps each to a status code."""

from __future__ import annotations

#: The model worker's exit code after a device fault (a sticky CUDA error; service.faults):
#: EX_TEMPFAIL, a new worker may succeed.
DEVICE_FAULT_EXIT = 75


class ClientError(ValueError):
    """The client's request is malformed (INVALID_ARGUMENT); the message says how."""


class NotFoundError(ClientError):
    """The call names something this server does not have, e.g. a model (NOT_FOUND)."""


class QueueFullError(RuntimeError):
    """The server cannot take more work now (RESOURCE_EXHAUSTED)."""


class NotReadyError(RuntimeError):
    """The model is still loading or warming up (FAILED_PRECONDITION)."""


class DrainingError(RuntimeError):
    """The server is shutting down (UNAVAILABLE)."""


class WorkerError(RuntimeError):
    """The model worker process died while scoring; it is restarted (UNAVAILABLE: retry)."""


class DeviceMemoryError(QueueFullError):
    """The device ran out of memory even for this input alone (RESOURCE_EXHAUSTED)."""
