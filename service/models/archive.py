"""Reading a TorchServe model archive (.mar, a zip) safely: JSON manifest, checked paths.

Every entry name is checked when the archive is opened: an absolute path, a drive letter, a
``..`` component or a symbolic link makes the whole archive refused (never silently skipped),
and so does an archive that would unpack to more than ``MAX_UNPACKED_BYTES``. Nothing in it is
unpickled; ``MAR-INF/MANIFEST.json`` and ``index_to_name.json`` are read as JSON.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from detectors.models import ModelLoadError

MANIFEST = "MAR-INF/MANIFEST.json"
# Far above any image classifier; stops a zip bomb from filling the disk.
MAX_UNPACKED_BYTES = 16 * 2**30
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ManifestModel:
    """The ``model`` object of MANIFEST.json (torch-model-archiver's camelCase keys)."""

    name: str
    serialized_file: str
    model_file: str | None
    handler: str | None
    version: str | None


def unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why extracting ``info`` could write outside the target directory, or None."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        return "absolute path"
    if ".." in name.split("/"):
        return "'..' path component"
    if "\x00" in name:
        return "NUL byte in name"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


class MarArchive:
    """An open .mar whose entry names have all been checked; use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model archive not found: {self.path}")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelLoadError(f"{self.path} is not a readable zip archive: {exc}") from None
        try:
            self._check_entries()
        except ModelLoadError:
            self._zip.close()
            raise

    def _check_entries(self) -> None:
        for info in self._zip.infolist():
            reason = unsafe_reason(info)
            if reason is not None:
                raise ModelLoadError(
                    f"{self.path}: unsafe entry {info.filename!r} ({reason}); archives with "
                    "absolute paths, '..' components or links are refused"
                )
        total = sum(info.file_size for info in self._zip.infolist())
        if total > MAX_UNPACKED_BYTES:
            raise ModelLoadError(
                f"{self.path} would unpack to {total / 2**30:.1f} GiB "
                f"(limit {MAX_UNPACKED_BYTES / 2**30:.0f} GiB)"
            )
        if MANIFEST not in self._zip.namelist():
            raise ModelLoadError(f"{self.path} has no {MANIFEST}: not a TorchServe model archive")

    def __enter__(self) -> MarArchive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._zip.close()

    def has(self, name: str) -> bool:
        """Whether the archive holds a file called ``name`` (a path inside the archive)."""
        return name in self._zip.namelist()

    def read(self, name: str) -> bytes:
        """The bytes of entry ``name``; a damaged entry is a ModelLoadError."""
        try:
            return self._zip.read(name)
        except KeyError:
            raise ModelLoadError(f"{self.path} has no file {name!r}") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise ModelLoadError(f"{self.path} is corrupt ({name}: {exc})") from None

    def manifest(self) -> ManifestModel:
        """MAR-INF/MANIFEST.json's model entry; serializedFile must name a file in the archive."""
        try:
            data: Any = json.loads(self.read(MANIFEST))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{self.path}: {MANIFEST} is not valid JSON: {exc}") from None
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict):
            raise ModelLoadError(f"{self.path}: {MANIFEST} has no 'model' object")
        runtime = data.get("runtime", "python")
        if not (isinstance(runtime, str) and runtime.startswith("python")):
            raise ModelLoadError(f"{self.path}: runtime {runtime!r} is not a Python archive")

        def text(key: str) -> str | None:
            value = model.get(key)
            if value is not None and not (isinstance(value, str) and value):
                raise ModelLoadError(f"{self.path}: {MANIFEST} model.{key} must be a string")
            return value

        serialized = text("serializedFile")
        if serialized is None:
            raise ModelLoadError(
                f"{self.path}: {MANIFEST} names no serializedFile; gradsentry needs the "
                "model's weights (a state dict or a TorchScript module) in the archive"
            )
        if not self.has(serialized):
            raise ModelLoadError(
                f"{self.path}: {MANIFEST} names serializedFile {serialized!r}, "
                "but the archive has no such file"
            )
        model_file = text("modelFile")
        if model_file is not None and not self.has(model_file):
            raise ModelLoadError(
                f"{self.path}: {MANIFEST} names modelFile {model_file!r}, "
                "but the archive has no such file"
            )
        return ManifestModel(
            name=text("modelName") or self.path.stem,
            serialized_file=serialized,
            model_file=model_file,
            handler=text("handler"),
            version=text("modelVersion"),
        )

    def extract(self, dest: Path) -> None:
        """Write every entry under ``dest`` (names were checked at open)."""
        root = dest.resolve()
        for info in self._zip.infolist():
            target = (root / info.filename.replace("\\", "/")).resolve()
            if not target.is_relative_to(root):  # belt and braces after unsafe_reason
                raise ModelLoadError(f"{self.path}: entry {info.filename!r} leaves the archive")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with self._zip.open(info) as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise ModelLoadError(f"{self.path} is corrupt ({info.filename}: {exc})") from None
