"""``binds cohort``: manifest checks, sharding, failures, kill-and-resume exactly once, torchrun ranks."""

from __future__ import annotations

import csv
import shutil
import json
import logging
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from BINDSLib.errors import InputError
from BINDSLib.risk.cohort import read_manifest, shard
from BINDSLib.studyfolder import write_study_folder
from test_risk_support import make_exam, tiny_bundle

REPO = Path(__file__).resolve().parents[1]


def write_cohort(root: Path, n_exams: int, n_folders: int = 6, shape=(80, 60), broken=()) -> Path:
    """``n_exams`` manifest rows over ``n_folders`` distinct study folders (reading is per row)."""
    for k in range(n_folders):
        drop = [("L", "MLO")] if k == 1 else ()
        write_study_folder(make_exam(k, dt.date(2018 + k % 4, 5, 1), shape=shape, drop=drop,
                                     study_id=f"S{k}"), root / f"study{k}")
    lines = ["exam_id,path,woman_id,exam_date"]
    for i in range(n_exams):
        path = "missing-folder" if i in broken else f"study{i % n_folders}"
        lines.append(f"EX{i:04d},{path},W{i // 5},")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("b") / "risk-tiny")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cohort_cmd(manifest, out, bundle, *extra):
    return [sys.executable, "-m", "BINDSLib", "cohort", str(manifest), "--out", str(out),
            "--model", str(bundle), *extra]


def test_manifest_is_checked(tmp_path, caplog):
    m = tmp_path / "m.csv"
    m.write_text("id,folder\n1,a\n")
    with pytest.raises(InputError, match="lacks column"):
        read_manifest(m)
    m.write_text("woman,study_folder,exam_date\nw1,w1/2019-01-02_e1,2019-01-02\n")  # binds phantom's
    (row,) = read_manifest(m)
    assert (row.exam_id, row.woman_id, row.exam_date) == ("w1/2019-01-02_e1", "w1", dt.date(2019, 1, 2))
    m.write_text("exam_id,path\nA,a\nA,b\n")
    with pytest.raises(InputError, match="line 3: exam_id 'A' repeats line 2"):
        read_manifest(m)
    m.write_text(f"exam_id,path\nA,w/e1\nB,w/x/../e1/\nC,{tmp_path / 'w' / 'e1'}\n")  # one folder as three exams
    with caplog.at_level(logging.WARNING):
        assert len(read_manifest(m)) == 3
    assert "line 3: path 'w/x/../e1/' repeats line 2: that exam is scored twice" in caplog.text
    assert f"line 4: path '{tmp_path / 'w' / 'e1'}' repeats line 2" in caplog.text
    # hostile paths (hostile-input audit: exit 1 from deep inside Python): a NUL said by line, a
    # loop of links read (its exam fails when scored, as a missing folder does)
    m.write_text("exam_id,path\nA,w/e\0vil\n")
    with pytest.raises(InputError, match=r"line 2: path 'w/e\\x00vil' holds a NUL character"):
        read_manifest(m)
    os.symlink(tmp_path / "loop-b", tmp_path / "loop-a")
    os.symlink(tmp_path / "loop-a", tmp_path / "loop-b")
    m.write_text("exam_id,path\nA,loop-a\n")
    assert [r.exam_id for r in read_manifest(m)] == ["A"]
    m.write_text("exam_id,path,exam_date\nA,a,2020-13-40\n")
    with pytest.raises(InputError, match="line 2"):
        read_manifest(m)
    # blank lines: messages name the file's line, outputs number the exams (manifest_row)
    m.write_text("exam_id,path,exam_date\n\nA,a,2020-01-02\n\n\nB,b,2020-13-40\n")
    with pytest.raises(InputError, match="line 6:"):
        read_manifest(m)
    m.write_text("exam_id,path\n\nA,a,extra cell\n,\nB,b\n")  # blank line, emptied row, a cell too many
    assert [(r.row, r.line) for r in read_manifest(m)] == [(1, 3), (2, 5)]
    m.write_text("exam_id,path,exam_date\nA,sub/a,2020-01-02\n")
    (row,) = read_manifest(m)
    assert row.path == tmp_path / "sub" / "a" and row.exam_date == dt.date(2020, 1, 2)


def test_shards_partition_the_manifest(tmp_path):
    rows = read_manifest(write_cohort(tmp_path, 23, n_folders=1))
    shards = [shard(rows, r, 4) for r in range(4)]
    ids = [r.exam_id for s in shards for r in s]
    assert sorted(ids) == sorted(r.exam_id for r in rows) and len(set(ids)) == 23


def test_failures_are_listed_not_fatal(tmp_path, bundle, capsys):
    from BINDSLib.cli import main

    manifest = write_cohort(tmp_path, 12, broken={3, 7})
    out = tmp_path / "out"
    rc = main(["cohort", str(manifest), "--out", str(out), "--model", str(bundle), "--workers", "0",
               "--batch-size", "5"])
    assert rc == 6
    scores = read_rows(out / "scores.csv")
    assert len(scores) == 10 and [int(r["manifest_row"]) for r in scores] == [1, 2, 3, 5, 6, 7, 9, 10, 11, 12]
    fails = read_rows(out / "failures.csv")
    assert [r["manifest_row"] for r in fails] == ["4", "8"] and "not found" in fails[0]["error"]
    # the errors name neither the exam's path nor its IDs (only with --keep-identifiers)
    assert fails[0]["error"] == "InputError: <exam>: exam not found" and fails[0]["path"] == ""
    # pseudonymised by default, per-breast columns, the masked view noted
    assert all(r["exam_id"].startswith("anon-") and r["woman_id"].startswith("anon-") for r in scores)
    assert "EX0" not in (out / "scores.csv").read_text()
    row2 = scores[1]  # study1 lacks L-MLO
    assert "L-MLO" in row2["warnings"] and row2["left_risk_5y"] != ""
    assert all(float(r["risk_1y"]) <= float(r["risk_5y"]) for r in scores)
    assert "10/12 exams scored, 2 failed" in capsys.readouterr().out
    # a re-run once the missing folder exists scores only those two
    write_study_folder(make_exam(50, dt.date(2020, 1, 1), study_id="X"), tmp_path / "missing-folder")
    assert main(["cohort", str(manifest), "--out", str(out), "--model", str(bundle), "--workers", "0"]) == 0
    assert len(read_rows(out / "scores.csv")) == 12 and read_rows(out / "failures.csv") == []
    # another model in the same folder is refused
    other = tiny_bundle(tmp_path / "other", seed=9)
    assert main(["cohort", str(manifest), "--out", str(out), "--model", str(other)]) == 5
    # while a run writes into the folder, a second one (whose --overwrite would empty it) is refused
    from BINDSLib.fsutil import output_lock

    before = (out / "scores.csv").read_bytes()
    with output_lock(out, "binds cohort"):
        assert main(["cohort", str(manifest), "--out", str(out), "--model", str(bundle), "--overwrite"]) == 5
    assert "another binds cohort is writing into this folder now" in capsys.readouterr().err
    assert (out / "scores.csv").read_bytes() == before and (out / "parts").is_dir()


def test_failure_messages_hide_the_exams_paths_and_ids_unless_kept(tmp_path, bundle):
    from BINDSLib.cli import main
    from BINDSLib.study import Image, Modality, Role, Study

    im = make_exam(0).images[0]  # an exam whose only mammogram has no view: fails after reading
    write_study_folder(Study("ACC-77", [Image(im.voxels, im.geometry, Role(Modality.MG, laterality="L"))],
                             patient_id="Jane Doe"), tmp_path / "jane-2020", keep_identifiers=True)
    (tmp_path / "m.csv").write_text("exam_id,path,woman_id\nE-1,jane-2020,W-9\nE-2,gone/jane-2021,W-9\n")
    for keep, out in ((False, tmp_path / "anon"), (True, tmp_path / "kept")):
        main(["cohort", str(tmp_path / "m.csv"), "--out", str(out), "--model", str(bundle), "--workers", "0",
              *(["--keep-identifiers"] if keep else [])])
        errors = [r["error"] for r in read_rows(out / "failures.csv")]
        assert len(errors) == 2 and "no standard mammography view" in errors[0] and "not found" in errors[1]
        text = "".join(errors)
        if keep:
            assert "ACC-77" in text and "gone/jane-2021" in text
        else:
            assert errors == ["InputError: exam <id> has no standard mammography view (needs MG images with "
                              "laterality L/R and view CC/MLO)", "InputError: <exam>: exam not found"]


def test_a_resumed_folder_merges_only_the_current_manifest_in_its_order(tmp_path, bundle):
    from BINDSLib.cli import main
    from BINDSLib.study import pseudonym

    manifest = write_cohort(tmp_path, 8)
    out = tmp_path / "out"
    assert main(["cohort", str(manifest), "--out", str(out), "--model", str(bundle), "--workers", "0"]) == 0
    full = {r["exam_id"]: r for r in read_rows(out / "scores.csv")}
    lines = manifest.read_text().splitlines()
    sub = tmp_path / "sub.csv"  # three of the exams, in reverse order, plus a new one
    sub.write_text("\n".join([lines[0], lines[6], lines[2], lines[1], "NEW1,study0,W9,"]) + "\n")
    assert main(["cohort", str(sub), "--out", str(out), "--model", str(bundle), "--workers", "0"]) == 0
    rows = read_rows(out / "scores.csv")
    assert [r["manifest_row"] for r in rows] == ["1", "2", "3", "4"]
    ids = [r["exam_id"] for r in rows]
    assert ids == [pseudonym(e) for e in ("EX0005", "EX0001", "EX0000", "NEW1")]  # the new manifest's order
    assert all(full[i]["risk_5y"] == r["risk_5y"] for i, r in zip(ids[:3], rows))  # reused, not re-scored
    assert ids[3] not in full
    import json

    assert json.loads((out / "summary.json").read_text())["n_scored"] == 4


def test_killed_midway_and_rerun_scores_each_exam_exactly_once(tmp_path, bundle):
    n = 300
    manifest = write_cohort(tmp_path, n, shape=(400, 300))
    out = tmp_path / "out"
    part = out / "parts" / "scores-rank0.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = cohort_cmd(manifest, out, bundle, "--batch-size", "4", "--workers", "1", "--progress-every", "1")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if part.is_file() and part.read_bytes().count(b"\n") > 40:
                break
            if proc.poll() is not None:
                pytest.fail(f"cohort ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its loader worker
    finally:
        proc.wait(timeout=30)
    first = read_rows(part)
    assert 0 < len(first) < n, "the run must have been killed midway"
    assert not (out / "scores.csv").exists()

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already scored" in done.stdout
    merged = read_rows(out / "scores.csv")
    ids = [r["exam_id"] for r in merged]
    assert len(ids) == n and len(set(ids)) == n
    assert [int(r["manifest_row"]) for r in merged] == list(range(1, n + 1))
    parts = read_rows(part)
    assert len(parts) == n and len({r["exam_id"] for r in parts}) == n  # nothing scored twice
    assert {r["exam_id"]: r for r in parts}[first[0]["exam_id"]] == first[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_score_their_shares_and_rank0_merges(tmp_path, bundle):
    """What torchrun --nproc-per-node 2 does: two processes with RANK/WORLD_SIZE and a gloo group."""
    manifest = write_cohort(tmp_path, 30, n_folders=3)
    out = tmp_path / "out"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO), "RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(cohort_cmd(manifest, out, bundle, "--workers", "0"), env=env,
                                      cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-1500:] for r in results]
    r0 = read_rows(out / "parts" / "scores-rank0.csv")
    r1 = read_rows(out / "parts" / "scores-rank1.csv")
    assert {int(r["manifest_row"]) % 2 for r in r0} == {1} and {int(r["manifest_row"]) % 2 for r in r1} == {0}
    merged = read_rows(out / "scores.csv")
    assert [int(r["manifest_row"]) for r in merged] == list(range(1, 31))


def test_loader_workers_leave_ctrl_c_to_the_main_process():
    """Ctrl-C goes to every process of the terminal's group; a loader worker must not print
    its own KeyboardInterrupt traceback after the main process's one-line "interrupted"."""
    code = ("import os, signal, time\n"
            "from BINDSLib.risk.cohort import _worker_init\n"
            "_worker_init(0)\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(0.2)\n"
            "print('still running')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == "still running\n", out.stderr
    # SIGTERM (the loader's stop for a worker that does not end in time) ends a worker quietly,
    # also when the command's own handler (raising "terminated" in the main process) was inherited
    code = ("import os, signal, time\n"
            "from BINDSLib.errors import on_sigterm as _terminate\n"
            "from BINDSLib.risk.cohort import _worker_init\n"
            "signal.signal(signal.SIGTERM, _terminate)\n"
            "_worker_init(0)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(5)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == -15 and out.stderr == "", out.stderr


def test_a_run_stopped_while_setting_up_its_folder_can_be_started_again(tmp_path, monkeypatch):
    import BINDSLib.risk.cohort as cohort

    def stopped(*a, **k):
        raise KeyboardInterrupt

    settings = {"model": "m", "keep_identifiers": False}
    with monkeypatch.context() as m:
        m.setattr(cohort, "atomic_write_json", stopped)
        with pytest.raises(KeyboardInterrupt):
            cohort.prepare_output(tmp_path / "out", settings, overwrite=False)
    cohort.prepare_output(tmp_path / "out", settings, overwrite=False)  # not "holds no cohort run"
    assert json.loads((tmp_path / "out" / "run.json").read_text()) == settings
    assert (tmp_path / "out" / cohort.PARTS).is_dir()


def test_a_resume_whose_manifest_changed_an_exam_is_refused(tmp_path, bundle, capsys):
    """An exam already scored but now listed with another path, woman or date would be merged
    with its stale scores: the resume is refused naming the manifest line. Part files of an
    earlier BINDS (no source column) still resume."""
    from BINDSLib.cli import main

    manifest = write_cohort(tmp_path, 6)
    out = tmp_path / "out"
    run = ["cohort", str(manifest), "--out", str(out), "--model", str(bundle), "--workers", "0"]
    assert main(run) == 0
    lines = manifest.read_text().splitlines()
    assert lines[3] == "EX0002,study2,W0,"
    for changed in ("EX0002,study2,W7,", "EX0002,study4,W0,", "EX0002,study2,W0,2019-01-01"):
        manifest.write_text("\n".join(lines[:3] + [changed] + lines[4:]) + "\n")
        capsys.readouterr()
        assert main(run) == 3, changed
        err = capsys.readouterr().err
        assert "1 exam(s) already scored in" in err
        assert "listed with another path, woman or date (manifest line(s) 4)" in err
    assert main(run + ["--merge-only"]) == 3  # merging alone would merge them stale too
    assert main(run + ["--overwrite"]) == 0
    assert read_rows(out / "scores.csv")[2]["exam_date"] == "2019-01-01"
    # part files of an earlier BINDS, without the source column: resumed, and from then on
    # the exams scored carry it (the file's header gains the column once)
    part = out / "parts" / "scores-rank0.csv"
    rows = read_rows(part)
    columns = [c for c in rows[0] if c != "source"]
    part.write_text(",".join(columns) + "\n" + "".join(",".join(r[c] for c in columns) + "\n" for r in rows[:4]))
    assert main(run) == 0
    assert len(read_rows(out / "scores.csv")) == 6
    after = read_rows(part)
    assert [bool(r["source"]) for r in after] == [False] * 4 + [True] * 2
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:6] + [lines[6].replace(",W1,", ",W8,")]) + "\n")  # EX0005, re-scored
    assert main(run) == 3


def test_parquet_without_pyarrow_is_refused_before_scoring(tmp_path, bundle, monkeypatch, capsys):
    import builtins

    from BINDSLib.cli import main

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    manifest = write_cohort(tmp_path, 2)
    capsys.readouterr()
    assert main(["cohort", str(manifest), "--out", str(tmp_path / "out"), "--model", str(bundle),
                 "--format", "parquet"]) == 2
    assert "--format parquet needs pyarrow" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing scored, nothing written


def test_a_folder_of_other_files_is_refused_before_anything_is_removed_or_locked(tmp_path, bundle, capsys):
    """--overwrite replaces a cohort run, never a folder of the user's: refused, every file kept
    and no lock file left; an --out that holds the manifest is refused too."""
    from BINDSLib.cli import main
    from BINDSLib.fsutil import LOCK_NAME

    manifest = write_cohort(tmp_path / "data", 3, n_folders=3)
    mine = tmp_path / "mine"
    (mine / "parts").mkdir(parents=True)
    files = {"scores.csv": "precious", "summary.json": "mine", "parts/notes.txt": "keep", "thesis.docx": "other"}
    for name, text in files.items():
        (mine / name).write_text(text)
    for extra in ([], ["--overwrite"]):
        assert main(["cohort", str(manifest), "--out", str(mine), "--model", str(bundle), "--workers", "0",
                     *extra]) == 5
        assert "holds no cohort run (run.json)" in capsys.readouterr().err
        assert {str(p.relative_to(mine)): p.read_text() for p in mine.rglob("*") if p.is_file()} == files
    assert main(["cohort", str(manifest), "--out", str(tmp_path / "data"), "--model", str(bundle),
                 "--workers", "0", "--overwrite"]) == 5
    assert "holds an input of this command" in capsys.readouterr().err
    assert not (tmp_path / "data" / LOCK_NAME).exists() and not (mine / LOCK_NAME).exists()


def test_a_file_where_the_cohort_keeps_a_folder_is_an_output_problem(tmp_path, bundle, capsys):
    """A resumed cohort folder whose parts/ is a file (or scores.csv a folder): exit 5 naming
    it, not an internal error."""
    from BINDSLib.cli import main

    manifest = write_cohort(tmp_path / "data", 3, n_folders=3)
    out = tmp_path / "co"
    run = ["cohort", str(manifest), "--out", str(out), "--model", str(bundle), "--workers", "0"]
    assert main(run) == 0
    (out / "scores.csv").unlink()
    (out / "scores.csv").mkdir()
    assert main(run) == 5
    err = capsys.readouterr().err
    assert "scores.csv" in err and "is a file where a folder belongs" in err and "internal error" not in err
    (out / "scores.csv").rmdir()
    shutil.rmtree(out / "parts")
    (out / "parts").write_text("not a folder")
    assert main(run) == 5
    assert "internal error" not in capsys.readouterr().err


def test_a_remembered_sigterm_ends_the_cohort_at_its_next_batch_and_training_at_its_next_step(tmp_path, bundle,
                                                                                            capsys):
    """A SIGTERM whose exception a library swallowed (errors.raise_if_terminated) ends a long
    cohort run or a training run at its next batch, not hours later at its output."""
    from BINDSLib import errors
    from BINDSLib.cli import main
    from BINDSLib.risk.config import PRESETS, TrainConfig
    from BINDSLib.risk.train import train
    from test_risk_train import fabricated_histories

    manifest = write_cohort(tmp_path, 4)
    errors._terminated.append(signal.SIGTERM)
    try:
        assert main(["cohort", str(manifest), "--out", str(tmp_path / "out"), "--model", str(bundle),
                     "--workers", "0"]) == 143
        assert "binds cohort: terminated" in capsys.readouterr().err
        assert not (tmp_path / "out" / "scores.csv").exists()
        with pytest.raises(errors.Terminated):
            train(fabricated_histories(8), PRESETS["tiny"], TrainConfig(n_women=8, epochs=1, batch_size=4,
                                                                        split=(0.5, 0.25, 0.25)))
    finally:
        errors._terminated.clear()
