"""The command line imports only what the chosen subcommand needs.

Each case runs in a fresh interpreter (this test process has long imported everything)
and lists the heavy top-level packages the command left in ``sys.modules``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# The lab's packages and torch: what a light command must not pay for.
HEAVY = ("torch", "art", "matplotlib", "skimage", "cv2", "imagecorruptions", "numba", "sklearn")


def imported_after(argv: list[str], watch: tuple[str, ...]) -> set[str]:
    """The packages of ``watch`` in sys.modules after ``gradsentry ARGV`` ran in-process."""
    code = (
        "import sys\nfrom service import cli\n"
        f"try:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print('IMPORTED:', *(m for m in {watch!r} if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    (line,) = (x for x in out.stderr.splitlines() if x.startswith("IMPORTED:"))
    return set(line.split()[1:])


@pytest.mark.parametrize(
    "argv", [["--help"], ["health", "--help"], ["check", "--help"], ["serve", "--help"]]
)
def test_help_and_client_commands_import_nothing_heavy(argv: list[str]) -> None:
    # serve's module is light too: it starts the model worker before it imports torch.
    assert imported_after(argv, HEAVY) == set()


def test_health_imports_grpc_and_not_numpy() -> None:
    assert imported_after(["health", "--help"], ("grpc", "numpy", "yaml")) == {"grpc"}


def test_a_lab_command_still_loads_its_libraries() -> None:
    """The check above can fail: a lab command's --help does import torch."""
    assert "torch" in imported_after(["fit", "--help"], HEAVY)


def test_the_grpc_process_never_imports_torch() -> None:
    """With the model in its worker process, the gRPC process stays light: it starts the
    worker first and serves while the worker imports torch (start-up overlaps)."""
    code = (
        "import sys, service.server, service.serve_cli, service.engine.worker\n"
        "import service.transport.oip_rest.app, service.transport.oip_rest.server\n"
        "print('IMPORTED:', *(m for m in ('torch', 'onnx', 'scipy') if m in sys.modules),"
        " file=sys.stderr)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    (line,) = (x for x in out.stderr.splitlines() if x.startswith("IMPORTED:"))
    assert line.split()[1:] == []
