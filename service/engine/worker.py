"""The model worker: the model and detector in a child process, so gRPC never waits on it.

Python runs one thread at a time per process. In one process the model's many small
operations and autograd hooks and the gRPC handlers' decoding and answering take turns
on that lock, and the server tops out at about one core whatever the machine has. With
``model_worker: process`` (the default) the server process keeps gRPC, decoding, the
batcher and metrics, and a child process (``python -m service.engine.worker``) loads the
model and the bundle and scores one batch at a time; the two exchange pickle-free messages
(``service.engine.wire``) over a socket pair. A batch itself travels through a buffer the
two processes share (``service.engine.shared_batch``): the socket carries only its header.

The child ignores SIGINT/SIGTERM: the server decides when it stops (after draining), and
it exits by itself when the server process goes away. If it dies while scoring (killed,
out of memory), that batch fails with ``WorkerError`` (UNAVAILABLE: retry) and the next
batch starts a new child.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, ClassVar

import numpy as np

from detectors.errors import ModelLoadError
from detectors.verdicts import Verdicts
from service.config import ServerConfig, build_config
from service.engine.loop_reader import LoopReader
from service.engine.pipeline import BasePipeline, Result, one_dtype, padding
from service.engine.shared_batch import (
    AttachedBatches,
    SharedBatchError,
    SharedBatches,
    slot_size,
)
from service.engine.wire import pack, pack_verdicts, unpack, unpack_verdicts
from service.engine.worker_launch import spawn, take_prestarted
from service.errors import DEVICE_FAULT_EXIT, DeviceMemoryError, WorkerError
from service.event_loop import event_loop
from service.spec import InputSpec

log = logging.getLogger(__name__)

# Loading a large model and bundle (or a first CUDA context) can take minutes.
START_TIMEOUT = 600.0
STOP_TIMEOUT = 10.0


def apply_threads(config: ServerConfig) -> None:
    """``torch_threads`` > 0 fixes torch's intra-op threads (0 keeps torch's default, one
    per core it sees, which in a CPU-limited container oversubscribes the limit)."""
    if config.torch_threads > 0:
        import torch

        torch.set_num_threads(config.torch_threads)


def start_pipeline(config: ServerConfig) -> BasePipeline:
    """The pipeline ``config.model_worker`` asks for: in a child process or in this one."""
    if config.model_worker == "process":
        return ProcessPipeline(config)
    from service.loader import build_pipeline  # torch and the model, in this process

    apply_threads(config)
    return build_pipeline(config)


class ProcessPipeline(BasePipeline):
    """A pipeline whose model and detector run in a child process.

    Construction starts the child and waits until it has loaded the model and bundle
    (``ModelLoadError`` with the child's message when it cannot); ``close`` stops it.
    Batches are sent as they come (``run_async``) and answered in order: with two in flight
    the next batch is already waiting when the child finishes one. The answers are read on
    the process's event loop (``service.event_loop``, ``service.engine.loop_reader``): nothing may
    wait for an answer on that loop's thread. When the child dies the batches it held fail
    with ``WorkerError``, and the next batch starts a new child. Each child gets a buffer
    shared with it, one slot per batch in flight (``shared_memory``; batches go over the
    socket when it is False or the buffer cannot be made).
    """

    max_in_flight = 2
    # Native ids of the launcher threads of every live instance in this process: threads
    # whose CPU priority the server must leave alone (service.priority).
    launcher_tids: ClassVar[set[int]] = set()

    def __init__(
        self,
        config: ServerConfig,
        start_timeout: float = START_TIMEOUT,
        shared_memory: bool = True,
    ) -> None:
        self._config = config
        self._start_timeout = start_timeout
        self._shared_memory = shared_memory
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._batches: SharedBatches | None = None  # the current child's shared buffer
        self._reader: LoopReader | None = None
        # ``_io`` guards the answer queue and the child's life, ``_send_lock`` the order of
        # sends; answers are matched to batches by order (the child answers one by one).
        # A pending batch keeps the shared buffer and slot it was sent in (None: the socket).
        self._io = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._closed = False
        self.restarts = 0
        # Batches sent through the shared buffer and over the socket (under _send_lock).
        self.sent = {"shared": 0, "socket": 0}
        self._launcher = ThreadPoolExecutor(1, thread_name_prefix="model-worker-launcher")
        self.launcher_tid: int = self._launcher.submit(threading.get_native_id).result()
        self.launcher_nice = os.getpriority(os.PRIO_PROCESS, self.launcher_tid)
        ProcessPipeline.launcher_tids.add(self.launcher_tid)
        try:
            hello = self._start()
        except BaseException:
            self._launcher.shutdown(wait=False)
            ProcessPipeline.launcher_tids.discard(self.launcher_tid)
            raise
        spec = hello["spec"]
        super().__init__(
            InputSpec(
                shape=tuple(spec["shape"]),
                dtype=spec["dtype"],
                value_range=tuple(spec["value_range"]),
                mean=tuple(spec["mean"]),
                std=tuple(spec["std"]),
                labels=tuple(spec["labels"]),
            ),
            hello["device"],
            config.max_batch_size,
        )
        self.manifest = hello["manifest"]

    @property
    def shared(self) -> bool:
        """Whether the current child takes its batches through a shared buffer."""
        return self._batches is not None

    @property
    def pid(self) -> int | None:
        """The current child's process id (None while none runs)."""
        return None if self._process is None else self._process.pid

    def close(self) -> None:
        """Stop the child (idempotent); batches still computing fail with WorkerError."""
        with self._send_lock, self._io:
            self._closed = True
            self._stop()
            self._launcher.shutdown(wait=False)
            ProcessPipeline.launcher_tids.discard(self.launcher_tid)
            while self._pending:
                self._pending.popleft().future.set_exception(
                    WorkerError("the model worker was stopped before it answered")
                )

    def run_async(self, inputs: Sequence[np.ndarray], pad: bool = True) -> Future[list[Result]]:
        """Send the batch and return at once; the Future resolves when the child answers."""
        if not inputs or len(inputs) > self.max_batch_size:
            return super().run_async(inputs, pad)
        results: Future[list[Result]] = Future()

        def done(verdicts: Future[Verdicts]) -> None:
            try:
                results.set_result(self._split(verdicts.result(), n=len(inputs)))
            except Exception as exc:
                results.set_exception(exc)

        try:
            parts = one_dtype(padding(inputs, self.min_rows if pad else 1), self.spec)
            self._send(parts).add_done_callback(done)
        except Exception as exc:
            results.set_exception(exc)
        return results

    def _check(self, batch: np.ndarray) -> Verdicts:
        """Send batch [B, C, H, W] to the child and wait for its Verdicts."""
        return self._send([batch]).result()

    def _send(self, parts: Sequence[np.ndarray]) -> Future[Verdicts]:
        """Queue the batch [B, C, H, W] that ``parts`` (each [k, C, H, W], one dtype) make,
        in order, on the child (starting a new one if the last died)."""
        # Sends are serialised by their own lock and made without holding ``_io``: the
        # reader must always be able to take an answer off the pipe, or a large batch
        # could wait on a child that waits for its answer to be read.
        with self._send_lock:
            with self._io:
                if self._closed:
                    raise WorkerError("the model worker is stopped")
                if self._conn is None:  # the previous child died: start another
                    self.restarts += 1
                    try:
                        hello = self._start()
                    except ModelLoadError as exc:
                        raise WorkerError(
                            f"the model worker could not be restarted: {exc}"
                        ) from exc
                    if hello["manifest"] != self.manifest:
                        self._stop()
                        raise WorkerError(
                            "the restarted model worker loaded another detector bundle"
                        )
                conn, batches = self._conn, self._batches
                slot = None if batches is None else batches.take(sum(p.nbytes for p in parts))
                entry = _Pending(Future(), batches, slot)
                self._pending.append(entry)
            try:
                # The batch's one copy in this process: into the slot, or into the message.
                if slot is not None and batches is not None:
                    message = pack({"op": "check", **batches.write(slot, parts)})
                else:
                    batch = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
                    message = pack({"op": "check"}, {"x": batch})
                conn.send_bytes(message)
                self.sent["socket" if slot is None else "shared"] += 1
            except OSError:
                with self._io:
                    self._lost(conn)  # fails ``entry`` with the others
            except BaseException:
                # Nothing was sent: no answer will come for it (sends hold ``_send_lock``,
                # so it is still the newest pending batch).
                with self._io:
                    if self._pending and self._pending[-1] is entry:
                        self._pending.pop()
                entry.release()
                raise
            return entry.future

    def _answer(self, message: bytes) -> None:
        """One answer from the child -> the oldest pending batch."""
        meta, arrays = unpack(message)
        with self._io:
            pending = self._pending.popleft() if self._pending else None
        if pending is None:
            return  # an answer nobody waits for (cannot happen; never block on it)
        pending.release()
        future = pending.future
        if meta.get("op") == "error" and meta.get("kind") == "out_of_memory":
            future.set_exception(DeviceMemoryError(str(meta["message"])))
        elif meta.get("op") == "error":
            future.set_exception(RuntimeError(f"model worker: {meta['message']}"))
        else:
            future.set_result(unpack_verdicts(meta, arrays))

    def _gone(self, conn: Connection) -> None:
        """The child behind ``conn`` closed its end."""
        with self._io:
            self._lost(conn)

    def _lost(self, conn: Connection | None) -> None:
        """The child behind ``conn`` is gone: fail what it held (caller holds ``_io``)."""
        if conn is None or conn is not self._conn:
            return  # an earlier child's reader, or already handled
        code = self._stop(ask=False)
        why = "hit a device (CUDA) error" if code == DEVICE_FAULT_EXIT else "died"
        while self._pending:
            self._pending.popleft().future.set_exception(
                WorkerError(
                    f"the model worker {why} while scoring this batch (exit code {code}); "
                    "a new one starts with the next batch: retry"
                )
            )

    def _start(self) -> dict[str, Any]:
        """Start a child and return its "ready" message; ModelLoadError if it fails."""
        # The first child may have been started early by ``serve`` (its imports overlapping
        # ours), at the priority this process started with. Later ones are started from the
        # launcher thread, whose CPU priority the server leaves as it was
        # (service.priority): a new worker inherits it.
        process, ours = take_prestarted() or self._launcher.submit(spawn).result()
        conn = Connection(ours.detach())
        try:
            fields = dataclasses.asdict(self._config)
            # 0: the worker computes as this process would; a process that never loaded
            # torch (the gRPC server) has torch's default, which the worker gets by itself.
            if not fields["torch_threads"] and "torch" in sys.modules:
                fields["torch_threads"] = sys.modules["torch"].get_num_threads()
            conn.send_bytes(pack({"op": "load", "config": fields}))
            if not conn.poll(self._start_timeout):
                raise ModelLoadError(
                    f"the model worker did not load the model within {self._start_timeout:g} s"
                )
            meta, _ = unpack(conn.recv_bytes())
        except (EOFError, OSError):
            code = _reap(process)
            meta = {"message": f"the model worker exited while loading (exit code {code})"}
        except ModelLoadError as exc:
            meta = {"message": str(exc)}
        batches = None
        if meta.get("op") == "ready" and self._shared_memory:
            try:
                batches = self._share(conn, meta["spec"])
            except (EOFError, OSError) as exc:
                meta = {"message": f"the model worker did not take its shared buffer: {exc}"}
        if meta.get("op") != "ready":
            conn.close()
            _reap(process)
            raise ModelLoadError(str(meta.get("message", "the model worker failed to start")))
        self._process, self._conn, self._batches = process, conn, batches
        # Failing the batches and reaping the child can wait: not on the loop.
        self._reader = LoopReader(
            event_loop(),
            conn,
            self._answer,
            lambda: threading.Thread(target=self._gone, args=(conn,), daemon=True).start(),
        )
        log.info("model worker started (pid %d)", process.pid)
        return meta

    def _share(self, conn: Connection, spec: dict[str, Any]) -> SharedBatches | None:
        """Make a shared buffer for the child that just said "ready" (``spec``: its input
        spec) and hand it over; None (logged) when it cannot be made or the child cannot
        map it. OSError or EOFError when the child dies or does not answer (a late answer
        would be taken for a batch's: that child is not kept)."""
        size = slot_size(self._config.max_batch_size, spec["shape"], spec["dtype"])
        batches = SharedBatches.create(self.max_in_flight, size)
        if batches is None:
            return None
        try:
            conn.send_bytes(pack({"op": "batches", **batches.layout}))
            batches.send_to(conn)
            if not conn.poll(self._start_timeout):
                raise TimeoutError(f"no answer within {self._start_timeout:g} s")
            reply, _ = unpack(conn.recv_bytes())
            if reply.get("op") != "batches":
                raise SharedBatchError(str(reply.get("message", reply)))
        except SharedBatchError as exc:
            batches.close()
            log.warning("batches go to the model worker over its socket: %s", exc)
            return None
        except BaseException:
            batches.close()
            raise
        return batches

    def _stop(self, ask: bool = True) -> int | None:
        """Ask the child to exit (``ask``; not when it is known dead), kill it if it does
        not, and drop its shared buffer; its exit code (caller holds ``_io``)."""
        process, conn, reader = self._process, self._conn, self._reader
        batches, self._batches = self._batches, None
        self._process = self._conn = self._reader = None
        if reader is not None:
            reader.close()
        if batches is not None:
            batches.close()  # a slot still being written keeps its mapping until done
        if process is None:
            return None
        if conn is not None:
            if ask:
                try:
                    conn.send_bytes(pack({"op": "stop"}))
                except OSError:
                    pass  # already gone
            conn.close()
        return _reap(process)


@dataclasses.dataclass(frozen=True, eq=False)
class _Pending:
    """A batch with the child: its answer's Future and the shared slot it was sent in."""

    future: Future[Verdicts]
    batches: SharedBatches | None
    slot: int | None

    def release(self) -> None:
        """The child is done with the batch: its slot may be written again."""
        if self.batches is not None and self.slot is not None:
            self.batches.give_back(self.slot)


def _reap(process: subprocess.Popen[bytes]) -> int:
    """Wait for ``process`` to exit (it was asked to, or its pipe closed), killing it if it
    does not within STOP_TIMEOUT; its exit code."""
    try:
        return process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(STOP_TIMEOUT)


def worker_main(conn: Connection) -> None:
    """The child: take the "load" message, load, say "ready" (or "error"), then answer
    "check" messages until "stop" or until the server process goes away."""
    # Ctrl-C reaches the whole process group and SIGTERM may too: the server drains first
    # and then stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # torch, the library and onnxruntime load before the "load" message arrives: a worker
    # started early by ``serve`` imports them while the server imports its own.
    from detectors.faults import is_device_fault
    from service.loader import build_pipeline

    try:
        meta, _ = unpack(conn.recv_bytes())
        config = build_config(meta["config"])
        apply_threads(config)
        pipeline = build_pipeline(config)
    except (EOFError, OSError):
        return
    except Exception as exc:
        conn.send_bytes(pack({"op": "error", "message": str(exc)}))
        return
    ready = {
        "op": "ready",
        "pid": os.getpid(),
        "device": str(pipeline.device),
        "spec": dataclasses.asdict(pipeline.spec),
        "manifest": pipeline.manifest,
    }
    conn.send_bytes(pack(ready))
    batches: AttachedBatches | None = None
    while True:
        try:
            meta, arrays = unpack(conn.recv_bytes())
            if meta.get("op") == "batches":  # the shared buffer's descriptor follows
                try:
                    batches = AttachedBatches.receive(conn, meta)
                    conn.send_bytes(pack({"op": "batches"}))
                except SharedBatchError as exc:
                    conn.send_bytes(pack({"op": "error", "message": str(exc)}))
                continue
        except (EOFError, OSError):
            return  # the server process is gone
        if meta.get("op") == "stop":
            return
        try:
            if "slot" in meta:
                if batches is None:
                    raise SharedBatchError("a batch names a slot but no buffer is shared")
                x = batches.batch(meta)  # read in place: the server leaves it until answered
            else:
                # The received array is a read-only view of the message; torch wants its own.
                x = np.array(arrays["x"])
            verdicts = pipeline._check(x)
            del x
            reply = pack_verdicts(verdicts)
        except DeviceMemoryError as exc:
            reply = pack({"op": "error", "message": str(exc), "kind": "out_of_memory"})
        except Exception as exc:
            if is_device_fault(exc):
                # CUDA errors are sticky: every later batch would fail in this process. The
                # server fails this batch (UNAVAILABLE) and starts a new worker.
                log.critical("device fault, the model worker exits: %s", exc)
                logging.shutdown()
                os._exit(DEVICE_FAULT_EXIT)
            log.exception("scoring a batch failed")
            reply = pack({"op": "error", "message": f"{type(exc).__name__}: {exc}"})
        conn.send_bytes(reply)


if __name__ == "__main__":
    worker_main(Connection(int(sys.argv[1])))
