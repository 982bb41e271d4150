"""The ``binds`` command (also ``python -m BINDSLib``).

Each sub-command lives in its own module under :mod:`BINDSLib.commands` exposing
``register(subparsers)`` (adds its parser, with ``help`` and ``description``, and sets
``func=run``) and ``run(args) -> int``. Heavy imports happen inside ``run`` so that
``binds --help`` is instant.

Exit codes: see :mod:`BINDSLib.errors` (0 ok, 2 usage, 3 bad input, 4 model, 5 output,
6 some batch items failed, 1 internal error, 130 interrupted, 141 standard output closed,
143 terminated).
On error one line goes to stderr; ``--debug`` prints the traceback too.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from . import __version__
from .errors import (EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OUTPUT, EXIT_STDOUT_CLOSED, EXIT_TERMINATED,
                     BindsError, Terminated, on_sigterm)

#: Sub-command modules, in the order ``binds --help`` lists them.
COMMANDS = ("demo", "inspect", "convert", "phantom", "diagnose", "risk", "cohort", "train", "evaluate",
            "calibrate", "models")

EPILOG = """exit codes: 0 ok, 1 internal error, 2 usage, 3 bad input, 4 model bundle problem,
5 output problem (also a full or read-only disk), 6 some items of a batch failed,
130 interrupted, 141 output pipe closed (e.g. | head), 143 terminated (SIGTERM). Research use only; not for clinical use."""

log = logging.getLogger("binds")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="binds",
        description="BINDS: multimodal two-stage breast cancer diagnosis and longitudinal "
                    "5-year risk, from mammography, ultrasound and MRI.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"binds {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    parser.add_argument("--debug", action="store_true", help="print tracebacks on error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as e:
            if e.name == f"{__package__}.commands.{name}":
                continue  # command not available in this build
            raise
        mod.register(sub)
    return parser


class _TerminalFormatter(logging.Formatter):
    """Log lines whose message is :func:`~.fsutil.terminal_text` (IDs read from files may hold
    control characters); a traceback (``--debug``) is kept as it is."""

    def formatMessage(self, record):
        from .fsutil import terminal_text

        record.message = terminal_text(record.message)
        return super().formatMessage(record)


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    before = list(logging.getLogger().handlers)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # ours only: a caller's handlers keep their format
        if handler not in before:
            handler.setFormatter(_TerminalFormatter("%(levelname)s: %(message)s"))
    logging.getLogger().setLevel(level)


def _library_warnings_as_log_lines() -> None:
    """In the ``binds`` process: a library's warning becomes one log line like ours
    ("WARNING: UserWarning: ..."), not Python's two lines with the library's source line;
    pydicom's are dropped (it logs each one itself too)."""
    import warnings

    def one_line(message, category, filename, lineno, line=None):
        first = next((ln.strip() for ln in str(message).splitlines() if ln.strip()), "")
        return f"{category.__name__}: {first}\n"  # (logging strips the newline; a file= write keeps it)

    warnings.formatwarning = one_line
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", module=r"pydicom\.")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    # the process is ours, not a caller's Python: commands may tune it (BINDSLib/memory.py)
    args.own_process = argv is None
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    import signal

    if args.own_process:  # (not when BINDSLib's main is called by a caller's Python)
        signal.signal(signal.SIGTERM, on_sigterm)
        _library_warnings_as_log_lines()
    try:
        return _run(args)
    finally:
        if args.own_process:  # the work is done: a Ctrl-C or SIGTERM while Python shuts down
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # (torch's exit hooks) ends it at once,
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # without a traceback


def _run(args) -> int:
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # (a reader gone, as in ``| head``, is met here, not at exit)
        return code
    except BrokenPipeError as e:
        if e.filename is not None or not _stdout_broken():  # a file's or a child's pipe, not our output
            return _internal_error(args, e)
        return _stdout_closed(args)
    except BindsError as e:
        from .fsutil import terminal_text

        if args.debug:
            log.exception("error")
        print(f"binds {args.command}: error: {terminal_text(str(e))}", file=sys.stderr)
        return e.exit_code
    except Terminated:
        print(f"binds {args.command}: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"binds {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        if args.debug:
            log.exception("error")
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # the output's disk, whatever file
            where = e.filename or getattr(args, "out", None) or ""
            print(f"binds {args.command}: error: {where}{': ' if where else ''}cannot be written: "
                  f"{e.strerror or e}", file=sys.stderr)
            return EXIT_OUTPUT
        if e.errno == errno.ENAMETOOLONG:  # a path the file system cannot hold, wherever first touched
            print(f"binds {args.command}: error: {e.filename}: the name is too long for the file system",
                  file=sys.stderr)
            return EXIT_INPUT
        if e.errno in (errno.EEXIST, errno.EISDIR, errno.ENOTDIR) and any(
                f is not None and _under_output(f, args) for f in (e.filename, e.filename2)):
            # e.g. a file where a resumed run keeps a folder, or the reverse
            print(f"binds {args.command}: error: {e.filename2 or e.filename}: {e.strerror or e} in the "
                  "command's output (is a file where a folder belongs, or the reverse? move it away)",
                  file=sys.stderr)
            return EXIT_OUTPUT
        if e.errno in (errno.EACCES, errno.EPERM) and e.filename is not None:
            if _under_output(e.filename, args):  # e.g. a resumed run's folder of another user
                print(f"binds {args.command}: error: {e.filename}: permission denied in the command's "
                      "output (who owns it?)", file=sys.stderr)
                return EXIT_OUTPUT
            print(f"binds {args.command}: error: {e.filename}: permission denied (cannot read it)",
                  file=sys.stderr)
            return EXIT_INPUT
        return _internal_error(args, e)
    except Exception as e:
        return _internal_error(args, e)


def _under_output(filename, args) -> bool:
    """Whether ``filename`` is, or lies in, one of the command's outputs (``--out``, ``--bundle``;
    a command that chooses its output itself, as ``train`` its run folder, sets ``args.out``)."""
    import os

    if not isinstance(filename, (str, bytes, os.PathLike)):  # e.g. a file descriptor
        return False
    path = os.path.abspath(os.fsdecode(filename))
    for out in (getattr(args, "out", None), getattr(args, "bundle", None)):
        if out:
            out = os.path.abspath(out)
            if path == out or path.startswith(out.rstrip(os.sep) + os.sep):
                return True
    return False


def _stdout_broken() -> bool:
    """Whether our standard output is a pipe whose reader went away (best effort: True when it
    cannot be told)."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        # a pipe whose reader went away: POLLERR (Linux); POLLHUP (a socket's peer gone, BSD pipes)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor (tests)
        return True


def _stdout_closed(args) -> int:
    """The reader of our standard output went away (``binds inspect --json | head``): stop
    quietly, with the exit status of a process that SIGPIPE ended (128 + 13), as other tools do."""
    import os

    if args.own_process:  # nothing more reaches the closed pipe, not even at exit
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
    return EXIT_STDOUT_CLOSED


def _internal_error(args, e: Exception) -> int:
    """A bug: one line, plus the traceback with --debug."""
    if args.debug:
        log.exception("internal error")
    from .fsutil import terminal_text

    print(f"binds {args.command}: internal error: {type(e).__name__}: {terminal_text(str(e))} "
          "(re-run with --debug for the traceback and please report it)", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
