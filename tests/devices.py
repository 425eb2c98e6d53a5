"""The torch devices this machine can run the tests on: the CPU always, every CUDA device
there is (so ``cuda:1`` is exercised on a machine with two GPUs or more)."""

from __future__ import annotations

import torch

DEVICES = ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
