"""The README's example commands, run as written against a live demo server.

The quickstart block that talks to a running sidecar (grpcurl from ``make grpcurl``, the
health probe) is read from README.md itself, so the README cannot drift from what works.
Its address, 127.0.0.1:50051, is swapped for the test server's port; ``.venv/bin/X`` is
the X beside this interpreter.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import demo_server

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ADDRESS = "127.0.0.1:50051"


def readme_commands() -> list[str]:
    """The ``.venv/bin/...`` lines of the README's first shell block that uses grpcurl."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    (block,) = [b for b in blocks if "grpcurl -plaintext" in b][:1]
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line.startswith(".venv/bin/")]


def test_the_readme_shows_grpcurl_and_health() -> None:
    commands = readme_commands()
    assert any(c.endswith(" list") for c in commands)
    assert any("GetInfo" in c for c in commands)
    assert any("gradsentry health" in c for c in commands)


@pytest.fixture(scope="module")
def target() -> object:
    with demo_server() as (_, port):
        yield f"127.0.0.1:{port}"


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(command: str, target: str) -> None:
    argv = shlex.split(command.replace(ADDRESS, target))
    argv[0] = str(Path(sys.executable).parent / Path(argv[0]).name)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    if argv[-1] == "list":
        services = set(done.stdout.split())
        assert {"gradsentry.v1.Reliability", "grpc.health.v1.Health"} <= services
    elif argv[-1].endswith("/GetInfo"):
        info = json.loads(done.stdout)
        # grpcurl prints the proto field names.
        assert info["model_fingerprint"].startswith("sha256:")
    else:
        assert done.stdout.strip() == "SERVING"
