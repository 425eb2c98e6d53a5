"""A real TorchServe beside gradsentry, for the side-by-side test and benchmark.

- ``build_mar(dest)``: the demo model archived by the real ``torch-model-archiver`` as an
  eager .mar (``model.py`` = the demo's source, ``model.pt`` = its state dict) with
  ``HANDLER``: raw float32 ``[1, 28, 28]`` bytes in, softmax probabilities out.
  TorchServe's built-in image handlers import torchvision, which does not install beside
  this torch; this handler needs only torch and numpy.
- ``TorchServe(store, workdir, ...)``: ``torchserve --foreground`` on 127.0.0.1 with free
  ports, its own config, logs and temp directory, token auth off, no config snapshots; the
  model is registered through the management API with TorchServe's dynamic batching
  (``batch_size`` / ``max_batch_delay``) and polled there until every worker is READY.
  ``stop()`` ends the launcher's process group (launcher, JVM, Python workers).
- ``inference_protos(dest)``: TorchServe's gRPC inference API compiled from the
  ``inference.proto`` shipped inside its jar (with the ``google/rpc/status.proto`` it
  imports), so the client always matches the installed server.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from detectors.demo import ARTIFACTS  # noqa: E402

MODEL_NAME = "mnist"
START_TIMEOUT = 180.0  # JVM start + worker start (imports torch) on a loaded machine
HANDLER = '''"""TorchServe handler for the gradsentry demo: float32 [1, 28, 28] in, probabilities.

Each request carries the little-endian float32 bytes of one image in [0, 1] under "data"
(gRPC input map) or as the body (HTTP); the model normalises inside. The reply is the
softmax of the logits, 10 floats.
"""

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler

SHAPE = (1, 28, 28)


class ProbabilityHandler(BaseHandler):
    def initialize(self, context):
        torch.set_num_threads(1)  # one intra-op thread, like the gradsentry it is compared to
        super().initialize(context)

    def preprocess(self, data):
        rows = []
        for row in data:
            payload = row.get("data") if row.get("data") is not None else row.get("body")
            x = np.frombuffer(bytes(payload), dtype="<f4")
            if x.size != 28 * 28:
                raise ValueError(f"expected {28 * 28} float32 values, got {x.size}")
            rows.append(torch.from_numpy(x.copy()).view(SHAPE))
        return torch.stack(rows)

    def postprocess(self, data):
        return data.softmax(1).tolist()
'''


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_server_jar() -> Path:
    """The installed TorchServe frontend jar (``ts/frontend/model-server.jar``)."""
    spec = importlib.util.find_spec("ts")
    if spec is None or spec.origin is None:
        raise RuntimeError("TorchServe is not installed (pip install --no-deps torchserve)")
    jar = Path(spec.origin).parent / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise RuntimeError(f"TorchServe's frontend jar is missing: {jar}")
    return jar


def inference_protos(dest: Path) -> tuple[ModuleType, ModuleType]:
    """(inference_pb2, inference_pb2_grpc) compiled into ``dest`` from the jar's protos."""
    from grpc_tools import protoc

    protos = dest / "protos"
    with zipfile.ZipFile(model_server_jar()) as jar:
        for name in ("inference.proto", "google/rpc/status.proto"):
            target = protos / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(jar.read(name))
    out = dest / "stubs"
    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{protos}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "inference.proto",
        "google/rpc/status.proto",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("grpc_tools.protoc failed on TorchServe's inference.proto")
    # ``google`` is a namespace package: google.rpc resolves from ``out`` once it is on the path.
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    return importlib.import_module("inference_pb2"), importlib.import_module("inference_pb2_grpc")


def build_mar(dest: Path, name: str = MODEL_NAME) -> Path:
    """The demo model as ``dest/<name>.mar``, written by torch-model-archiver (eager archive:
    model.py + state dict, ``HANDLER``, index_to_name.json with the digit names and an
    input_spec.json gradsentry reads)."""
    src = dest / "mar-src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "model.py").write_text(
        (ROOT / "detectors" / "demo" / "model.py").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (src / "handler.py").write_text(HANDLER, encoding="utf-8")
    (src / "index_to_name.json").write_text(
        json.dumps({str(d): str(d) for d in range(10)}), encoding="utf-8"
    )
    (src / "input_spec.json").write_text(
        json.dumps({"shape": [1, 28, 28], "dtype": "float32", "value_range": [0, 1]}),
        encoding="utf-8",
    )
    extra = ",".join(str(src / f) for f in ("index_to_name.json", "input_spec.json"))
    tmp = dest / "archiver-tmp"  # the archiver stages files in $TMPDIR/<name>
    tmp.mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "model_archiver.model_packaging",
        "--model-name",
        name,
        "--version",
        "1.0",
        "--model-file",
        str(src / "model.py"),
        "--serialized-file",
        str(ARTIFACTS / "model.pt"),
        "--handler",
        str(src / "handler.py"),
        "--extra-files",
        extra,
        "--export-path",
        str(dest),
        "--force",
    ]
    env = {**os.environ, "TMPDIR": str(tmp)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    mar = dest / f"{name}.mar"
    if done.returncode != 0 or not mar.is_file():
        raise RuntimeError(f"torch-model-archiver failed:\n{done.stdout}\n{done.stderr}")
    return mar


class TorchServe:
    """``torchserve --foreground`` serving one .mar on 127.0.0.1; a context manager."""

    def __init__(
        self,
        mar: Path,
        workdir: Path,
        batch_size: int = 1,
        max_batch_delay_ms: int = 0,
        workers: int = 1,
        netty_threads: int = 4,
    ) -> None:
        self.mar = mar
        self.workdir = workdir
        self.batch_size = batch_size
        self.max_batch_delay_ms = max_batch_delay_ms
        self.workers = workers
        self.netty_threads = netty_threads
        self.http_port, self.management_port, self.metrics_port = (free_port() for _ in range(3))
        self.grpc_port, self.grpc_management_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "torchserve.out"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def __enter__(self) -> TorchServe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start, register the model with batching, wait until every worker is READY."""
        tmp = self.workdir / "tmp"
        logs = self.workdir / "logs"
        for d in (tmp, logs):
            d.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.properties"
        config.write_text(
            "\n".join(
                [
                    f"inference_address=http://127.0.0.1:{self.http_port}",
                    f"management_address=http://127.0.0.1:{self.management_port}",
                    f"metrics_address=http://127.0.0.1:{self.metrics_port}",
                    "grpc_inference_address=127.0.0.1",
                    f"grpc_inference_port={self.grpc_port}",
                    "grpc_management_address=127.0.0.1",
                    f"grpc_management_port={self.grpc_management_port}",
                    f"model_store={self.mar.parent}",
                    "default_workers_per_model=1",
                    f"number_of_netty_threads={self.netty_threads}",
                    "job_queue_size=1000",
                    "disable_system_metrics=true",
                    # Registration through the management API (off by default since 0.11).
                    "enable_model_api=true",
                    "vmargs=-Xmx512m -XX:+UseSerialGC",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "LOG_LOCATION": str(logs),
            "METRICS_LOCATION": str(logs),
            "TEMP": str(tmp),  # the JVM's temp dir: unpacked archives
            "TMPDIR": str(tmp),  # the launcher's pid file
        }
        env.pop("TS_CONFIG_FILE", None)
        launcher = [
            sys.executable,
            "-c",
            "from ts.model_server import start; start()",
            "--start",
            "--foreground",
            "--ncs",
            "--disable-token-auth",
            "--model-store",
            str(self.mar.parent),
            "--ts-config",
            str(config),
        ]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                launcher,
                cwd=self.workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends JVM + workers
            )
        try:
            self._register()
        except BaseException:
            self.stop()
            raise

    def _management(self, method: str, path: str, timeout: float = 10) -> Any:
        url = f"http://127.0.0.1:{self.management_port}{path}"
        request = urllib.request.Request(url, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read() or b"null")

    def _register(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # the management API answers once the frontend is up
            self._check_alive()
            try:
                self._management("GET", "/models", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(self._failure("management API never answered")) from None
                time.sleep(0.3)
        query = urllib.parse.urlencode(
            {
                "url": self.mar.name,
                "model_name": MODEL_NAME,
                "batch_size": self.batch_size,
                "max_batch_delay": self.max_batch_delay_ms,
                "initial_workers": self.workers,
                "synchronous": "false",
            }
        )
        try:
            self._management("POST", f"/models?{query}", timeout=60)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(
                self._failure(f"registering the model failed: {exc.read().decode()}")
            ) from None
        while True:  # READY workers, not /ping, say the model can serve
            self._check_alive()
            try:
                (described,) = self._management("GET", f"/models/{MODEL_NAME}", timeout=5)
                workers = described.get("workers", [])
                if len(workers) >= self.workers and all(
                    w.get("status") == "READY" for w in workers
                ):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(self._failure("model workers never became READY"))
            time.sleep(0.3)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(self._failure(f"torchserve exited with {self.proc.returncode}"))

    def _failure(self, what: str) -> str:
        tail = []
        for log in (self.log_path, self.workdir / "logs" / "model_log.log"):
            if log.is_file():
                tail.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-30:]))
        return f"TorchServe: {what}\n" + "\n".join(tail)

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 30 s."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        try:  # the JVM and workers may outlive the launcher
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc = None


def prediction_request(pb2: ModuleType, x: np.ndarray) -> Any:
    """A Predictions request for one image ``x`` float32 ``[1, 28, 28]``."""
    data = np.ascontiguousarray(x, dtype="<f4").tobytes()
    return pb2.PredictionsRequest(model_name=MODEL_NAME, input={"data": data})


def probabilities(reply: Any) -> np.ndarray:
    """The handler's probabilities ``[10]`` (float64) from a PredictionResponse."""
    return np.asarray(json.loads(reply.prediction), dtype=np.float64)
