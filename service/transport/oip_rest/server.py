"""Serving the REST app with uvicorn on the server's own event loop.

The app's handlers then run on the same loop as the gRPC handlers, so the data plane
(admission, batcher futures) is touched from one thread whichever transport a call came
by. The socket is bound here (port 0 picks a free one; the bound port is known at once),
and TLS uses the same certificate files as gRPC.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from concurrent.futures import Future
from typing import Any

import uvicorn

from service.event_loop import event_loop

_START_POLL_SECONDS = 0.01


class RestServer:
    """A started uvicorn server on the event loop; ``stop`` ends it."""

    def __init__(self, server: uvicorn.Server, task: Future[None], port: int) -> None:
        self.server, self.task, self.port = server, task, port

    @classmethod
    def start(
        cls,
        app: Any,
        host: str,
        port: int,
        tls_cert_file: str = "",
        tls_key_file: str = "",
        tls_client_ca_file: str = "",
        timeout: float = 30.0,
    ) -> RestServer:
        """Bind ``host:port`` (OSError when it cannot) and serve ``app`` there."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=2048)
        options: dict[str, Any] = {}
        if tls_cert_file:
            options = {"ssl_certfile": tls_cert_file, "ssl_keyfile": tls_key_file}
            if tls_client_ca_file:
                options |= {"ssl_ca_certs": tls_client_ca_file, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
            **options,
        )
        server = uvicorn.Server(config)
        task = asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), event_loop())
        deadline = time.monotonic() + timeout
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise OSError(f"the REST server on {host}:{port} stopped while starting")
            if time.monotonic() > deadline:
                raise OSError(f"the REST server on {host}:{port} did not start in {timeout:g} s")
            time.sleep(_START_POLL_SECONDS)
        return cls(server, task, sock.getsockname()[1])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, finish open responses, close the connections."""
        self.server.should_exit = True
        try:
            self.task.result(timeout)
        except Exception:  # stopping goes on; the caller logs
            self.server.force_exit = True
            raise
