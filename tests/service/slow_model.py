"""A model factory for start-up tests: the demo classifier (same weights, so the demo
bundle fits) whose forward passes take 1.5 s each for the first 8 s after it is built, so
that the server's warm-up lasts long enough to be called into."""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from detectors.demo import load_demo_model

SLOW_SECONDS, SLOW_FOR = 1.5, 8.0


def build() -> nn.Module:
    model = load_demo_model()
    built = time.monotonic()

    def slow(module: nn.Module, args: Any) -> None:
        if time.monotonic() - built < SLOW_FOR:
            time.sleep(SLOW_SECONDS)

    model.register_forward_pre_hook(slow)
    return model
