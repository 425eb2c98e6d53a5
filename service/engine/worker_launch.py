"""Starting the model worker process, and starting the first one early.

``serve`` calls ``prestart()`` right after reading its config, before it imports torch,
the model or gRPC: the child (``python -m service.engine.worker FD``) then imports torch and the
library on the other core while this process imports its own, and the first
``ProcessPipeline`` adopts it (``take_prestarted``). A child that is never adopted — start-up
failed before the pipeline — sees its socket close when this process exits and ends too.

Nothing here imports torch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

_waiting: tuple[subprocess.Popen[bytes], socket.socket] | None = None


def spawn() -> tuple[subprocess.Popen[bytes], socket.socket]:
    """A new worker process and this side of its socket pair (the child holds the other)."""
    ours, theirs = socket.socketpair()
    env = dict(os.environ)
    # The child imports exactly what this process imports (source tree or install).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.engine.worker", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, ours


def prestart() -> None:
    """Start the first worker now; the next ``take_prestarted`` returns it."""
    global _waiting
    if _waiting is None:
        _waiting = spawn()


def take_prestarted() -> tuple[subprocess.Popen[bytes], socket.socket] | None:
    """The worker ``prestart`` started, once (None when there is none)."""
    global _waiting
    child, _waiting = _waiting, None
    return child
