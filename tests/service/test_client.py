"""ReliabilityClient and ``gradsentry check`` against the real demo server (port 0)."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from detectors.sentry import Sentry, Verdicts
from service import check, cli
from service.client import CheckResult, InputError, ReliabilityClient, RequestError
from service.server import SentryServer
from tests.servers import FEATURE_ATOL, FEATURE_RTOL, SCORE_ATOL, calls_ended, wait_calls_ended

N = 4  # sample digits used here


def as_float(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[:, None]


def png_bytes(image: np.ndarray) -> bytes:
    """image uint8 [28, 28] -> PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def assert_matches(result: CheckResult, v: Verdicts, i: int) -> None:
    """A client result equals row i of a direct Sentry.check."""
    assert result.predicted_class == int(v.predicted[i])
    assert result.label == str(int(v.predicted[i]))
    assert result.score == pytest.approx(float(v.score[i]), abs=SCORE_ATOL)
    assert result.verdict == ("FLAGGED" if v.flagged[i] else "RELIABLE")
    assert result.flagged == bool(v.flagged[i])
    assert result.kind == v.kind[i]
    expected = {k: float(s[i]) for k, s in v.kind_scores.items()}
    assert result.kind_scores == pytest.approx(expected, abs=SCORE_ATOL)


@pytest.fixture(scope="module")
def images(samples) -> np.ndarray:
    """uint8 [N, 28, 28]."""
    return samples[0][:N]


@pytest.fixture(scope="module")
def reference(images: np.ndarray, sentry: Sentry) -> Verdicts:
    return sentry.check(torch.from_numpy(as_float(images)))


@pytest.fixture(scope="module")
def target(server: tuple[SentryServer, int]) -> str:
    return f"127.0.0.1:{server[1]}"


@pytest.fixture
def client(target: str):
    with ReliabilityClient(target, timeout=30) as c:
        yield c


def test_array_forms_match_sentry(client: ReliabilityClient, images, reference) -> None:
    x = as_float(images)
    for i in range(N):
        forms = [
            x[i],  # float32 [1, 28, 28]
            x[i, 0],  # float32 [28, 28]
            x[i][None],  # float32 [1, 1, 28, 28]
            x[i].astype(np.float64),
            x[i].astype(">f4"),  # big-endian: converted on the client
            images[i],  # uint8 [28, 28], 0..255
        ]
        for form in forms:
            assert_matches(client.check(form), reference, i)


def test_encoded_images_and_files_match_sentry(
    client: ReliabilityClient, images, reference, tmp_path: Path
) -> None:
    for i in range(N):
        data = png_bytes(images[i])
        assert_matches(client.check(data), reference, i)
        assert_matches(client.check(bytearray(data)), reference, i)
        png = tmp_path / f"digit{i}.PNG"  # suffixes are case-insensitive
        png.write_bytes(data)
        assert_matches(client.check(png), reference, i)
        assert_matches(client.check(str(png)), reference, i)
        npy_u8, npy_f32 = tmp_path / f"u8_{i}.npy", tmp_path / f"f32_{i}.npy"
        np.save(npy_u8, images[i])
        np.save(npy_f32, as_float(images)[i])
        assert_matches(client.check(npy_u8), reference, i)
        assert_matches(client.check(npy_f32), reference, i)
    # JPEG is lossy: the server scores the decoded pixels, which must be what PIL decodes.
    jpg = tmp_path / "digit.jpeg"
    Image.fromarray(images[0], mode="L").save(jpg, format="JPEG", quality=95)
    decoded = np.asarray(Image.open(jpg).convert("L"))
    assert client.check(jpg).score == pytest.approx(client.check(decoded).score, abs=1e-6)


def test_batch_options_and_result_fields(
    client: ReliabilityClient, images, reference, sentry: Sentry, tmp_path: Path
) -> None:
    npy = tmp_path / "d.npy"
    np.save(npy, images[3])
    items = [as_float(images)[0], png_bytes(images[1]), images[2], npy]
    results = client.check_batch(items, return_probabilities=True, return_features=True)
    assert len(results) == N
    for i, result in enumerate(results):
        assert_matches(result, reference, i)
        assert result.probabilities.dtype == np.float32
        np.testing.assert_allclose(
            result.probabilities, reference.probabilities[i], atol=SCORE_ATOL
        )
        assert result.features.shape == (reference.features.shape[1],)
        np.testing.assert_allclose(
            result.features, reference.features[i], rtol=FEATURE_RTOL, atol=FEATURE_ATOL
        )
        assert result.threshold == pytest.approx(sentry.threshold)
        assert result.request_id.endswith(f"/{i}")
        t = result.timings
        assert t.decode > 0 and t.forward > 0 and t.backward > 0 and t.detector > 0
        assert t.queue >= 0 and t.statistics >= 0
    plain = client.check(images[0], request_id="mine")
    assert plain.request_id == "mine"
    assert plain.probabilities.size == 0 and plain.features.size == 0


def test_stream_matches_sentry_in_order(
    client: ReliabilityClient, images, reference, tmp_path: Path
) -> None:
    npy = tmp_path / "s.npy"
    np.save(npy, images[3])
    items = [as_float(images)[0], png_bytes(images[1]), images[2], npy]
    results = list(client.check_stream(iter(items), return_features=True))
    assert len(results) == N
    ids = {r.request_id.rsplit("/", 1)[0] for r in results}
    assert len(ids) == 1  # one stream
    for i, result in enumerate(results):
        assert_matches(result, reference, i)
        assert result.request_id.endswith(f"/{i}")
        np.testing.assert_allclose(
            result.features, reference.features[i], rtol=FEATURE_RTOL, atol=FEATURE_ATOL
        )
        assert result.probabilities.size == 0
    assert list(client.check_stream([])) == []


def test_stream_errors_name_the_input_after_the_results_before_it(
    client: ReliabilityClient, images, reference, server: tuple[SentryServer, int]
) -> None:
    # An input the client cannot send: the stream ends after the results before it.
    results = []
    with pytest.raises(InputError, match="input 2: "):
        for result in client.check_stream([images[0], images[1], "digit.gif", images[3]]):
            results.append(result)
    assert [r.predicted_class for r in results] == [int(p) for p in reference.predicted[:2]]
    # An input the server refuses ends the stream with INVALID_ARGUMENT naming it.
    results = []
    bad = np.full((28, 28), 2.0, np.float32)
    with pytest.raises(RequestError) as err:
        for result in client.check_stream([images[0], bad, images[2]]):
            results.append(result)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "stream message 1" in err.value.details and "out of range" in err.value.details
    assert len(results) == 1
    assert_matches(results[0], reference, 0)
    # A caller that stops early cancels its stream at the server; the next is served.
    cancelled = calls_ended(server[0], "CheckStream", "CANCELLED")
    stream = client.check_stream(images[i % N] for i in range(1000))
    assert_matches(next(stream), reference, 0)
    stream.close()
    assert wait_calls_ended(server[0], "CheckStream", "CANCELLED", cancelled + 1) == cancelled + 1
    assert_matches(next(client.check_stream([images[1]])), reference, 1)


def test_info_and_health(client: ReliabilityClient, sentry: Sentry) -> None:
    info = client.info()
    manifest = sentry.bundle.manifest
    assert info.input_shape == (1, 28, 28)
    assert info.input_dtype == "float32"
    assert info.value_range == (0.0, 1.0)
    assert (info.mean, info.std) == ((), ())
    assert info.labels == tuple(str(d) for d in range(10))
    assert info.feature_names == tuple(c["name"] for c in manifest["feature_schema"])
    assert info.kinds == tuple(manifest["kinds"])
    assert info.threshold == pytest.approx(manifest["threshold"])
    assert info.model_fingerprint == manifest["model_fingerprint"]
    assert info.versions["server.grpcio"] == grpc.__version__
    assert info.max_batch_size >= 1
    assert client.health() == "SERVING"
    assert client.health("gradsentry.v1.Reliability") == "SERVING"
    with pytest.raises(RequestError) as err:
        client.health("no.such.Service")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_inputs_the_client_refuses(client: ReliabilityClient, tmp_path: Path) -> None:
    bad_suffix = tmp_path / "digit.gif"
    bad_suffix.write_bytes(b"GIF89a")
    cases = {
        "unsupported file type '.gif'": bad_suffix,
        "cannot read image": tmp_path / "missing.png",
        "dtype int64 cannot be sent": np.zeros((28, 28), np.int64),
        "must be [H, W], [C, H, W] or [1, C, H, W]": np.zeros(784, np.float32),
        "neither PNG nor JPEG": b"GIF89a not an image",
        "cannot send a list": [0.0] * 784,
    }
    not_png = tmp_path / "fake.png"
    not_png.write_bytes(b"hello")
    cases[f"{not_png}: image bytes are neither PNG nor JPEG"] = not_png
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases["is not a plain numeric .npy array"] = pickled
    for message, item in cases.items():
        with pytest.raises(InputError) as err:
            client.check(item)  # type: ignore[arg-type]
        assert message in str(err.value)
    with pytest.raises(InputError, match="input 1: arrays of dtype int64"):
        client.check_batch([np.zeros((28, 28), np.uint8), np.zeros((28, 28), np.int64)])
    with pytest.raises(InputError, match="at least one input"):
        client.check_batch([])
    with pytest.raises(ValueError, match="timeout"):
        ReliabilityClient("127.0.0.1:1", timeout=0)


def test_server_refusals_and_unreachable_servers(client: ReliabilityClient) -> None:
    with pytest.raises(RequestError) as err:
        client.check(np.zeros((1, 32, 32), np.float32))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "wrong tensor shape [1, 32, 32]" in err.value.details
    assert not err.value.unreachable
    with pytest.raises(RequestError) as err:
        client.check(np.full((28, 28), 2.0, np.float32))
    assert "out of range" in str(err.value)
    with ReliabilityClient(f"127.0.0.1:{_closed_port()}", timeout=10) as nowhere:
        with pytest.raises(RequestError) as err:
            nowhere.health()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.unreachable


def test_context_manager_closes_the_channel(target: str, images) -> None:
    with ReliabilityClient(target) as c:
        assert c.check(images[0]).predicted_class == 3
    with pytest.raises(ValueError, match="closed channel"):
        c.check(images[0])


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- gradsentry check ---------------------------------------------------------------------


def test_check_cli_prints_one_line_per_file(
    target: str, images, reference, sentry: Sentry, tmp_path, capsys
):
    png, npy, jpg = tmp_path / "a.png", tmp_path / "b.npy", tmp_path / "c.jpg"
    png.write_bytes(png_bytes(images[0]))
    np.save(npy, as_float(images)[1])
    Image.fromarray(images[2], mode="L").save(jpg, format="JPEG", quality=95)
    assert cli.main(["check", str(png), str(npy), str(jpg), "--target", target]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for i, (line, path) in enumerate(zip(lines, (png, npy, jpg), strict=True)):
        assert line.startswith(f"{path}: predicted {int(reference.predicted[i])}  RELIABLE  ")
        assert "score 0.0" in line and f"(threshold {sentry.threshold:.4f})" in line
        assert line.endswith("kind -")
    # A file the server refuses: an error line, the others still checked, exit code 1.
    big = tmp_path / "big.png"
    Image.new("L", (32, 32)).save(big)
    assert cli.main(["check", str(big), str(png), "--target", target]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{big}: error: wrong image size 32x32 (width x height): this model " + (
        "takes 28x28; resize it on the client"
    )
    assert lines[1].startswith(f"{png}: predicted 3  RELIABLE")


def test_check_cli_usage_and_connection_errors(target: str, tmp_path: Path, capsys) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(png_bytes(np.zeros((28, 28), np.uint8)))
    nowhere = f"127.0.0.1:{_closed_port()}"
    assert cli.main(["check", str(png), "--target", nowhere, "--timeout", "10"]) == 2
    captured = capsys.readouterr()
    err = captured.err.rstrip("\n")
    assert err.startswith(f"gradsentry check: error: cannot reach the sidecar at {nowhere}: ")
    assert "\n" not in err and captured.out == ""
    # A listener that never speaks gRPC: the call runs out of time.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        mute = f"127.0.0.1:{silent.getsockname()[1]}"
        assert cli.main(["check", str(png), "--target", mute, "--timeout", "1"]) == 2
    assert "no answer from the sidecar at" in capsys.readouterr().err
    assert cli.main(["check", "--target", target]) == 2
    assert "give FILE arguments or --demo" in capsys.readouterr().err
    assert cli.main(["check", str(png), "--demo", "--target", target]) == 2
    assert cli.main(["check", str(tmp_path / "missing.png"), "--target", target]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["check", str(png), "--cert", str(png), "--target", target]) == 2
    assert "--cert and --key go together" in capsys.readouterr().err


def test_check_demo_table(target: str, sentry: Sentry, capsys) -> None:
    """``--demo`` picks the served demo (MNIST) by its model fingerprint; every row shows
    what the in-process Sentry says of the same input, kind included."""
    assert cli.main(["check", "--demo", "--target", target]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # the server runs the bundled demo model: no note
    lines = captured.out.splitlines()
    assert lines[0] == "demo: mnist"
    assert lines[1].split() == ["input", "true", "predicted", "verdict", "score", "kind"]
    rows = [line.split() for line in lines[2:-1]]
    kinds = [row[0] for row in rows]
    assert kinds == ["clean"] * 3 + ["adversarial"] * 3 + ["corrupted"] * 3 + ["ood"] * 3
    inputs = check.demo_inputs("mnist")
    assert [d.kind for d in inputs] == kinds
    ref = sentry.check(torch.from_numpy(np.stack([d.image for d in inputs])))
    assert [int(row[2]) for row in rows] == ref.predicted.tolist()
    assert [row[3] == "FLAGGED" for row in rows] == ref.flagged.tolist()
    # the kind scores' top two differ by > 0.3 on these inputs, far beyond SCORE_ATOL, so
    # the server's batch composition cannot swap them
    shown = [k if f else "-" for k, f in zip(ref.kind, ref.flagged, strict=True)]
    assert [row[5] for row in rows] == shown
    # the clean digits pass; FGSM, Gaussian noise and uniform noise (the fitted kinds) are
    # flagged, and the two noises are named for what they are
    assert all(row[1] == "-" for row in rows if row[0] == "ood")
    assert lines[-1].endswith("clean 0/3, adversarial 3/3, corrupted 3/3, ood 3/3")
    assert [row[5] for row in rows if row[0] in ("corrupted", "ood")] == kinds[6:]


def test_check_demo_by_name(target: str, capsys) -> None:
    """``--demo fashion`` on the MNIST sidecar sends Fashion-MNIST inputs and says on stderr
    that the adversarial ones were crafted against another model; an unknown name is a
    one-line error before any call."""
    assert cli.main(["check", "--demo", "fashion", "--target", target]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "demo: fashion"
    assert captured.err.startswith("note: the sidecar serves another model than the bundled")
    nowhere = f"127.0.0.1:{_closed_port()}"
    assert cli.main(["check", "--demo", "cifar", "--target", nowhere]) == 2
    err = capsys.readouterr().err
    assert err == (
        "gradsentry check: error: --demo cifar: no such demo (choose from fashion, mnist)\n"
    )
