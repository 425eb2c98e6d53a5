"""gRPC core settings the server process chooses before grpc is imported.

grpc reads ``GRPC_EXPERIMENTS`` once, when the module is imported, so the serving entry
point applies these defaults before anything imports grpc. This module must not import
grpc itself.
"""

from __future__ import annotations

import os
import sys

#: Serve on gRPC core's epoll listener instead of the EventEngine listener. The listener
#: decides which threads read and write the connections it accepts: with the epoll
#: listener the completion-queue poller does the socket I/O itself, without a hand-off to
#: EventEngine's thread pool. In the load benchmark (16 clients, batching on, interleaved
#: rounds) that serves ~8% more requests/s; with batching off it changes nothing.
SERVER_EXPERIMENTS = "-event_engine_listener"

ENV = "GRPC_EXPERIMENTS"

#: gRPC core's own log level. Core logs every failed TLS handshake at INFO (one line per
#: plaintext probe of a TLS port, without limit: anyone who can connect can fill the log);
#: the server logs its own events through Python logging. Errors still reach the log.
VERBOSITY_ENV, SERVER_VERBOSITY = "GRPC_VERBOSITY", "ERROR"


def apply_server_defaults() -> str | None:
    """Set ``GRPC_EXPERIMENTS`` to ``SERVER_EXPERIMENTS`` and ``GRPC_VERBOSITY`` to
    ``SERVER_VERBOSITY`` unless the environment already sets them (an operator's value,
    even empty, wins). Returns the value grpc will use, or
    None when grpc is already imported and the setting can no longer take effect (then
    nothing is changed)."""
    if "grpc" in sys.modules:
        return None
    os.environ.setdefault(VERBOSITY_ENV, SERVER_VERBOSITY)
    return os.environ.setdefault(ENV, SERVER_EXPERIMENTS)
