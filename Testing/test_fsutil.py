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
    with pytest.raises(OutputError, match="holds files BINDS did not write"):
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


def test_a_folder_of_study_folders_binds_wrote_can_be_replaced(tmp_path):
    from BINDSLib.studyfolder import write_study_folder
    from test_model_cases import make_case

    out = tmp_path / "converted"
    for i in range(2):
        write_study_folder(make_case(i, True, ("US",)), out / f"case{i}")
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "study.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["study.json"]


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
