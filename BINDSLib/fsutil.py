"""Atomic writes: a killed run leaves nothing half-written that looks complete.

Files are written to a temporary name in the same folder and renamed into place; folders are
built under a temporary sibling name and renamed when complete. Existing outputs are replaced
only with ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputError, raise_if_terminated


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (surrogate escapes) as U+FFFD, so
    that it can be written to a UTF-8 file."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def terminal_text(text: str) -> str:
    """``text`` for a terminal line: :func:`printable`, with control characters (an escape
    sequence or a line break inside a study ID read from a file) written as ``\\x1b``-style
    escapes, so that no input can move the cursor, recolour the terminal or split a line."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii")
                   for c in printable(str(text)))


def sitk_path(path: str | os.PathLike, output: bool = False) -> str:
    """``path`` as SimpleITK takes it. A name with bytes that are not UTF-8 (from another
    system's encoding) would abort the whole process inside ITK: an :class:`InputError` (or
    :class:`OutputError` for an ``output``) naming the path instead."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        from .errors import InputError

        raise (OutputError if output else InputError)(
            "the name holds bytes that are not UTF-8 text, which SimpleITK cannot open: rename "
            "the file or folder", printable(text)) from None
    return text


#: the lock file a long-running command holds in its output folder (:func:`output_lock`); it
#: does not count as content of the folder
LOCK_NAME = ".binds.lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputError("already exists; use --overwrite to replace it", path)


#: what a folder BINDS wrote holds at its top (any one of these patterns): ``--overwrite``
#: replaces only such folders (or empty ones), never a folder of the user's. A writer passes
#: the signs of its own kind of output (``signs``), so that one command never replaces another
#: command's output (a risk report never replaces a study folder or a bundle).
OUTPUT_SIGNS = ("report.json", "results.csv", "metrics.json", "study.json", "history.json",
                "configs/metadata.json", "[0-9][0-9]_*/IM[0-9][0-9][0-9][0-9].dcm")
REPORT_SIGNS = ("report.json",)
STUDY_SIGNS = ("study.json",)


def check_output_dir(path: str | os.PathLike, overwrite: bool, inputs=(), signs=OUTPUT_SIGNS,
                     within=()) -> Path:
    """Check, before any work, that the folder ``path`` can be written as a command's output
    (:class:`OutputError` otherwise): it is not one of the ``inputs`` and holds none
    (:func:`check_not_input`); it is neither the current folder nor holds it; it is not a
    file; its name is UTF-8 text; it exists only with ``overwrite``, and then is empty or a
    folder of the kind the writer writes (``signs``, by default any BINDS output:
    :data:`OUTPUT_SIGNS`); its parent can be written. ``within``: input folders read as a
    whole (a dataset), which the output may not even lie inside. Returns the absolute path."""
    given = path
    sitk_path(path, output=True)  # a name that is not UTF-8 fails at once, not after the work
    try:
        path = Path(path).resolve()
        path.exists()  # raises on a name the file system cannot hold
    except OSError as e:  # e.g. a name longer than the file system allows
        raise OutputError(f"cannot be written: {e.strerror or e}", given) from None
    if path.parent == path:
        raise OutputError("is the root folder; choose a folder to write", given)
    check_not_input(given, inputs)
    for folder in within:
        if folder is not None and Path(folder).resolve() in path.parents:
            raise OutputError(f"lies inside {folder}, which this command reads whole: write outputs "
                              "outside it", given)
    try:
        here = Path.cwd().resolve()
    except OSError:  # the current folder was removed: nothing to protect
        here = None
    if here is not None and (path == here or path in here.parents):  # replaced: the shell left nowhere
        raise OutputError("is the current folder or holds it; name a new folder, e.g. --out results", given)
    if path.exists():
        if not path.is_dir():
            raise OutputError("is a file, not a folder: choose a folder name", given)
        if not overwrite:
            raise OutputError("already exists; use --overwrite to replace it", given)
        if _locked(path):
            raise OutputError("another binds command is writing into this folder now: wait for it to "
                              "finish, or choose another folder", given)
        if has_content(path) and not any(any(path.glob(sign)) for sign in signs):
            raise OutputError(f"is not an output of this kind (it holds no {' or '.join(signs)}); "
                              "--overwrite replaces only such outputs: choose another folder or "
                              "empty it yourself", given)
    ancestor = next(p for p in path.parents if p.exists())
    if not ancestor.is_dir():
        raise OutputError(f"cannot be written: {ancestor} is a file, not a folder", given)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot be written: no permission to write in {ancestor}", given)
    return path


def resolved(path: str | os.PathLike) -> Path:
    """``Path(path).resolve()``, or its absolute path where links cannot be followed (a loop of
    links: RuntimeError or OSError, by Python version; a NUL byte: ValueError): the file is
    then named as it is by the error its reading gives."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError, ValueError):
        return Path(os.path.abspath(os.fspath(path).replace("\0", "")))


class Inputs:
    """A command's input files and folders (None entries skipped), resolved once: what an
    output may neither be nor hold (:func:`check_not_input`). A batch checks every study's
    output against all of its inputs, so each check is a lookup, not a walk of the file system."""

    def __init__(self, paths=()):
        self.given: dict[Path, object] = {}  # resolved -> as given (for messages)
        self.held: dict[Path, object] = {}  # every folder above an input -> that input
        for p in paths:
            if p is None:
                continue
            src = resolved(p)
            self.given.setdefault(src, p)
            for folder in src.parents:
                self.held.setdefault(folder, p)


def has_content(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds anything but its lock file (:data:`LOCK_NAME`, which a command
    leaves in an output folder it wrote into)."""
    return any(p.name != LOCK_NAME for p in Path(folder).iterdir())


def visible_entries(folder: str | os.PathLike) -> list[Path]:
    """The entries of ``folder`` by name, without hidden ones (``.name``: among them the
    ``.NAME.XXXX.part`` folders a killed BINDS run leaves)."""
    return [e for e in sorted(Path(folder).iterdir()) if not e.name.startswith(".")]


def check_not_input(path: str | os.PathLike, inputs) -> None:
    """Refuse an output ``path`` that is one of the command's ``inputs`` (an :class:`Inputs`, or
    paths; None entries are skipped) or a folder holding one: writing it would replace (with
    ``--overwrite``, delete) the input. An output inside an input folder is allowed."""
    inputs = inputs if isinstance(inputs, Inputs) else Inputs(inputs)
    out = resolved(path)
    if out in inputs.given:
        raise OutputError("is an input of this command; writing the output there would replace "
                          "the input: choose another output", path)
    if out in inputs.held:
        raise OutputError(f"holds an input of this command ({inputs.held[out]}); replacing it would "
                          "delete the input: choose another output, e.g. a new subfolder", path)


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
        raise_if_terminated()
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


def make_output_folder(folder: str | os.PathLike) -> Path:
    """Create the folder a command writes many outputs into (a batch, a cohort); a file in its
    place, or a folder that cannot be made, is an :class:`OutputError` naming it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError("is a file, not a folder: choose a folder name", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot be written: {e.strerror or e}", folder) from None
    return folder


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold an exclusive lock on the output folder ``folder`` (which must exist) while a
    command that writes many files into it runs (a batch of diagnoses, a cohort, a training
    run): a second such command on the same folder is refused at once (:class:`OutputError`)
    instead of removing or interleaving the first one's files. The lock goes with the process
    (a killed run leaves no stale lock). Where the platform has no ``fcntl`` (Windows), there
    is no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as e:
        raise OutputError(f"cannot be written: {e.strerror or e}", folder) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another {command} is writing into this folder now: wait for it to "
                              "finish, or choose another --out", folder) from None
        yield
    finally:
        os.close(fd)  # (releases the lock)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False, inputs=(),
               signs=OUTPUT_SIGNS) -> Iterator[Path]:
    """Build a folder under a temporary sibling name; rename it to ``path`` on success.

    On an exception the temporary folder is removed and ``path`` is untouched. ``inputs``: the
    command's input paths, which ``path`` may neither be nor hold; the checks of
    :func:`check_output_dir` apply (``signs``: what an output of this kind holds). An
    operating-system error while creating or renaming the folder is an :class:`OutputError`
    naming ``path``.
    """
    given = path
    restore_hidden_result(Path(path), signs)
    path = check_output_dir(path, overwrite, inputs, signs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_parts(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".part", dir=path.parent))
    except OSError as e:
        raise OutputError(f"cannot be written: {e.strerror or e}", given) from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
    try:
        yield tmp
        raise_if_terminated()
        if path.exists() and not overwrite:
            raise OutputError("appeared while writing; use --overwrite to replace it", given)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:  # the rename into place (what the block wrote raised its own errors above)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            _discard(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _discard(old)
        else:
            os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot be written: {e.strerror or e}", given) from None


def restore_hidden_result(path: Path, signs=OUTPUT_SIGNS) -> None:
    """Put back ``.NAME.old`` as ``NAME`` when a run was killed between the two renames of a
    replacement (:func:`atomic_dir`), which left the old result hidden and none in its place;
    only a whole one (holding one of ``signs``). Anything unusual (no name, a name too long, a
    link) is left to :func:`check_output_dir`."""
    if not path.name or path.name in (".", ".."):
        return
    try:
        old = path.with_name(f".{path.name}.old")
        if old.is_dir() and not old.is_symlink() and not os.path.lexists(path) and \
                any(any(old.glob(sign)) for sign in signs):
            os.replace(old, path)
    except (OSError, ValueError):
        return


def _owner_tag() -> str:
    """``HOST-PID`` (8 hex digits of the host name): the writer of a temporary folder, so that a
    later run can tell the leftovers of a killed one (:func:`remove_dead_parts`)."""
    import hashlib
    import socket

    return f"{hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]}-{os.getpid()}"


def remove_dead_parts(path: Path) -> None:
    """Remove the ``.NAME.HOST-PID.XXXX.part`` folders beside ``path`` that a process of this
    host left when it was killed (SIGKILL, a power cut): its process is gone. Those of live
    processes and of other hosts (a shared disk) are left alone; on Windows, where a process
    cannot be probed safely, all are."""
    if os.name == "nt":  # pragma: no cover - os.kill would end the process
        return
    host = _owner_tag().split("-")[0]
    prefix = f".{path.name}.{host}-"
    for p in path.parent.glob(f".{glob.escape(path.name)}.{host}-*.part"):
        pid = p.name[len(prefix):].split(".")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):  # another user's live process; no such pid
            continue
        shutil.rmtree(p, ignore_errors=True)


def _discard(path: Path) -> None:
    """Remove an old result: first renamed out of the way (a ``.part`` name, which a batch
    clears), so that a removal cut short never leaves a half-deleted ``.NAME.old`` behind."""
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        doomed = path.with_name(f"{path.name[:-4]}.{os.getpid()}-{os.urandom(4).hex()}.part")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        path.unlink()


def _locked(folder: Path) -> bool:
    """Whether a running command holds ``folder``'s lock (:func:`output_lock`)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locks
        return False
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
