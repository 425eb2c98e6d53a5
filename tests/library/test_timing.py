"""Stage timers: chosen by device (CUDA events on a GPU, the host clock on the CPU)."""

from __future__ import annotations

import time

import torch

from detectors import GradientProbe
from detectors.demo import load_demo_model
from detectors.timing import CudaEventTimer, HostTimer, timer_for


def test_the_timer_is_chosen_by_device() -> None:
    assert isinstance(timer_for("cpu"), HostTimer)
    gpu = timer_for("cuda:1")  # no GPU needed: events are made at the first mark
    assert isinstance(gpu, CudaEventTimer) and gpu.device == torch.device("cuda:1")
    assert gpu.intervals() == []


def test_host_timer_measures_the_intervals_between_marks() -> None:
    timer = HostTimer()
    timer.mark()
    time.sleep(0.02)
    timer.mark()
    timer.mark()
    first, second = timer.intervals()
    assert first >= 0.02 and 0 <= second < first


def test_the_probe_reports_its_stages() -> None:
    model = load_demo_model()
    out = GradientProbe(model).run(torch.zeros(2, 1, 28, 28))
    assert set(out.timings) == {"forward", "backward"}
    assert all(t > 0 for t in out.timings.values())
