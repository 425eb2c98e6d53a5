"""Collect the wheels the container image installs: the project's runtime dependencies.

``python deploy/docker/wheelhouse.py OUT [--torch torch==2.13.0]`` runs ``pip download``
(with pip's own configuration: index, find-links, constraints) for the ``dependencies`` of
pyproject.toml — never the test extras — and writes into OUT:

- the wheels (binary only: the image has no compiler), for CPython 3.11 on manylinux
  x86_64 up to glibc 2.36 (Debian bookworm), whatever the host is;
- ``requirements.txt``: one ``name==version`` line per wheel — the complete, resolved
  set, which the image installs with ``pip install --no-index --no-deps``.

Versions already installed in the running interpreter's environment are used as
constraints, so the image gets what the test suite ran against (including the CPU build of
torch). The torch wheel is slimmed for a server (``slim``): its C++ headers, test binaries
and test libraries are dropped and its shared libraries stripped of symbols the dynamic
linker does not use (``strip --strip-unneeded``, from binutils), ~0.24 GB less; its RECORD
is rewritten so pip installs and checks it as usual. Wheels left from an earlier run that
the new set does not need are removed, unchanged ones are left in place, so Docker's layer
cache stays valid. Run it with the project's Python 3.11.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The image's platform: Debian bookworm's glibc is 2.36; CPython 3.11. pip does not expand a
# custom --platform to older glibc tags, so every compatible tag is listed.
GLIBC_MINOR = 36
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
PYTHON_VERSION = "3.11"
# Needed to build the project's own wheel inside the image (pyproject's build-system).
BUILD_REQUIREMENTS = ("setuptools>=68",)
# Distribution -> paths inside its wheel that a server never loads (a regular expression
# matched at the start of each path). torch/bin keeps torch_shm_manager, which import torch
# checks for; the rest there are C++ test programs and protoc.
SLIM_DROP = {
    "torch": re.compile(
        r"torch/(include/|test/|bin/(?!torch_shm_manager$)"
        r"|lib/lib(torchbind_test|jitbackend_test|backend_with_compiler)\.so$)"
    ),
    # onnx's dependency ships its extension with full symbols: 24 MB, 1.5 MB stripped.
    # (Keys are canonical names.)
    "ml-dtypes": re.compile(r"(?!)"),  # nothing dropped, only stripped
}
_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-.+\.whl$")


class WheelhouseError(RuntimeError):
    """The wheelhouse cannot be built; the message says why."""


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements(pyproject: Path, torch: str) -> list[str]:
    """pyproject's ``dependencies`` with the torch requirement replaced by ``torch``."""
    deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    rest = [d for d in deps if canonical(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) != "torch"]
    return [torch, *rest, *BUILD_REQUIREMENTS]


def installed_constraints() -> list[str]:
    """``name==version`` of every distribution installed here (editable/URL ones left out)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in out.splitlines() if "==" in line and " @ " not in line]


def pip_download(args: list[str], dest: Path) -> None:
    """``pip download ARGS`` of binary wheels for the image's platform into ``dest``."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--dest",
        str(dest),
        "--only-binary=:all:",
        *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise WheelhouseError(f"pip download {' '.join(args)} failed:\n{result.stderr.strip()}")


def wheels(directory: Path) -> dict[str, tuple[str, Path]]:
    """Canonical name -> (version, path) of the wheels in ``directory``."""
    found: dict[str, tuple[str, Path]] = {}
    for path in sorted(directory.glob("*.whl")):
        m = _WHEEL_NAME.match(path.name)
        if m is None:
            raise WheelhouseError(f"{path.name}: not a wheel file name")
        found[canonical(m["name"])] = (m["version"], path)
    return found


def collect(requirements: list[str], constraints: list[str], dest: Path) -> None:
    """The requirements' closure, torch slimmed, into the empty directory ``dest``."""
    inputs = dest / "inputs"
    inputs.mkdir()
    (inputs / "requirements.in").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    (inputs / "constraints.txt").write_text("\n".join(constraints) + "\n", encoding="utf-8")
    pip_download(
        ["-r", str(inputs / "requirements.in"), "-c", str(inputs / "constraints.txt")], dest
    )
    for name, (_, path) in wheels(dest).items():
        if name in SLIM_DROP:
            slim(path, SLIM_DROP[name])


def _strip(data: bytes, work: Path) -> bytes:
    """A shared library without the symbols dynamic linking does not need."""
    lib = work / "lib.so"
    lib.write_bytes(data)
    done = subprocess.run(["strip", "--strip-unneeded", str(lib)], capture_output=True, text=True)
    if done.returncode != 0:
        raise WheelhouseError(f"strip failed: {done.stderr.strip()}")
    return lib.read_bytes()


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def slim(wheel: Path, drop: re.Pattern[str]) -> None:
    """Rewrite ``wheel`` in place without the ``drop`` paths, its shared libraries stripped,
    and a RECORD that matches (entries keep their order, times and permissions, so the
    result is the same file for the same input)."""
    if shutil.which("strip") is None:
        raise WheelhouseError("strip not found (Debian package binutils)")
    slimmed = wheel.with_suffix(".slim")
    rows: list[list[str]] = []
    with (
        tempfile.TemporaryDirectory() as work,
        zipfile.ZipFile(wheel) as zin,
        zipfile.ZipFile(slimmed, "w", zipfile.ZIP_DEFLATED) as zout,
    ):
        (record,) = (n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        for info in zin.infolist():
            if info.filename == record or drop.match(info.filename):
                continue
            data = zin.read(info)
            if re.search(r"\.so(\.[0-9]+)*$", info.filename):
                data = _strip(data, Path(work))
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
            rows.append([info.filename, _digest(data), str(len(data))])
        rows.append([record, "", ""])
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        zout.writestr(zin.getinfo(record), text.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    slimmed.replace(wheel)


def sync(fresh: Path, out: Path) -> None:
    """Make ``out`` hold exactly the wheels in ``fresh``; identical files are left in place
    (same name and size: wheel names carry the version), so Docker's cache stays valid."""
    new = {p.name: p for p in fresh.glob("*.whl")}
    for old in out.glob("*.whl"):
        if old.name not in new:
            old.unlink()
    for name, path in new.items():
        target = out / name
        if not (target.exists() and target.stat().st_size == path.stat().st_size):
            shutil.move(path, target)


def main(argv: list[str] | None = None) -> int:
    """Build the wheelhouse; one error line and exit code 2 when it cannot."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="directory for the wheels and requirements.txt")
    p.add_argument("--torch", default="torch==2.13.0", help="torch requirement (CPU build)")
    args = p.parse_args(argv)
    if sys.version_info[:2] != (3, 11):
        print("wheelhouse: error: run with Python 3.11 (the image's Python)", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    requirements = runtime_requirements(ROOT / "pyproject.toml", args.torch)
    try:
        # A fresh directory on the same file system: moves are cheap, stale wheels are known.
        with tempfile.TemporaryDirectory(dir=out, prefix=".download-") as tmp:
            collect(requirements, installed_constraints(), Path(tmp))
            sync(Path(tmp), out)
    except WheelhouseError as exc:
        print(f"wheelhouse: error: {exc}", file=sys.stderr)
        return 2
    lines = [f"{name}=={version}" for name, (version, _) in sorted(wheels(out).items())]
    (out / "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wheelhouse: {len(lines)} wheels in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
