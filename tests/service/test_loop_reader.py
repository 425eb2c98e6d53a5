"""Reading a Connection's messages on a real event loop (uvloop's and asyncio's): framing
as multiprocessing writes it, order, partial and large messages, the peer closing, and a
watched connection that still blocks (not fails) when it sends to a slow reader."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection

import pytest
import uvloop

from service.engine.loop_reader import FramingError, LoopReader, take_messages

SIZES = (0, 1, 100, 16_384, 16_385, 300_000, 2_000_000)  # 16 KiB: Connection's one-send limit

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


def message(n: int, seed: int) -> bytes:
    return bytes((seed + i) % 251 for i in range(min(n, 251))) * (n // 251) + bytes(n % 251)


def connection_pair() -> tuple[Connection, Connection]:
    a, b = socket.socketpair()
    return Connection(a.detach()), Connection(b.detach())


def framed(messages: list[bytes]) -> bytes:
    """The bytes Connection.send_bytes writes for ``messages``, read raw off the socket."""
    ours, theirs = connection_pair()
    raw = socket.socket(fileno=os.dup(theirs.fileno()))
    sent = threading.Thread(target=lambda: [ours.send_bytes(m) for m in messages])
    sent.start()
    total = sum(len(m) + 4 for m in messages)
    chunks = []
    while total:
        chunk = raw.recv(min(total, 1 << 20))
        chunks.append(chunk)
        total -= len(chunk)
    sent.join()
    for c in (ours, theirs):
        c.close()
    raw.close()
    return b"".join(chunks)


def test_take_messages_reads_connections_framing_in_any_split() -> None:
    messages = [message(n, k) for k, n in enumerate(SIZES)]
    stream = framed(messages)
    for step in (1, 3, 4, 4_099, 65_536, len(stream)):
        buffer, got = bytearray(), []
        for start in range(0, len(stream), step):
            buffer += stream[start : start + step]
            got += take_messages(buffer)
        assert got == messages
        assert buffer == bytearray()  # nothing left over


def test_take_messages_long_form_and_broken_lengths() -> None:
    body = b"x" * 10
    long_form = struct.pack("!i", -1) + struct.pack("!Q", len(body)) + body
    buffer = bytearray(long_form[:7])
    assert take_messages(buffer) == [] and len(buffer) == 7  # waits for the whole header
    buffer += long_form[7:]
    assert take_messages(buffer) == [body]
    with pytest.raises(FramingError, match="negative message length -2"):
        take_messages(bytearray(struct.pack("!i", -2) + body))


@pytest.fixture(params=list(LOOPS))
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    running = LOOPS[request.param]()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(10)
    running.close()


class Received:
    """What a LoopReader handed over, and on which thread."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.threads: set[int] = set()
        self.closed = 0
        self.changed = threading.Condition()

    def on_message(self, data: bytes) -> None:
        with self.changed:
            self.messages.append(data)
            self.threads.add(threading.get_ident())
            self.changed.notify_all()

    def on_closed(self) -> None:
        with self.changed:
            self.closed += 1
            self.changed.notify_all()

    def wait(self, until: Callable[[], bool]) -> None:
        with self.changed:
            assert self.changed.wait_for(until, timeout=30)


def loop_thread(loop: asyncio.AbstractEventLoop) -> int:
    return asyncio.run_coroutine_threadsafe(_ident(), loop).result(10)


async def _ident() -> int:
    return threading.get_ident()


def test_messages_arrive_whole_and_in_order_on_the_loop(loop: asyncio.AbstractEventLoop) -> None:
    ours, theirs = connection_pair()
    got = Received()
    reader = LoopReader(loop, ours, got.on_message, got.on_closed)
    messages = [message(n, k) for k, n in enumerate(SIZES * 2)]
    for m in messages:
        theirs.send_bytes(m)
    got.wait(lambda: len(got.messages) == len(messages))
    assert got.messages == messages
    assert got.threads == {loop_thread(loop)}
    assert got.closed == 0
    theirs.close()  # the peer goes: on_closed, once
    got.wait(lambda: got.closed == 1)
    reader.close()
    reader.close()
    ours.close()
    assert got.closed == 1


def test_watched_connection_still_blocks_on_a_slow_peer(loop: asyncio.AbstractEventLoop) -> None:
    # uvloop makes a watched descriptor non-blocking; the reader must undo it, or this
    # send, larger than the socket buffers, fails with EAGAIN instead of waiting.
    ours, theirs = connection_pair()
    got = Received()
    reader = LoopReader(loop, ours, got.on_message, got.on_closed)
    assert os.get_blocking(ours.fileno())
    big = message(8_000_000, 7)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            ours.send_bytes(big)
        except BaseException as exc:
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    assert theirs.recv_bytes() == big  # read only now: the sender had to wait
    sender.join(30)
    assert errors == []
    reader.close()
    for c in (ours, theirs):
        c.close()


def test_close_stops_reading(loop: asyncio.AbstractEventLoop) -> None:
    ours, theirs = connection_pair()
    got = Received()
    reader = LoopReader(loop, ours, got.on_message, got.on_closed)
    theirs.send_bytes(b"before")
    got.wait(lambda: got.messages == [b"before"])
    reader.close()
    loop_thread(loop)  # the close has run on the loop
    theirs.send_bytes(b"after")
    theirs.close()
    assert ours.recv_bytes() == b"after"  # still there for others: not consumed, not lost
    loop_thread(loop)
    assert got.messages == [b"before"] and got.closed == 0
    ours.close()
