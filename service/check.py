"""``gradsentry check``: score files, or the demo's four kinds of input, on a running sidecar.

``gradsentry check FILE...`` sends each PNG, JPEG or .npy file and prints one line per
file: prediction, verdict, score against the threshold, most likely kind (when flagged). A
file the server (or the client) refuses prints an error line and the exit code is 1.
``gradsentry check --demo`` crafts clean, adversarial (FGSM from the challenge registry),
corrupted (Gaussian noise) and out-of-distribution (uniform noise) inputs from the bundled
sample digits and prints a table. A server that cannot be reached (or refuses the caller)
is a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from service.client import CheckResult, InputError, ReliabilityClient, RequestError
from service.security import read_token

DEFAULT_TARGET = "127.0.0.1:50051"
# The demo's inputs: (kind, challenge spec or None for the clean digits). FGSM and the two
# noises are what the demo detector was fitted on (detectors.demo.sets.FIT_CHALLENGES).
DEMO_SETS: tuple[tuple[str, str | None], ...] = (
    ("clean", None),
    ("adversarial", "fgsm:eps=0.2"),
    ("corrupted", "corruption:type=gaussian_noise,severity=3"),
    ("ood", "ood:source=uniform"),
)
DEMO_PER_KIND = 3
DEMO_SEED = 0


class CheckError(RuntimeError):
    """The check cannot go on (server unreachable, caller refused...): one line, exit 2."""


#: The errors ``gradsentry check`` prints as one line with exit code 2.
USER_ERRORS: tuple[type[Exception], ...] = (CheckError,)


@dataclass(frozen=True)
class DemoInput:
    """One demo input: ``image`` float32 [1, 28, 28] in [0, 1]; ``true_label`` None for OOD."""

    kind: str
    true_label: int | None
    image: np.ndarray


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``gradsentry check``; sets ``run``."""
    p.description = __doc__.split("\n\n")[1].replace("\n", " ").replace("``", "")
    p.add_argument("files", nargs="*", metavar="FILE", help=".png, .jpg, .jpeg or .npy")
    p.add_argument(
        "--demo",
        action="store_true",
        help="send the demo's clean, adversarial, corrupted and OOD inputs and print a table",
    )
    p.add_argument(
        "--target",
        default=DEFAULT_TARGET,
        metavar="HOST:PORT",
        help=f"the sidecar's gRPC address (default {DEFAULT_TARGET})",
    )
    p.add_argument(
        "--tls-ca", metavar="FILE", help="PEM CA that signed the server certificate (turns on TLS)"
    )
    p.add_argument("--cert", metavar="FILE", help="PEM client certificate (mutual TLS)")
    p.add_argument("--key", metavar="FILE", help="PEM key of --cert")
    p.add_argument("--token-file", metavar="FILE", help="file holding the bearer token")
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="per-call timeout (default 30)",
    )
    p.set_defaults(run=run)


def client_from_args(args: argparse.Namespace) -> ReliabilityClient:
    """A client for the connection flags; CheckError for unusable TLS or token files."""
    token = read_token(args.token_file, key="--token-file") if args.token_file else None
    if (args.cert is None) != (args.key is None):
        raise CheckError("--cert and --key go together (mutual TLS)")
    try:
        return ReliabilityClient(
            args.target,
            tls_ca_file=args.tls_ca,
            client_cert_file=args.cert,
            client_key_file=args.key,
            token=token,
            timeout=args.timeout,
        )
    except (InputError, ValueError) as exc:
        raise CheckError(str(exc)) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def fatal(exc: RequestError) -> CheckError:
    """A CheckError for a call failure that ends the whole check."""
    if exc.code == grpc.StatusCode.UNAVAILABLE:
        return CheckError(f"cannot reach the sidecar at {exc.target}: {_one_line(exc.details)}")
    if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CheckError(f"no answer from the sidecar at {exc.target} in time (see --timeout)")
    if exc.code == grpc.StatusCode.UNAUTHENTICATED:
        return CheckError(
            f"the sidecar at {exc.target} refused the caller: {_one_line(exc.details)} "
            "(pass its token with --token-file)"
        )
    return CheckError(f"{exc.target}: {exc.code.name}: {_one_line(exc.details)}")


def shown_kind(result: CheckResult) -> str:
    """The most likely kind for a flagged input; "-" for a reliable one (where the kind
    scores carry no meaning) or when the detector has no kinds."""
    return (result.kind or "-") if result.flagged else "-"


def describe(result: CheckResult) -> str:
    """``predicted 7  FLAGGED  score 0.9912 (threshold 0.0140)  kind adversarial``."""
    label = (
        f" ({result.label})" if result.label and result.label != str(result.predicted_class) else ""
    )
    return (
        f"predicted {result.predicted_class}{label}  {result.verdict}  "
        f"score {result.score:.4f} (threshold {result.threshold:.4f})  kind {shown_kind(result)}"
    )


def check_files(client: ReliabilityClient, files: Sequence[str]) -> int:
    """One line per file on stdout; 1 if any file was refused, else 0."""
    status = 0
    for name in files:
        try:
            line = describe(client.check(name))
        except InputError as exc:
            line, status = f"error: {_one_line(str(exc))}", 1
        except RequestError as exc:
            if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
                raise fatal(exc) from None
            line, status = f"error: {_one_line(exc.details)}", 1
        print(f"{name}: {line}", flush=True)
    return status


def demo_inputs(per_kind: int = DEMO_PER_KIND, seed: int = DEMO_SEED) -> list[DemoInput]:
    """``per_kind`` inputs of each DEMO_SETS kind, made from the bundled sample digits."""
    # The lab (torch, attacks, corruptions) is only needed here, not for file checks.
    try:
        from detectors.challenges import ChallengeContext, parse_spec
    except ImportError as exc:
        raise CheckError(
            f"--demo makes its inputs with the lab extra ({exc.name} is missing): "
            "pip install 'gradsentry[lab]'"
        ) from None
    from detectors.demo import ARTIFACTS, load_demo_model

    samples = np.load(ARTIFACTS / "samples.npz")
    images = (samples["images"][:per_kind].astype(np.float32) / 255.0)[:, None]
    labels = samples["labels"][:per_kind].astype(np.int64)
    model = load_demo_model()
    out: list[DemoInput] = []
    for kind, spec in DEMO_SETS:
        if spec is None:
            batch = images
        else:
            batch = parse_spec(spec).generate(ChallengeContext(images, labels, model, seed))
        for image, label in zip(batch, labels, strict=True):
            out.append(DemoInput(kind, None if kind == "ood" else int(label), image))
    return out


def demo_table(inputs: Sequence[DemoInput], results: Sequence[CheckResult]) -> str:
    """A fixed-width table, one row per input, and a flagged-per-kind summary line."""
    header = ("input", "true", "predicted", "verdict", "score", "kind")
    rows = [
        (
            d.kind,
            "-" if d.true_label is None else str(d.true_label),
            str(r.predicted_class),
            r.verdict,
            f"{r.score:.4f}",
            shown_kind(r),
        )
        for d, r in zip(inputs, results, strict=True)
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    counts = []
    for kind, _ in DEMO_SETS:
        flags = [r.flagged for d, r in zip(inputs, results, strict=True) if d.kind == kind]
        counts.append(f"{kind} {sum(flags)}/{len(flags)}")
    threshold = results[0].threshold if results else float("nan")
    lines.append(f"flagged (score >= {threshold:.4f}): " + ", ".join(counts))
    return "\n".join(lines)


def _bundled_fingerprint() -> str:
    from detectors.demo import ARTIFACTS

    manifest = json.loads((ARTIFACTS / "bundle" / "manifest.json").read_text(encoding="utf-8"))
    return str(manifest["model_fingerprint"])


def check_demo(client: ReliabilityClient) -> int:
    """Send the demo inputs in one batch and print the table."""
    info = client.info()
    if info.input_shape != (1, 28, 28):
        raise CheckError(
            f"--demo sends 1x28x28 digits but the sidecar at {client.target} takes "
            f"{list(info.input_shape)}; run it against the bundled demo (`gradsentry serve`)"
        )
    if info.model_fingerprint != _bundled_fingerprint():
        print(
            "note: the sidecar serves another model than the bundled demo; the adversarial "
            "inputs were crafted against the demo model",
            file=sys.stderr,
        )
    inputs = demo_inputs()
    results = client.check_batch([d.image for d in inputs])
    print(demo_table(inputs, results), flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry of ``gradsentry check``."""
    if args.demo == bool(args.files):
        raise CheckError("give FILE arguments or --demo (one of the two)")
    for name in args.files:
        if not Path(name).is_file():
            raise CheckError(f"no such file: {name}")
    with client_from_args(args) as client:
        try:
            return check_demo(client) if args.demo else check_files(client, args.files)
        except RequestError as exc:
            raise fatal(exc) from None
