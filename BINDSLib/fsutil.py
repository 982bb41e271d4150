"""Atomic writes: a killed run leaves nothing half-written that looks complete.

Files are written to a temporary name in the same folder and renamed into place; folders are
built under a temporary sibling name and renamed when complete. Existing outputs are replaced
only with ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputError("already exists; use --overwrite to replace it", path)


def check_not_input(path: str | os.PathLike, inputs) -> None:
    """Refuse an output ``path`` that is one of the command's ``inputs`` (files or folders;
    None entries are skipped) or a folder holding one: writing it would replace (with
    ``--overwrite``, delete) the input. An output inside an input folder is allowed."""
    out = Path(path).resolve()
    for p in inputs:
        if p is None:
            continue
        src = Path(p).resolve()
        if out == src:
            raise OutputError("is an input of this command; writing the output there would replace "
                              "the input: choose another output", path)
        if out in src.parents:
            raise OutputError(f"holds an input of this command ({p}); replacing it would delete the "
                              "input: choose another output, e.g. a new subfolder", path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> Path:
    path = Path(path)
    _check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def json_dumps(obj) -> str:
    """Stable JSON text (sorted keys, 2-space indent, newline) so equal data gives equal bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj, overwrite: bool = True) -> Path:
    return atomic_write_text(path, json_dumps(obj), overwrite=overwrite)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False, inputs=()) -> Iterator[Path]:
    """Build a folder under a temporary sibling name; rename it to ``path`` on success.

    On an exception the temporary folder is removed and ``path`` is untouched. ``inputs``: the
    command's input paths, which ``path`` may neither be nor hold (:func:`check_not_input`).
    """
    path = Path(path)
    check_not_input(path, inputs)
    _check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise OutputError("appeared while writing; use --overwrite to replace it", path)
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
