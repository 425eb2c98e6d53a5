"""A ``multiprocessing`` Connection's messages, read on an asyncio event loop, no thread.

The server process reads the model worker's answers here, on its gRPC event loop. With a
reader thread of their own, that thread and the loop thread took turns on Python's
interpreter lock for every batch: the loop waited while the reader unpacked, and every
answer crossed threads on its way to its calls. Read on the loop, an answer is unpacked,
split and handed to its calls in one go (interleaved load-benchmark rounds: +8%
requests/s with batching on, every round ahead; unchanged with batching off).

The loop never blocks on the socket: it reads what has arrived from a duplicate of the
connection's descriptor with ``MSG_DONTWAIT`` (the socket itself stays blocking for the
sends made on other threads) and keeps partial messages until they are complete. The
framing is Connection's own (``send_bytes``): a 4-byte big-endian signed length, or -1
followed by an 8-byte unsigned length for messages over 2 GiB, then the message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")
CHUNK = 1 << 16  # bytes per recv
WATCH_TIMEOUT = 30.0  # seconds for the event loop to start watching a new connection


class FramingError(ValueError):
    """The byte stream is not in Connection's framing."""


def take_messages(buffer: bytearray) -> list[bytes]:
    """Remove every complete message from the front of ``buffer`` and return them in
    order; an incomplete one stays for the bytes still to come."""
    messages: list[bytes] = []
    pos = 0
    while len(buffer) - pos >= _LENGTH.size:
        (n,) = _LENGTH.unpack_from(buffer, pos)
        head = _LENGTH.size
        if n == -1:
            if len(buffer) - pos < head + _LONG_LENGTH.size:
                break
            (n,) = _LONG_LENGTH.unpack_from(buffer, pos + head)
            head += _LONG_LENGTH.size
        elif n < 0:
            raise FramingError(f"negative message length {n}")
        if len(buffer) - pos - head < n:
            break
        messages.append(bytes(buffer[pos + head : pos + head + n]))
        pos += head + n
    del buffer[:pos]
    return messages


class LoopReader:
    """Calls ``on_message(bytes)`` on ``loop`` for each message arriving on ``conn``, and
    ``on_closed()`` once when the other end is gone (EOF, a socket error or a broken
    frame). ``close()`` stops reading, from any thread. Made on any thread but the loop's
    (it waits for the loop to start watching); a message is handled on the loop thread,
    so a handler must not wait there for another message."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: Connection,
        on_message: Callable[[bytes], None],
        on_closed: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._sock = socket.socket(fileno=os.dup(conn.fileno()))
        self._fd = self._sock.fileno()
        self._buffer = bytearray()
        self._on_message = on_message
        self._on_closed = on_closed
        # The connection must be blocking again (see _watch) before anyone sends on it.
        watching: Future[None] = Future()
        loop.call_soon_threadsafe(self._watch, watching)
        watching.result(WATCH_TIMEOUT)

    def _watch(self, watching: Future[None]) -> None:
        try:
            self._loop.add_reader(self._fd, self._readable)
            # libuv (uvloop) makes a watched descriptor non-blocking, and the flag belongs
            # to the socket, shared with the connection: its sends would fail with EAGAIN
            # whenever the peer is slow to read. Reads here never block (MSG_DONTWAIT).
            os.set_blocking(self._fd, True)
        except BaseException as exc:
            watching.set_exception(exc)
        else:
            watching.set_result(None)

    def _readable(self) -> None:
        ended = False
        while True:
            try:
                data = self._sock.recv(CHUNK, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                ended = True
                break
            self._buffer += data
            if len(data) < CHUNK:
                break
        try:
            messages = take_messages(self._buffer)
        except FramingError:
            log.exception("unreadable message from the model worker")
            messages, ended = [], True
        for message in messages:
            try:
                self._on_message(message)
            except Exception:  # one bad answer must not stop the reading of the next
                log.exception("handling a message from the model worker failed")
        if ended:
            self._close()
            self._on_closed()

    def close(self) -> None:
        """Stop reading (idempotent; from any thread)."""
        try:
            self._loop.call_soon_threadsafe(self._close)
        except RuntimeError:  # the loop is closed: nothing watches the socket any more
            self._sock.close()

    def _close(self) -> None:
        if self._sock.fileno() != -1:
            self._loop.remove_reader(self._fd)
            self._sock.close()
