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
torch). opencv-python is swapped for opencv-python-headless of the same version: the same
``cv2`` module without the X11/OpenGL libraries a server image does not have. Wheels left
from an earlier run that the new set does not need are removed, unchanged ones are left in
place, so Docker's layer cache stays valid. Run it with the project's Python 3.11.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
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
# Distribution -> drop-in replacement for a server image (same import name and version).
SUBSTITUTES = {"opencv-python": "opencv-python-headless"}
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
    """The requirements' closure, substitutes swapped in, into the empty directory ``dest``."""
    inputs = dest / "inputs"
    inputs.mkdir()
    (inputs / "requirements.in").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    (inputs / "constraints.txt").write_text("\n".join(constraints) + "\n", encoding="utf-8")
    pip_download(
        ["-r", str(inputs / "requirements.in"), "-c", str(inputs / "constraints.txt")], dest
    )
    for name, (version, path) in wheels(dest).items():
        if name in SUBSTITUTES:
            pip_download(["--no-deps", f"{SUBSTITUTES[name]}=={version}"], dest)
            path.unlink()


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
