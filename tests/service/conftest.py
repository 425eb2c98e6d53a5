"""A real gradsentry server on 127.0.0.1 (free port) with the committed demo."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch

from detectors.demo import ARTIFACTS, load_demo_model
from detectors.sentry import Sentry
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.server import SentryServer
from tests.servers import demo_server


@pytest.fixture(scope="session")
def samples() -> tuple[np.ndarray, np.ndarray]:
    """Demo digits: uint8 [64, 28, 28], labels [64]."""
    data = np.load(ARTIFACTS / "samples.npz")
    return data["images"], data["labels"]


@pytest.fixture(scope="session")
def sentry() -> Sentry:
    """The demo Sentry used directly (the reference the server must match)."""
    torch.set_num_threads(1)
    return Sentry.load(load_demo_model(), ARTIFACTS / "bundle", device="cpu")


@pytest.fixture(scope="session")
def server() -> Iterator[tuple[SentryServer, int]]:
    """Started, warmed-up server; stopped at the end of the session."""
    with demo_server() as started:
        yield started


@pytest.fixture(scope="session")
def channel(server: tuple[SentryServer, int]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> pb_grpc.ReliabilityStub:
    return pb_grpc.ReliabilityStub(channel)
