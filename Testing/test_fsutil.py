"""Output folders: ``--overwrite`` replaces only what BINDS wrote, never an input, the current
folder or a file; problems are OutputErrors named before any work."""

from __future__ import annotations

import os

import pytest

from BINDSLib.cli import main
from BINDSLib.errors import OutputError
from BINDSLib.fsutil import atomic_dir, check_output_dir


def _tree(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else b"") for p in root.rglob("*"))


def test_overwrite_replaces_binds_outputs_and_empty_folders_only(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "report.json").write_text("{}")
    with atomic_dir(out, overwrite=True) as tmp:  # a BINDS output: replaced
        (tmp / "report.json").write_text('{"new": 1}')
    assert (out / "report.json").read_text() == '{"new": 1}'
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty", overwrite=True) as tmp:
        (tmp / "study.json").write_text("{}")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="is not an output of this kind"):
        with atomic_dir(mine, overwrite=True) as tmp:
            raise AssertionError("not reached")
    assert (mine / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("where", ["file", "input", "holds-input", "cwd", "cwd-parent", "root"])
def test_outputs_that_would_destroy_something_are_refused(tmp_path, monkeypatch, where):
    # the input is a study folder inside an earlier output: both look like BINDS outputs, so
    # only their being inputs (or the current folder) protects them
    data = tmp_path / "data"
    (data / "study").mkdir(parents=True)
    (data / "study" / "study.json").write_text("{}")
    (data / "report.json").write_text("{}")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "report.json").write_text("{}")
    monkeypatch.chdir(tmp_path / "work")
    target = {"file": tmp_path / "a-file", "input": data / "study", "holds-input": data,
              "cwd": ".", "cwd-parent": "..", "root": "/"}[where]
    before = _tree(tmp_path)
    with pytest.raises(OutputError) as e:
        with atomic_dir(target, overwrite=True, inputs=[data / "study"]):
            raise AssertionError("not reached")
    assert str(target) in str(e.value)
    assert _tree(tmp_path) == before


def test_a_removed_current_folder_does_not_stop_a_write(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "study.json").write_text("{}")
    assert (tmp_path / "out" / "study.json").is_file()


def test_each_writer_replaces_only_its_own_kind_of_output(tmp_path):
    """A report never replaces a study folder, a history or a bundle (one typo in --out away)."""
    from BINDSLib.fsutil import REPORT_SIGNS, STUDY_SIGNS
    from BINDSLib.studyfolder import write_study_folder
    from test_model_cases import make_case

    study = write_study_folder(make_case(0, True, ("US",)), tmp_path / "study")
    before = _tree(study)
    with pytest.raises(OutputError, match="is not an output of this kind \\(it holds no report.json\\)"):
        with atomic_dir(study, overwrite=True, signs=REPORT_SIGNS):
            raise AssertionError("not reached")
    assert _tree(study) == before
    with atomic_dir(study, overwrite=True, signs=STUDY_SIGNS) as tmp:  # a study folder by a study folder
        (tmp / "study.json").write_text("{}")
    assert (study / "study.json").read_text() == "{}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_parent_is_named_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="no permission to write in"):
            check_output_dir(ro / "out", overwrite=False)
    finally:
        ro.chmod(0o755)


def test_convert_and_diagnose_refuse_to_replace_their_inputs(tmp_path):
    import numpy as np
    import SimpleITK as sitk

    folder = tmp_path / "case"
    folder.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray((np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)),
                    str(folder / "us.png"))
    (folder / "other.txt").write_text("keep")
    before = _tree(tmp_path)
    for cmd in ("convert", "diagnose"):
        rc = main([cmd, "--role", f"US_L={folder / 'us.png'}", "--out", str(folder), "--overwrite"])
        assert rc == 5 and _tree(tmp_path) == before, cmd


def test_a_file_name_that_is_not_utf8_is_an_input_error_not_an_abort(tmp_path, capsys):
    """ITK aborts the whole process (std::logic_error) on such a name; a batch goes on."""
    import numpy as np
    import SimpleITK as sitk

    from BINDSLib.studyfolder import write_study_folder
    from test_model_cases import make_case

    if os.path.supports_unicode_filenames or os.name != "posix":
        pytest.skip("needs byte file names (POSIX)")
    bad = tmp_path / os.fsdecode(b"caf\xe9.png")
    sitk.WriteImage(sitk.GetImageFromArray((np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)),
                    str(tmp_path / "ok.png"))
    os.rename(tmp_path / "ok.png", bad)
    assert main(["diagnose", "--role", f"US_L={bad}", "--out", str(tmp_path / "o1"), "--no-summary"]) == 3
    assert "not UTF-8" in capsys.readouterr().err and not (tmp_path / "o1").exists()
    batch = tmp_path / "batch"
    write_study_folder(make_case(0, True, ("US",)), batch / "good")
    os.rename(write_study_folder(make_case(1, True, ("US",)), batch / "z"), batch / os.fsdecode(b"z\xe9"))
    assert main(["diagnose", str(batch), "--out", str(tmp_path / "o2"), "--no-summary", "--model",
                 "binds-diagnosis-demo"]) == 6
    failures = (tmp_path / "o2" / "failures.csv").read_text(encoding="utf-8")
    assert "not UTF-8" in failures and len((tmp_path / "o2" / "results.csv").read_text().splitlines()) == 2


def test_outputs_never_replace_a_bundle_a_dataset_study_or_a_user_folder(tmp_path, capsys):
    """The second sweep's data losses: --out naming the bundle a command reads, a study inside
    the --data it evaluates, a folder phantom did not write; and phantom leaving earlier cases."""
    import shutil

    from BINDSLib.studyfolder import write_study_folder
    from test_model_cases import make_case

    data = tmp_path / "data"
    for i, mal in enumerate((True, False, None)):
        write_study_folder(make_case(i, mal, ("US",)), data / f"case{i}")
    from BINDSLib.bundle import find_bundle

    bundle = shutil.copytree(find_bundle("binds-diagnosis-demo"), tmp_path / "bundle")
    before = _tree(tmp_path)
    for argv in (["diagnose", str(data / "case0"), "--model", str(bundle), "--out", str(bundle)],
                 ["evaluate", "--model", str(bundle), "--data", str(data), "--out", str(data / "case1")]):
        assert main([*argv, "--overwrite"]) == 5, argv
    assert "lies inside" in capsys.readouterr().err and _tree(tmp_path) == before
    mine = tmp_path / "mine"  # a dataset-like folder of the user's
    mine.mkdir()
    (mine / "manifest.csv").write_text("case_id\n")
    assert main(["phantom", "--out", str(mine), "--cases", "1", "--overwrite"]) == 5
    assert (mine / "manifest.csv").read_text() == "case_id\n" and len(list(mine.iterdir())) == 1
    ph = tmp_path / "ph"
    assert main(["phantom", "--out", str(ph), "--cases", "2"]) == 0
    assert main(["phantom", "--out", str(ph), "--cases", "1", "--overwrite", "--seed", "3"]) == 0
    assert sorted(p.name for p in ph.iterdir()) == ["case-0000", "manifest.csv"]  # no case-0001 left


def test_a_name_too_long_for_the_file_system_is_bad_input(tmp_path, capsys):
    long = tmp_path / ("x" * 300)
    assert main(["inspect", str(long)]) == 3
    assert "the name is too long" in capsys.readouterr().err
    assert main(["phantom", "--out", str(long), "--cases", "1"]) == 5


def test_demo_checks_its_model_and_output_before_writing(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["demo", "--model", "binds-us-busi", "--out", str(out)]) == 2  # reads no MRI
    assert "the demo runs both stages, with MRI" in capsys.readouterr().err and not out.exists()
    assert main(["demo", "--model", str(tmp_path / "nope"), "--out", str(out)]) == 4 and not out.exists()


def test_an_interrupted_demo_leaves_the_earlier_one_whole(tmp_path, monkeypatch, capsys):
    """The demo's study and outputs appear together: a demo stopped while diagnosing (Ctrl-C) left
    the new study beside the old report, or a study and no report; now the old demo stays."""
    import json

    import BINDSLib.diagnose as dg

    out = tmp_path / "d"
    assert main(["demo", "--out", str(out)]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert ".part" not in (out / "output" / "report.json").read_text()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(dg, "diagnose_study", interrupted)
    assert main(["demo", "--out", str(out), "--overwrite", "--seed", "8", "--diagnosis", "benign"]) == 130
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert main(["demo", "--out", str(tmp_path / "fresh")]) == 130 and not (tmp_path / "fresh").exists()
    assert json.loads((out / "study" / "study.json").read_text())["study_id"] == \
        json.loads((out / "output" / "report.json").read_text())["study_id"]
    # the user's files beside a demo: --overwrite (which replaces the folder whole) is refused
    monkeypatch.undo()
    (out / "my_notes.txt").write_text("mine")
    assert main(["demo", "--out", str(out), "--overwrite"]) == 5
    assert "holds other files than a demo's (my_notes.txt)" in capsys.readouterr().err
    assert (out / "my_notes.txt").read_text() == "mine"


def test_a_result_hidden_by_a_replacement_killed_between_its_renames_comes_back(tmp_path):
    """``--overwrite`` renames the old result to ``.NAME.old``, then the new one into place; a
    kill between the two left the old result hidden and none in its place."""
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old" / "report.json").write_text("{}")
    with pytest.raises(OutputError, match="already exists"):  # back in place: not silently replaced
        with atomic_dir(tmp_path / "out", signs=("report.json",)):
            pass
    assert (tmp_path / "out" / "report.json").read_text() == "{}" and not (tmp_path / ".out.old").exists()
    with atomic_dir(tmp_path / "out", overwrite=True, signs=("report.json",)) as d:
        (d / "report.json").write_text('{"new": 1}')
    assert (tmp_path / "out" / "report.json").read_text() == '{"new": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_lock_left_in_a_folder_is_not_content(tmp_path):
    """A batch stopped before writing anything leaves only its lock file: --overwrite still
    takes the folder as empty (it was refused as "not an output of this kind")."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".binds.lock").write_text("")
    assert main(["phantom", "--out", str(tmp_path / "out"), "--overwrite", "--cases", "1"]) == 0


def test_a_folder_a_running_command_holds_is_never_replaced(tmp_path):
    """A batch that has started but written nothing yet leaves only its lock: --overwrite of
    that folder by another command waits for no one, so it is refused while the lock is held."""
    from BINDSLib.fsutil import output_lock

    (tmp_path / "out").mkdir()
    with output_lock(tmp_path / "out", "binds diagnose batch"):
        assert main(["phantom", "--out", str(tmp_path / "out"), "--overwrite", "--cases", "1"]) == 5
    assert main(["phantom", "--out", str(tmp_path / "out"), "--overwrite", "--cases", "1"]) == 0


def test_only_a_whole_hidden_result_comes_back(tmp_path):
    """A removal of .NAME.old cut short left part of it: that is not brought back as a result."""
    (tmp_path / ".out.old" / "maps").mkdir(parents=True)
    (tmp_path / ".out.old" / "maps" / "half.nrrd").write_text("")
    with atomic_dir(tmp_path / "out", signs=("report.json",)) as d:
        (d / "report.json").write_text("{}")
    assert (tmp_path / "out" / "report.json").is_file() and not (tmp_path / "out" / "maps").exists()


def test_the_leftovers_of_a_killed_writer_are_removed_by_the_next_one(tmp_path):
    """A writer killed outright (SIGKILL) leaves its hidden .NAME.HOST-PID.XXXX.part folder; the
    next write of NAME removes it once that process is gone, and leaves those of live processes
    and of other hosts alone."""
    import subprocess
    import sys

    from BINDSLib.fsutil import _owner_tag

    host = _owner_tag().split("-")[0]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    left = {"dead": tmp_path / f".out.{host}-{dead}.abc.part", "alive": tmp_path / f".out.{_owner_tag()}.def.part",
            "other host": tmp_path / f".out.0badc0de-{dead}.ghi.part", "other name": tmp_path / f".outer.{host}-{dead}.j.part"}
    for p in left.values():
        (p / "sub").mkdir(parents=True)
    with atomic_dir(tmp_path / "out", signs=("report.json",)) as d:
        assert d.name.startswith(f".out.{_owner_tag()}.") and d.name.endswith(".part")
        (d / "report.json").write_text("{}")
    assert not left["dead"].exists()
    assert all(left[k].exists() for k in ("alive", "other host", "other name"))


def test_inputs_with_a_loop_of_links_or_a_nul_are_no_internal_error(tmp_path):
    """Path.resolve() raises on a loop of links (RuntimeError or OSError, by Python version) and
    on a NUL: an output checked against such an input is still checked (hostile-input audit:
    binds cohort ended with an internal error)."""
    import os

    from BINDSLib.errors import OutputError
    from pathlib import Path

    from BINDSLib.fsutil import check_not_input, resolved

    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    assert resolved(tmp_path / "a") in (tmp_path / "a", tmp_path / "b")
    assert resolved("x\0y") == Path(os.path.abspath("xy"))
    check_not_input(tmp_path / "out", [tmp_path / "a", "x\0y"])  # (no error: the output is neither)
    with pytest.raises(OutputError, match="holds an input of this command"):
        check_not_input(tmp_path, [tmp_path / "a"])
