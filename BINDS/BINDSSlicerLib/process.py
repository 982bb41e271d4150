"""``binds`` in a background process: progress, log, cancel.

The heavy work runs in a separate Python process (``PythonSlicer`` inside Slicer, which is
``sys.executable`` there) so that Slicer stays responsive and a crash of the model cannot take
the application down, as lassoan/SlicerMONAIAuto3DSeg does::

    PythonSlicer -m BINDSLib diagnose STUDY --out OUT ...

with the folder holding ``BINDSLib`` as working directory and first on ``PYTHONPATH``. Its
stderr carries machine-readable progress lines (``PROGRESS i/n message``, written by
``BINDSLib.commands.diagnose.progress``) and, on failure, one line ``binds diagnose: error:
...`` that says what to do; both are parsed here.

:class:`BackgroundProcess` is plain Python (``subprocess`` and two reader threads): headless
code calls :meth:`~BackgroundProcess.wait`, the module widget calls
:meth:`~BackgroundProcess.poll` from a ``qt.QTimer`` (:func:`pollWithQtTimer`) so that the
callbacks run in the GUI thread.
"""

import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

PROGRESS_RE = re.compile(r"^PROGRESS\s+(\d+)\s*/\s*(\d+)\s*(.*)$")
ERROR_RE = re.compile(r"^binds(?: \S+)?: (?:internal )?error: (.*)$")

#: Exit code reported for a cancelled run (as MONAIAuto3DSeg's ExitCode.USER_CANCELLED).
CANCELLED = 1001


@dataclass(frozen=True)
class Progress:
    """One ``PROGRESS done/total message`` line."""

    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, max(0.0, self.done / self.total))

    @property
    def percent(self) -> int:
        return int(round(100 * self.fraction))


def parseProgressLine(line: str) -> Optional[Progress]:
    """The :class:`Progress` of a stderr line, or None when it is not a progress line."""
    match = PROGRESS_RE.match(line.strip())
    if not match:
        return None
    return Progress(int(match[1]), int(match[2]), match[3].strip())


def errorMessage(stderrLines, returncode: int) -> str:
    """The short message for a failed run: the ``binds ...: error:`` line, else the last line."""
    for line in reversed(stderrLines):
        match = ERROR_RE.match(line.strip())
        if match:
            return match[1].strip()
    meaningful = [ln.strip() for ln in stderrLines if ln.strip() and not PROGRESS_RE.match(ln.strip())]
    if meaningful:
        return meaningful[-1]
    return f"the BINDS process ended with exit code {returncode}"


def pythonExecutable() -> str:
    """The Python to run ``binds`` with: ``PythonSlicer`` inside Slicer (it is sys.executable)."""
    return sys.executable


def bindsCommand(subcommand: str, arguments, python: Optional[str] = None) -> list:
    """``[python, -m, BINDSLib, subcommand, *arguments]``."""
    return [python or pythonExecutable(), "-m", "BINDSLib", subcommand, *[str(a) for a in arguments]]


def diagnoseArguments(studyFolder, outputFolder, model=None, device="auto", stage="auto",
                      lesionMasks=None, overwrite=True, summary=True) -> list:
    """Arguments of ``binds diagnose`` for one study folder (see BINDSLib/commands/diagnose.py)."""
    args = [os.fspath(studyFolder), "--out", os.fspath(outputFolder), "--device", device or "auto",
            "--stage", stage or "auto"]
    if model:
        args += ["--model", os.fspath(model)]
    for label, path in sorted((lesionMasks or {}).items()):
        args += ["--lesion-mask", f"{label}={os.fspath(path)}"]
    if overwrite:
        args.append("--overwrite")
    if not summary:
        args.append("--no-summary")
    return args


def riskArguments(examFolders, outputFolder, model=None, device="auto", overwrite=True, sameWoman=False) -> list:
    """Arguments of ``binds risk`` for one woman's exams (see BINDSLib/commands/risk.py);
    ``sameWoman``: they are hers although they carry different patient IDs."""
    args = [os.fspath(p) for p in examFolders] + ["--out", os.fspath(outputFolder), "--device", device or "auto"]
    if model:
        args += ["--model", os.fspath(model)]
    if sameWoman:
        args.append("--same-woman")
    if overwrite:
        args.append("--overwrite")
    return args


def processEnvironment(bindsRoot: str, baseEnvironment=None, extraPaths=()) -> dict:
    """The environment of the process: ``bindsRoot`` then ``extraPaths`` (BINDS' private
    packages, see :func:`.install.privateSitePackages`) first on PYTHONPATH - ahead of Slicer's
    site-packages - and unbuffered UTF-8 output."""
    env = dict(os.environ if baseEnvironment is None else baseEnvironment)
    existing = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join([bindsRoot, *[os.fspath(p) for p in extraPaths]]
                                        + ([existing] if existing else []))
    # the PythonSlicer launcher puts Slicer's site-packages ahead of PYTHONPATH:
    # ``python -m BINDSLib`` puts these first on sys.path itself (BINDSLib/__main__.py)
    if extraPaths:
        env["BINDS_PRIVATE_SITE"] = os.pathsep.join(os.fspath(p) for p in extraPaths)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


@dataclass
class ProcessResult:
    returncode: int
    cancelled: bool = False
    stdout: list = field(default_factory=list)
    stderr: list = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and not self.cancelled

    @property
    def message(self) -> str:
        """One line for the user: empty on success."""
        if self.cancelled:
            return "cancelled"
        if self.returncode == 0:
            return ""
        return errorMessage(self.stderr, self.returncode)

    @property
    def details(self) -> str:
        return "\n".join(self.stdout + self.stderr)


class BackgroundProcess:
    """A command run in the background, with line-by-line progress and log callbacks.

    Parameters
    ----------
    command : the argument list (see :func:`bindsCommand`).
    cwd, env : working directory and environment of the process.
    onProgress : called with a :class:`Progress` for each progress line.
    onLog : called with ``(stream, line)`` for every other line ("stdout" or "stderr").
    onFinished : called once with the :class:`ProcessResult`.

    Callbacks run in the thread that calls :meth:`poll` (or :meth:`wait`).
    """

    def __init__(self, command, cwd=None, env=None, onProgress: Optional[Callable] = None,
                 onLog: Optional[Callable] = None, onFinished: Optional[Callable] = None):
        self.command = list(command)
        self.cwd = cwd
        self.env = env
        self.onProgress = onProgress
        self.onLog = onLog
        self.onFinished = onFinished
        self.proc = None
        self.result = None
        self.lastProgress = None
        self._queue = queue.Queue()
        self._readers = []
        self._cancelled = False
        self._killAt = None  # after a cancel: when a process still running is killed (poll)
        self._stdout, self._stderr = [], []

    # -- running ---------------------------------------------------------------------------

    def start(self) -> "BackgroundProcess":
        logging.info("BINDS: running %s", subprocess.list2cmdline(self.command))
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
            startupInfo = subprocess.STARTUPINFO()  # no console window (as slicer.util.launchConsoleProcess)
            startupInfo.dwFlags |= subprocess.STARTF_USESHOWWINDOW
            kwargs["startupinfo"] = startupInfo
        else:
            kwargs["start_new_session"] = True  # its own process group: cancel kills the launcher's child too
        self.proc = subprocess.Popen(
            self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            reader = threading.Thread(target=self._read, args=(name, stream), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    def _read(self, name, stream):
        for line in iter(stream.readline, ""):
            self._queue.put((name, line.rstrip("\r\n")))
        stream.close()

    def isRunning(self) -> bool:
        return self.proc is not None and self.result is None

    def poll(self) -> bool:
        """Handle the lines received so far; True while the process runs (keep polling)."""
        if self.proc is None or self.result is not None:
            return False
        self._drain()
        if self.proc.poll() is None or any(reader.is_alive() for reader in self._readers):
            if self._killAt is not None and time.monotonic() >= self._killAt:
                self._kill()  # cancelled, and still there after the grace time
            return True
        for reader in self._readers:
            reader.join()
        self._drain()
        self.result = ProcessResult(self.proc.returncode if not self._cancelled else CANCELLED,
                                    self._cancelled, self._stdout, self._stderr)
        if self.onFinished:
            self.onFinished(self.result)
        return False

    def _drain(self):
        while True:
            try:
                stream, line = self._queue.get_nowait()
            except queue.Empty:
                return
            (self._stdout if stream == "stdout" else self._stderr).append(line)
            progress = parseProgressLine(line) if stream == "stderr" else None
            if progress is not None:
                self.lastProgress = progress
                if self.onProgress:
                    self.onProgress(progress)
            elif self.onLog:
                self.onLog(stream, line)

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> ProcessResult:
        """Poll until the process ends (headless use). Raises TimeoutError after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel(block=True)
                raise TimeoutError(f"{subprocess.list2cmdline(self.command)} did not finish in {timeout} s")
            time.sleep(interval)
        return self.result

    def cancel(self, graceSeconds: float = 3.0, block: bool = False) -> None:
        """Stop the process and its children (PythonSlicer is a launcher that starts Python):
        SIGTERM now, and SIGKILL when :meth:`poll` finds it still running ``graceSeconds``
        later, so that a Cancel button never blocks the GUI. ``block``: wait here for the end
        (killing it after the grace time)."""
        if self.proc is None or self.result is not None:
            return
        if self.proc.poll() is not None and not any(reader.is_alive() for reader in self._readers):
            return  # it ended by itself (poll will say how)
        self._cancelled = True
        if self._killAt is None:
            self._killAt = time.monotonic() + graceSeconds
            try:
                if os.name == "nt":
                    subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.proc.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
                else:
                    os.killpg(self.proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        if block:
            try:
                self.proc.wait(max(0.0, self._killAt - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill()
                try:
                    self.proc.wait(graceSeconds)
                except subprocess.TimeoutExpired:  # not even SIGKILL ended it (uninterruptible sleep)
                    logging.warning("BINDS: process %s did not end after SIGKILL", self.proc.pid)

    def _kill(self) -> None:
        """SIGKILL to the process group (its children too), then to the process itself."""
        if os.name != "nt":
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.poll() is None:
            self.proc.kill()


def pollWithQtTimer(process: BackgroundProcess, intervalMs: int = 200):
    """Poll ``process`` from the Qt event loop until it ends (callbacks run in the GUI thread).

    Returns the timer (keep a reference to it while the process runs).
    """
    import qt

    timer = qt.QTimer()
    timer.setInterval(intervalMs)

    def onTimeout():
        try:
            running = process.poll()
        except Exception:  # noqa: BLE001 - never leave a timer firing on a broken callback
            logging.exception("BINDS: error while handling the background process")
            running = False
        if not running:
            timer.stop()

    timer.timeout.connect(onTimeout)
    timer.start()
    return timer
