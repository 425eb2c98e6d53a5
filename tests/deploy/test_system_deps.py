"""``make system-deps`` on fresh machines: the install script run for real in throwaway roots.

Each case is a minimal Debian bookworm root (``debootstrap --variant=minbase``, from the
Debian mirror — the only network this needs) with ``deploy/system/install-deps.sh`` run
inside it by ``chroot``, as ``make test`` runs it on a new machine:

1. nothing installed: every command ends up present; a second run installs nothing;
2. a NodeSource-style ``nodejs`` that ships ``npm`` itself (and conflicts with Debian's
   ``npm``, as NodeSource's does): every command ends up present, and that node and npm are
   left alone;
3. the same root with its npm removed: Debian's npm cannot be installed beside that node,
   so the script stops with one line naming the command and the package, exit 2, and
   removes nothing.

The base root and the downloaded packages are kept under CACHE between runs (the first run
on a machine takes several minutes: debootstrap plus Java, Docker, Prometheus and Node.js).
Needs root and debootstrap, which ``make system-deps`` installs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "system" / "install-deps.sh"
CACHE = Path("/var/cache/gradsentry-test/system-deps")
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A NodeSource build names itself in its version, provides npm and conflicts with Debian's.
NODESOURCE_VERSION = "20.20.2-1nodesource1"
FAKE_NPM_MARK = "nodesource-style npm"
INSTALL_S = 40 * 60


def needed() -> dict[str, str]:
    """command -> Debian package, read from the script's NEEDS table."""
    table = re.search(r"^NEEDS=\(\n(.*?)^\)", SCRIPT.read_text(), re.S | re.M)
    assert table, "NEEDS=( ... ) not found in the script"
    pairs = re.findall(r'^\s*"(\S+) (\S+)"', table.group(1), re.M)
    assert pairs
    return dict(pairs)


def run(cmd: list[str], timeout: float = INSTALL_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def in_root(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``args`` inside ``root`` with a clean environment, as a fresh login would have."""
    return run(["chroot", str(root), "/usr/bin/env", "-i", f"PATH={PATH}", *args])


@pytest.fixture(scope="module")
def base() -> Path:
    """A tarball of a minimal bookworm root, made once per machine."""
    if os.geteuid() != 0:
        pytest.fail("needs root (debootstrap and chroot): CI runs as root")
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap not found: run `make system-deps`")
    tarball = CACHE / f"{SUITE}-minbase.tar"
    if tarball.is_file():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / "debootstrap"
    shutil.rmtree(target, ignore_errors=True)
    made = run(["debootstrap", "--variant=minbase", SUITE, str(target), MIRROR])
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    partial = tarball.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        tar.add(target, arcname=".")
    partial.rename(tarball)
    shutil.rmtree(target)
    return tarball


@contextlib.contextmanager
def _cache_held() -> Iterator[None]:
    """The shared package cache for this block alone: apt in two roots at once (two test
    runs on one machine) would fail on the cache's own lock."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


@pytest.fixture()
def fresh_root(base: Path, tmp_path: Path) -> Iterator[Path]:
    """A throwaway root from the base: /proc mounted, the package cache shared (by one
    run at a time), no daemon allowed to start, the script copied in."""
    with _cache_held():
        yield from _fresh_root(base, tmp_path)


def _fresh_root(base: Path, tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(base) as tar:
        tar.extractall(root, filter="fully_trusted")
    archives = CACHE / "apt-archives"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    mounts = [root / "proc", root / "var/cache/apt/archives"]
    (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
    (root / "usr/sbin/policy-rc.d").chmod(0o755)
    # Keep the packages after installing them, for the next root and the next run.
    (root / "etc/apt/apt.conf.d/99keep").write_text(
        'Binary::apt::APT::Keep-Downloaded-Packages "true";\n'
    )
    (root / "etc/apt/apt.conf.d/docker-clean").unlink(missing_ok=True)
    shutil.copy(SCRIPT, root / "tmp/install-deps.sh")
    subprocess.run(["mount", "-t", "proc", "proc", str(mounts[0])], check=True)
    subprocess.run(["mount", "--bind", str(archives), str(mounts[1])], check=True)
    try:
        yield root
    finally:
        for mount in reversed(mounts):
            subprocess.run(["umount", "--lazy", str(mount)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def install(root: Path) -> subprocess.CompletedProcess[str]:
    return in_root(root, "bash", "/tmp/install-deps.sh")


def missing(root: Path) -> list[str]:
    """The commands (and, for entries starting with /, the files) ``root`` lacks."""
    return [
        c
        for c in needed()
        if (
            not (root / c.lstrip("/")).exists()
            if c.startswith("/")
            else in_root(root, "sh", "-c", f"command -v {c}").returncode
        )
    ]


def nodesource_deb(directory: Path) -> Path:
    """A package shaped like NodeSource's nodejs: provides npm, conflicts with Debian's."""
    tree = directory / "nodejs"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        "Package: nodejs\n"
        f"Version: {NODESOURCE_VERSION}\n"
        "Architecture: all\n"
        "Maintainer: test <test@localhost>\n"
        "Provides: nodejs-dev, nodejs-doc, nodejs-legacy, npm\n"
        "Conflicts: nodejs-dev, nodejs-doc, nodejs-legacy, npm\n"
        "Replaces: nodejs-dev, nodejs-doc, nodejs-legacy, npm\n"
        "Description: Node.js built the NodeSource way (test stand-in)\n"
    )
    for name, text in (("node", "v20.20.2"), ("npm", f"11.19.1 {FAKE_NPM_MARK}")):
        tool = tree / "usr/bin" / name
        tool.write_text(f"#!/bin/sh\necho '{text}'\n")
        tool.chmod(0o755)
    built = run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(directory)])
    assert built.returncode == 0, built.stderr
    (deb,) = directory.glob("nodejs_*.deb")
    return deb


def test_a_bare_machine_gets_every_command(fresh_root: Path) -> None:
    assert missing(fresh_root), "the bare root already has every command"
    first = install(fresh_root)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert missing(fresh_root) == []
    # Debian's node came with Debian's npm.
    assert "npm" in in_root(fresh_root, "dpkg-query", "-W", "-f=${Package}", "npm").stdout
    again = install(fresh_root)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


def test_a_nodesource_node_is_kept_and_a_conflict_is_one_line(
    fresh_root: Path, tmp_path: Path
) -> None:
    deb = nodesource_deb(tmp_path)
    shutil.copy(deb, fresh_root / "tmp" / deb.name)
    placed = in_root(fresh_root, "dpkg", "-i", f"/tmp/{deb.name}")
    assert placed.returncode == 0, placed.stderr

    result = install(fresh_root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert missing(fresh_root) == []
    version = in_root(fresh_root, "dpkg-query", "-W", "-f=${Version}", "nodejs").stdout
    assert version == NODESOURCE_VERSION
    assert FAKE_NPM_MARK in in_root(fresh_root, "npm", "--version").stdout

    # Without its npm, the only candidate is Debian's, which conflicts with this node:
    # refused in one line, and the node stays.
    (fresh_root / "usr/bin/npm").unlink()
    refused = install(fresh_root)
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("system-deps:")]
    assert errors == [
        "system-deps: error: 'npm' is missing (Debian package npm) and could not be installed"
    ], refused.stderr
    version = in_root(fresh_root, "dpkg-query", "-W", "-f=${Version}", "nodejs").stdout
    assert version == NODESOURCE_VERSION
