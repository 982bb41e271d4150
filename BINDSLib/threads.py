"""A small thread pool for image work around the network.

SimpleITK (reading, resampling, writing), zlib and numpy's large-array arithmetic release the
GIL, so the per-image steps of a study (decompressing its files, normalising and resampling
its images, mapping maps back, compressing outputs) run side by side on the cores that torch
is not using at that moment. Results and errors are those of the plain loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

from .memory import malloc_trim

T = TypeVar("T")
R = TypeVar("R")

#: Largest number of threads :func:`thread_map` uses (``BINDS_THREADS`` overrides; 1 runs the
#: plain loop).
WORK_THREADS = max(1, int(os.environ.get("BINDS_THREADS") or min(4, os.cpu_count() or 1)))


def _in_data_worker() -> bool:
    """Inside a torch DataLoader worker process (training): the workers already share out the
    cores, so per-image threads would only oversubscribe them."""
    torch = sys.modules.get("torch")
    try:
        return torch is not None and torch.utils.data.get_worker_info() is not None
    except AttributeError:
        return False


def thread_map(fn: Callable[[T], R], items: Iterable[T], threads: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on up to ``threads`` (default :data:`WORK_THREADS`; one in a
    DataLoader worker) threads, results in order. If calls fail, the first failing item's
    exception is raised (as the loop would), after the calls already running have finished; the
    others are not started."""
    items = list(items)
    n = min(threads or (1 if _in_data_worker() else WORK_THREADS), len(items))
    if n <= 1:
        return [fn(x) for x in items]
    ex = ThreadPoolExecutor(n, thread_name_prefix="binds-work")
    try:
        futures = [ex.submit(fn, x) for x in items]
        return [f.result() for f in futures]
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        malloc_trim()  # what the workers freed in their own arenas


@contextlib.contextmanager
def ctrl_c_deferred():
    """Hold back Ctrl-C (SIGINT), and SIGTERM where the command raises on it (``cli``), while the
    block runs, and raise it after (``KeyboardInterrupt``, or what the SIGTERM handler raises).

    For starting DataLoader workers: forking runs Python's at-fork hooks (logging's lock release),
    and a ``KeyboardInterrupt`` raised inside one is printed as "Exception ignored" and lost - the
    run went on as if Ctrl-C had not been pressed. A no-op outside the main thread; a signal that
    is ignored, or handled by default, is left as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    handlers = {s: h for s, h in handlers.items() if callable(h)}  # (not SIG_IGN, SIG_DFL, None)
    held: list[int] = []
    for s in handlers:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        block = getattr(signal, "pthread_sigmask", None)  # (none on Windows)
        if block:  # restored together: a signal between the two must not leave one held forever
            block(signal.SIG_BLOCK, set(handlers))
        try:
            for s, h in handlers.items():
                signal.signal(s, h)
        finally:
            if block:
                block(signal.SIG_UNBLOCK, set(handlers))
    for s in dict.fromkeys(held):  # each signal held, once, in order (a handler may not raise)
        handlers[s](s, None)


def ignore_ctrl_c(_worker_id: int = 0) -> None:
    """In a DataLoader worker: leave Ctrl-C to the main process. Ctrl-C reaches the terminal's
    whole process group; the main process stops the run and shuts its workers down, while a
    worker handling it would print a traceback of its own. SIGTERM (which the main process's
    DataLoader sends a worker that does not stop in time) ends a worker quietly, as by default:
    the command's own SIGTERM handler (``cli``) is for the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
