"""Device faults in a real ``gradsentry serve`` with its model worker process: out of memory
splits the batch (or fails it with RESOURCE_EXHAUSTED when one input does not fit), a CUDA
error ends the worker and the next batch is served by a new one. The model raises torch's
own exception types from its forward (``faulty_model``); the library tells them apart."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from detectors.demo import ARTIFACTS, load_demo_model
from detectors.faults import is_device_fault, is_out_of_memory, reraise_device_errors
from detectors.sentry import Sentry
from service.client import ReliabilityClient, RequestError
from tests.servers import FEATURE_ATOL, FEATURE_RTOL, WAIT, serve_process
from tests.service.faulty_model import FAULT, MAX_ROWS, TOO_BIG


def test_device_errors_are_told_apart() -> None:
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    fault = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    cublas = RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling cublasSgemm")
    plain = RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x784 and 100x10)")
    assert is_out_of_memory(oom) and not is_device_fault(oom)
    assert is_device_fault(fault) and is_device_fault(cublas)
    assert not is_device_fault(plain) and not is_out_of_memory(plain)
    for exc in (oom, fault, cublas):
        with pytest.raises(type(exc)):
            reraise_device_errors(exc)
    reraise_device_errors(plain)  # left to the caller


def _digits(n: int) -> np.ndarray:
    images = np.load(ARTIFACTS / "samples.npz")["images"].astype(np.float32) / 255.0
    return images[:n, None]


def test_out_of_memory_and_cuda_errors_in_a_real_server(tmp_path: Path) -> None:
    digits = _digits(8)
    reference = Sentry.load(load_demo_model(), ARTIFACTS / "bundle").check(torch.from_numpy(digits))
    config = {"model_factory": "tests.service.faulty_model:build", "max_batch_size": 8}
    with serve_process(tmp_path, **config) as server:  # warm-up's batch of 8 split already
        with ReliabilityClient(server.target, timeout=WAIT) as client:
            results = client.check_batch(list(digits), return_features=True)
            assert len(results) == 8 > MAX_ROWS
            for i, got in enumerate(results):
                assert got.predicted_class == int(reference.logits[i].argmax())
                np.testing.assert_allclose(
                    got.features, reference.features[i], rtol=FEATURE_RTOL, atol=FEATURE_ATOL
                )
            assert "out of device memory on a batch of 8" in server.log_text()

            with pytest.raises(RequestError) as info:
                client.check(np.full((1, 28, 28), TOO_BIG, np.float32))
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "out of device memory on this input alone" in info.value.details

            with pytest.raises(RequestError) as info:
                client.check(np.full((1, 28, 28), FAULT, np.float32))
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            assert "device (CUDA) error" in info.value.details
            # A new worker, a fresh context: the next call is answered.
            again = client.check(digits[0])
            assert again.predicted_class == int(reference.logits[0].argmax())
        log = server.log_text()
    assert "device fault, the model worker exits" in log
    assert log.count("model worker started") >= 2
