"""Errors a user can act on.

Every error raised on purpose by BINDSLib derives from :class:`BindsError`. The command line
prints ``str(error)`` as one line on stderr and exits with ``error.exit_code``; Slicer shows the
same text in a message box. A message says what was wrong, which file, and (where it helps)
what to do.

Exit codes (documented in README.md and ``binds --help``):

==== ===========================================================
0    success
1    unexpected internal error (a bug: please report it with the log)
2    bad command-line usage (argparse)
3    bad input: unreadable, unsupported or inconsistent file or folder
4    model bundle problem (missing, tampered, incompatible)
5    output problem (exists without --overwrite, cannot write)
6    some items of a batch failed (the others finished)
130  interrupted (Ctrl-C)
141  the reader of standard output went away (``| head``), as when SIGPIPE ends a process
143  terminated (SIGTERM), what was being written removed
==== ===========================================================
"""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_MODEL = 4
EXIT_OUTPUT = 5
EXIT_PARTIAL = 6
EXIT_INTERRUPTED = 130
EXIT_STDOUT_CLOSED = 141
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``), raised where the process is, so that what it was
    writing is removed as for Ctrl-C (``fsutil.atomic_dir``) instead of left half-written."""


_terminated: list[int] = []  # the SIGTERMs received (on_sigterm)


def on_sigterm(signum, frame) -> None:
    """The SIGTERM handler of the ``binds`` process: raise :class:`Terminated`, and remember it
    for :func:`raise_if_terminated`."""
    _terminated.append(signum)
    raise Terminated()


def raise_if_terminated() -> None:
    """Raise :class:`Terminated` again when a SIGTERM arrived: an exception raised by a signal
    handler inside a library's code can be lost there (seen: inside numpy's lazy import of
    ``numpy.random``, whose Cython module set-up swallowed it and the run went on to the end).
    Called before an output is put in place and at each progress line."""
    if _terminated:
        raise Terminated()


class BindsError(Exception):
    """Base class of the errors BINDS raises on purpose."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class UsageError(BindsError):
    """The command line is wrong in a way argparse cannot see (a malformed ``ROLE=FILE``, an
    option that needs one study given a batch): exit code 2, like argparse's own errors."""

    exit_code = EXIT_USAGE


class InputError(BindsError):
    """An input file or folder cannot be used (the message names the file and the reason)."""

    exit_code = EXIT_INPUT


class ModelError(BindsError):
    """A model bundle is missing, tampered with or incompatible."""

    exit_code = EXIT_MODEL


class OutputError(BindsError):
    """An output cannot be written (exists without --overwrite, permissions, disk)."""

    exit_code = EXIT_OUTPUT
