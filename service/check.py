"""``gradsentry check``: score files, or the demo's four kinds of input, on a running sidecar.

``gradsentry check FILE...`` sends each PNG, JPEG or .npy file and prints one line per
file: prediction, verdict, score against the threshold, most likely kind (when flagged). A
file the server (or the client) refuses prints an error line and the exit code is 1.
``gradsentry check --demo [NAME]`` crafts clean inputs and one input set per challenge the
demo's detector was fitted on (adversarial FGSM, corrupted Gaussian noise, out-of-distribution
uniform noise) from a bundled demo's sample images and prints a table. Without NAME it picks
the bundled demo whose model the sidecar serves. A server that cannot be reached (or refuses
the caller) is a one-line error and exit code 2.
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
#: ``--demo`` without a name: the bundled demo whose model the sidecar serves.
SERVED_DEMO = "served"
#: The demo ``--demo`` falls back to when the sidecar serves none of the bundled models.
FALLBACK_DEMO = "mnist"
DEMO_PER_KIND = 3
DEMO_SEED = 0


class CheckError(RuntimeError):
    """The check cannot go on (server unreachable, caller refused...): one line, exit 2."""


#: The errors ``gradsentry check`` prints as one line with exit code 2.
USER_ERRORS: tuple[type[Exception], ...] = (CheckError,)


@dataclass(frozen=True)
class DemoInput:
    """One demo input: ``image`` float32 [1, 28, 28] in [0, 1]; ``true_label`` None for OOD;
    ``kind`` "clean" or the family of the challenge that made it."""

    kind: str
    true_label: int | None
    image: np.ndarray


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``gradsentry check``; sets ``run``."""
    p.description = __doc__.split("\n\n")[1].replace("\n", " ").replace("``", "")
    p.add_argument("files", nargs="*", metavar="FILE", help=".png, .jpg, .jpeg or .npy")
    p.add_argument(
        "--demo",
        nargs="?",
        const=SERVED_DEMO,
        metavar="NAME",
        help="send a bundled demo's clean, adversarial, corrupted and OOD inputs and print a "
        "table; NAME is mnist or fashion (default: the demo whose model the sidecar serves)",
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


def _lab() -> None:
    """CheckError unless the lab extra (torch, attacks, corruptions) is installed: only
    ``--demo`` needs it, not file checks."""
    try:
        import detectors.challenges  # noqa: F401
    except ImportError as exc:
        raise CheckError(
            f"--demo makes its inputs with the lab extra ({exc.name} is missing): "
            "pip install 'gradsentry[lab]'"
        ) from None


def demo_inputs(
    name: str = FALLBACK_DEMO, per_kind: int = DEMO_PER_KIND, seed: int = DEMO_SEED
) -> list[DemoInput]:
    """``per_kind`` clean sample images of demo ``name``, then ``per_kind`` made from them by
    each challenge its detector was fitted on, in the order of its ``fit_challenges``."""
    _lab()
    from detectors.challenges import ChallengeContext, parse_spec
    from detectors.demo.datasets import datasets

    demo = datasets()[name]
    samples = np.load(demo.artifacts / "samples.npz")
    images = (samples["images"][:per_kind].astype(np.float32) / 255.0)[:, None]
    labels = samples["labels"][:per_kind].astype(np.int64)
    model = demo.load_model()
    out = [DemoInput("clean", int(y), x) for x, y in zip(images, labels, strict=True)]
    for spec in demo.fit_challenges:
        challenge = parse_spec(spec)
        batch = challenge.generate(ChallengeContext(images, labels, model, seed))
        ood = challenge.kind == "ood"
        out += [
            DemoInput(challenge.kind, None if ood else int(y), x)
            for x, y in zip(batch, labels, strict=True)
        ]
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
    for kind in dict.fromkeys(d.kind for d in inputs):
        flags = [r.flagged for d, r in zip(inputs, results, strict=True) if d.kind == kind]
        counts.append(f"{kind} {sum(flags)}/{len(flags)}")
    threshold = results[0].threshold if results else float("nan")
    lines.append(f"flagged (score >= {threshold:.4f}): " + ", ".join(counts))
    return "\n".join(lines)


def bundled_fingerprints() -> dict[str, str]:
    """Demo name -> the model fingerprint its committed bundle was fitted on."""
    from detectors.demo.datasets import datasets

    out = {}
    for name, demo in datasets().items():
        manifest = (demo.artifacts / "bundle" / "manifest.json").read_text(encoding="utf-8")
        out[name] = str(json.loads(manifest)["model_fingerprint"])
    return out


def choose_demo(asked: str, served: str) -> str:
    """The demo to send: ``asked``, or for SERVED_DEMO the one whose model fingerprint is
    ``served`` (FALLBACK_DEMO if none). Notes on stderr when the model differs."""
    _lab()
    fingerprints = bundled_fingerprints()
    if asked == SERVED_DEMO:
        match = [name for name, fp in fingerprints.items() if fp == served]
        asked = match[0] if match else FALLBACK_DEMO
    if fingerprints[asked] != served:
        print(
            f"note: the sidecar serves another model than the bundled {asked} demo; the "
            "adversarial inputs were crafted against the demo model",
            file=sys.stderr,
        )
    return asked


def check_demo(client: ReliabilityClient, asked: str) -> int:
    """Send the demo inputs in one batch and print the table."""
    info = client.info()
    if info.input_shape != (1, 28, 28):
        raise CheckError(
            f"--demo sends 1x28x28 images but the sidecar at {client.target} takes "
            f"{list(info.input_shape)}; run it against a bundled demo (`gradsentry serve`)"
        )
    name = choose_demo(asked, info.model_fingerprint)
    inputs = demo_inputs(name)
    results = client.check_batch([d.image for d in inputs])
    print(f"demo: {name}", flush=True)
    print(demo_table(inputs, results), flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry of ``gradsentry check``."""
    if (args.demo is not None) == bool(args.files):
        raise CheckError("give FILE arguments or --demo (one of the two)")
    for name in args.files:
        if not Path(name).is_file():
            raise CheckError(f"no such file: {name}")
    if args.demo not in (None, SERVED_DEMO):
        _lab()
        from detectors.demo.datasets import datasets

        if args.demo not in datasets():
            names = ", ".join(datasets())
            raise CheckError(f"--demo {args.demo}: no such demo (choose from {names})")
    with client_from_args(args) as client:
        try:
            if args.demo is not None:
                return check_demo(client, args.demo)
            return check_files(client, args.files)
        except RequestError as exc:
            raise fatal(exc) from None
