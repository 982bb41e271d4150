"""thread_map runs the per-image steps side by side with the results and errors of the plain
loop; a study read, prepared, mapped back and written on threads is the same as on one."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import BINDSLib.threads as threads
from BINDSLib.errors import InputError
from BINDSLib.threads import thread_map


def test_results_in_item_order_on_several_threads():
    seen = set()

    def slow_square(x):
        seen.add(threading.current_thread().name)
        time.sleep(0.02 * (5 - x))  # later items finish first
        return x * x

    assert thread_map(slow_square, range(5), threads=3) == [0, 1, 4, 9, 16]
    assert len(seen) > 1 and all(n.startswith("binds-work") for n in seen)


def test_first_failure_in_item_order_is_raised_and_later_items_are_not_started():
    started = []

    def fn(x):
        started.append(x)
        if x == 1:
            time.sleep(0.05)
            raise InputError("item 1 is bad")
        if x == 2:
            raise ValueError("item 2 is bad too, but later")
        time.sleep(0.2)
        return x

    with pytest.raises(InputError, match="item 1"):
        thread_map(fn, range(12), threads=2)
    assert len(started) < 12  # the queue was cancelled


def test_one_thread_is_the_plain_loop(monkeypatch):
    monkeypatch.setattr(threads, "WORK_THREADS", 1)
    names = thread_map(lambda _: threading.current_thread().name, range(3))
    assert names == [threading.current_thread().name] * 3


def test_study_on_threads_equals_one_thread(tmp_path, monkeypatch):
    from BINDSLib.diagnose import DiagnoseOptions, diagnose_study
    from BINDSLib.model.inference import DiagnosisModel
    from BINDSLib.studyfolder import read_study_folder, write_study_folder
    from BINDSLib.synthetic import make_study

    folder = write_study_folder(make_study(3, diagnosis="malignant"), tmp_path / "study")
    model = DiagnosisModel.from_bundle(device="cpu")
    outs = {}
    for n in (1, 4):
        monkeypatch.setattr(threads, "WORK_THREADS", n)
        study = read_study_folder(folder)
        report = diagnose_study(model, study, tmp_path / f"out{n}",
                                DiagnoseOptions(stage="2", device="cpu", summary_png=False))
        outs[n] = (study, report)
    (s1, r1), (s4, r4) = outs[1], outs[4]
    assert [im.label for im in s1.images] == [im.label for im in s4.images]
    for a, b in zip(s1.images, s4.images):
        assert np.array_equal(a.voxels, b.voxels) and a.geometry == b.geometry
    assert r1.malignancy_probability == r4.malignancy_probability
    assert [i.label for i in r1.images] == [i.label for i in r4.images]
    files = sorted(p.name for p in (tmp_path / "out1").glob("*.nrrd"))
    assert files == sorted(p.name for p in (tmp_path / "out4").glob("*.nrrd")) and len(files) >= 8
    for name in files:  # segmentations and saliency maps, byte for byte
        assert (tmp_path / "out1" / name).read_bytes() == (tmp_path / "out4" / name).read_bytes(), name


def test_unreadable_image_is_named_whatever_the_threads(tmp_path, monkeypatch):
    from BINDSLib.studyfolder import read_study_folder, write_study_folder
    from BINDSLib.synthetic import make_study

    folder = write_study_folder(make_study(4), tmp_path / "study")
    files = sorted((folder / "images").glob("*.nrrd"))
    files[1].write_bytes(b"NRRD0004\nnot an image\n")
    files[3].write_bytes(b"")
    monkeypatch.setattr(threads, "WORK_THREADS", 4)
    with pytest.raises(InputError) as e:
        read_study_folder(folder)
    # the first broken file in study.json order, as a plain loop would report
    import json

    order = [im["path"] for im in json.loads((folder / "study.json").read_text())["images"]]
    broken = [p for p in order if p.endswith((files[1].name, files[3].name))]
    assert broken[0].split("/")[-1] in str(e.value)


def test_binds_diagnose_sets_the_malloc_mapping_threshold_in_its_own_process(monkeypatch, tmp_path):
    import subprocess
    import sys

    import BINDSLib.memory as memory
    from BINDSLib.studyfolder import write_study_folder
    from BINDSLib.synthetic import make_study

    if memory._LIBC is None:
        pytest.skip("not glibc")
    calls = []
    monkeypatch.setattr(memory._LIBC, "mallopt", lambda *a: calls.append(a) or 1, raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert memory.configure_malloc() and calls == [(-3, 16 * 2**20)]
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the user's setting wins
    assert not memory.configure_malloc() and len(calls) == 1
    # `binds diagnose` sets it in its own process; other commands (risk scoring) and a caller's
    # Python that runs main(argv) keep theirs
    seen = []
    monkeypatch.setattr(memory, "configure_malloc", lambda: seen.append(1) or True)
    import BINDSLib.cli as cli

    folder = write_study_folder(make_study(3), tmp_path / "study")
    assert cli.main(["diagnose", str(folder), "--out", str(tmp_path / "in-process"), "--no-summary"]) == 0
    assert seen == []
    code = ("import sys, BINDSLib.cli as c, BINDSLib.memory as m; seen = []; "
            "m.configure_malloc = lambda: seen.append(1); sys.argv = ['binds', *sys.argv[1:]]; "
            "rc = c.main(); print(rc, seen)")
    for args, expected in ((["diagnose", str(folder), "--out", str(tmp_path / "own"), "--no-summary"], "0 [1]"),
                           (["models"], "0 []")):
        run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert run.stdout.strip().splitlines()[-1] == expected, run.stderr[-2000:]


class _Names:  # a map-style dataset (module level: DataLoader workers pickle it)
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return thread_map(lambda _: threading.current_thread().name, range(3))


def test_dataloader_workers_use_no_extra_threads(monkeypatch):
    import torch

    monkeypatch.setattr(threads, "WORK_THREADS", 3)

    names = list(torch.utils.data.DataLoader(_Names(), batch_size=None, num_workers=1))
    assert all(len(set(n)) == 1 and not n[0].startswith("binds-work") for n in names)
    assert any(n.startswith("binds-work") for n in _Names()[0])  # in the main process they do


@pytest.fixture()
def ctrl_c_raises():
    """Python's own Ctrl-C handler for the test: a run started as a background job (``cmd &``)
    inherits SIGINT ignored, which the code under test rightly keeps."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_in_the_deferred_block_is_raised_after_it_not_lost(ctrl_c_raises):
    """Forking DataLoader workers runs at-fork hooks where a KeyboardInterrupt would be printed
    as "Exception ignored" and lost; held back, it stops the run as soon as the workers exist."""
    import os
    import signal

    from BINDSLib.threads import ctrl_c_deferred

    reached = []
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # Python runs signal handlers between bytecodes
                reached.append(1)
    assert len(reached) == 1000  # the block ran to its end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with ctrl_c_deferred():  # no Ctrl-C: nothing raised
        pass
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # a process that ignores Ctrl-C (a background job) keeps ignoring it
        with ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    # SIGTERM, where the command raises on it (binds ...: "terminated"), is held back the same way
    from BINDSLib import errors
    from BINDSLib.errors import Terminated, on_sigterm as _terminate

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        reached.clear()
        with pytest.raises(Terminated):
            with ctrl_c_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    reached.append(1)
        assert len(reached) == 1000 and signal.getsignal(signal.SIGTERM) is _terminate
        # both held, and a SIGTERM handler that only records: the Ctrl-C is not lost behind it
        seen = []
        signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
        with pytest.raises(KeyboardInterrupt):
            with ctrl_c_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):
                    pass
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
        errors._terminated.clear()  # (the handler remembers it for raise_if_terminated)
