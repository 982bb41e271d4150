"""``binds convert``: DICOM and image files -> study folders that read back identically."""

from __future__ import annotations

import numpy as np

from BINDSLib.cli import main
from BINDSLib.io.loader import load
from BINDSLib.studyfolder import read_study_folder


def _same(a, b):
    assert a.study_id == b.study_id and a.synthetic == b.synthetic
    got = {im.role: im for im in b.images}
    assert set(got) == {im.role for im in a.images}
    for im in a.images:
        other = got[im.role]
        assert other.shape == im.shape, im.label
        assert np.array_equal(np.asarray(other.geometry.spacing_mm), np.asarray(im.geometry.spacing_mm))
        assert np.array_equal(np.asarray(other.geometry.origin_mm), np.asarray(im.geometry.origin_mm))
        assert np.array_equal(np.asarray(other.geometry.direction), np.asarray(im.geometry.direction))
        assert np.array_equal(other.voxels, im.voxels), im.label


def test_dicom_phantom_to_study_folder(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "ph"), "--cases", "1", "--seed", "4", "--dicom"]) == 0
    dicom = tmp_path / "ph" / "case-0000-dicom"
    capsys.readouterr()
    assert main(["convert", str(dicom), "--out", str(tmp_path / "sf"), "--keep-identifiers"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "sf")
    (direct,) = load(dicom).studies
    _same(direct, read_study_folder(tmp_path / "sf"))
    # an existing output is refused without --overwrite, and left as it was
    before = (tmp_path / "sf" / "study.json").read_text()
    assert main(["convert", str(dicom), "--out", str(tmp_path / "sf")]) == 5  # (pseudonyms: another study.json)
    assert (tmp_path / "sf" / "study.json").read_text() == before
    # the same conversion again finds its study there: kept as it was, not refused
    inode = (tmp_path / "sf").stat().st_ino
    capsys.readouterr()
    assert main(["convert", str(dicom), "--out", str(tmp_path / "sf"), "--keep-identifiers"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "sf")
    assert (tmp_path / "sf").stat().st_ino == inode
    assert main(["convert", str(dicom), "--out", str(tmp_path / "sf"), "--overwrite"]) == 0
    assert (tmp_path / "sf").stat().st_ino != inode


def test_several_studies_get_one_folder_each(tmp_path, cbis_cases, capsys):
    assert main(["convert", str(cbis_cases), "--out", str(tmp_path / "sf")]) == 0
    folders = capsys.readouterr().out.split()
    assert len(folders) == 2 and all(p.startswith(str(tmp_path / "sf")) for p in folders)
    studies = sorted(load(cbis_cases).studies, key=lambda s: s.study_id)
    back = sorted((read_study_folder(p) for p in folders), key=lambda s: s.study_id)
    for a, b in zip(studies, back):
        _same(a, b)
        # real patient IDs become pseudonyms unless --keep-identifiers
        assert a.patient_id and b.patient_id.startswith("anon-") and b.patient_id != a.patient_id


def test_nothing_readable_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "empty"), "--out", str(tmp_path / "sf")]) == 3
    err = capsys.readouterr().err
    assert str(tmp_path / "empty") in err and "no DICOM images found" in err
    assert not (tmp_path / "sf").exists()


def test_an_old_pydicom_first_on_the_path_is_named(tmp_path, monkeypatch, capsys):
    """Slicer bundles pydicom 2.4; BINDS reads DICOM with pydicom 3 (docs/SLICER.md)."""
    import pydicom

    assert main(["phantom", "--out", str(tmp_path / "ph"), "--cases", "1", "--seed", "4", "--dicom"]) == 0
    monkeypatch.setattr(pydicom, "__version__", "2.4.4")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "ph" / "case-0000-dicom"), "--out", str(tmp_path / "sf")]) == 1
    err = capsys.readouterr().err
    assert "needs pydicom 3 or later" in err and "2.4.4" in err and err.count("\n") == 1
    assert not (tmp_path / "sf").exists()


def test_the_private_package_folder_goes_first_on_sys_path(tmp_path):
    """BINDS_PRIVATE_SITE beats whatever the PythonSlicer launcher put on PYTHONPATH."""
    import os
    import subprocess
    import sys

    private = tmp_path / "private"
    (private / "pydicom").mkdir(parents=True)
    (private / "pydicom" / "__init__.py").write_text("__version__ = '99.0-private'\n")
    env = dict(os.environ, BINDS_PRIVATE_SITE=str(private))
    code = ("import runpy, sys; sys.argv = ['binds', '--version']\n"
            "try:\n    runpy.run_module('BINDSLib', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "import pydicom; print('PYDICOM', pydicom.__version__)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "PYDICOM 99.0-private" in out.stdout, out.stderr


def test_a_view_given_twice_is_written_with_a_warning_that_diagnose_will_refuse_it(tmp_path, caplog):
    import SimpleITK as sitk

    for name in ("a.png", "b.png"):
        pixels = (np.random.default_rng(len(name) + ord(name[0])).random((40, 30)) * 255).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(pixels), str(tmp_path / name))
    with caplog.at_level("WARNING"):
        assert main(["convert", "--role", f"MG_L_CC={tmp_path / 'a.png'}", "--role", f"MG_L_CC={tmp_path / 'b.png'}",
                     "--out", str(tmp_path / "study")]) == 0
    assert "holds the view MG_L_CC 2 times" in caplog.text and "binds diagnose refuses such a study" in caplog.text
    assert (tmp_path / "study" / "study.json").is_file()


def test_image_files_named_after_their_roles_are_one_study(tmp_path):
    import SimpleITK as sitk

    from BINDSLib.studyfolder import read_study_folder as read

    case = tmp_path / "case"
    case.mkdir()
    names = ("MG_L_CC", "MG_L_MLO", "MG_R_CC", "MG_R_MLO")
    for k, name in enumerate(names):
        pixels = (np.random.default_rng(k).random((40, 30)) * 255).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(pixels), str(case / f"{name}.png"))
    files = [str(case / f"{n}.png") for n in names]
    assert main(["convert", *files, "--out", str(tmp_path / "one")]) == 0
    assert sorted(im.label for im in read(tmp_path / "one").images) == sorted(names)
    assert main(["diagnose", *files, "--out", str(tmp_path / "dx"), "--no-summary", "--model",
                 "binds-diagnosis-demo"]) == 0
    assert (tmp_path / "dx" / "report.json").is_file()  # one study, not four clashing ones


def test_a_folder_of_role_named_image_files_is_one_study(tmp_path, capsys):
    """The folder of the files (no DICOM in it) reads as the files given together; a file whose
    name is not a role is skipped with the reason, not fatal."""
    import SimpleITK as sitk

    case = tmp_path / "case"
    case.mkdir()
    for k, name in enumerate(("MG_L_CC", "MG_L_MLO", "notes")):
        pixels = (np.random.default_rng(k).random((40, 30)) * 255).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(pixels), str(case / f"{name}.png"))
    res = load(case)
    (study,) = res.studies
    assert study.study_id == "case" and sorted(im.label for im in study.images) == ["MG_L_CC", "MG_L_MLO"]
    assert [(s.path, "the name is not a role" in s.reason) for s in res.skipped] == [(str(case / "notes.png"), True)]
    assert main(["inspect", str(case)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 study, 2 image(s), 1 skipped") and "notes.png: not read" in out
    # none named after a role: the message says what to do, not "no DICOM images found"
    (case / "MG_L_CC.png").rename(case / "left.png")
    (case / "MG_L_MLO.png").rename(case / "left2.png")
    assert main(["inspect", str(case)]) == 3
    assert "none of its 3 image file(s) is named after a role" in capsys.readouterr().err


def test_several_studies_join_a_folder_of_study_folders_batch_by_batch(tmp_path, caplog):
    """A folder of study folders grows one conversion at a time: a study already there is
    refused without --overwrite (before anything is written) and replaced with it; the other
    studies of earlier conversions are kept, and said to be."""
    from BINDSLib.fsutil import visible_entries

    assert main(["phantom", "--out", str(tmp_path / "three"), "--cases", "3", "--seed", "2"]) == 0
    assert main(["phantom", "--out", str(tmp_path / "two"), "--cases", "2", "--seed", "5"]) == 0
    out = tmp_path / "sf"
    out.mkdir()  # an empty folder made beforehand
    assert main(["convert", str(tmp_path / "three"), "--out", str(out)]) == 0
    before = (out / "case-0002" / "study.json").read_text()
    assert main(["convert", str(tmp_path / "two"), "--out", str(out)]) == 5  # case-0000 is there
    assert [p.name for p in visible_entries(out)] == ["case-0000", "case-0001", "case-0002"]
    with caplog.at_level("WARNING"):
        assert main(["convert", str(tmp_path / "two"), "--out", str(out), "--overwrite"]) == 0
    assert "also holds 1 study folder(s) of earlier conversions, kept: case-0002" in caplog.text
    assert [p.name for p in visible_entries(out)] == ["case-0000", "case-0001", "case-0002"]
    assert (out / "case-0002" / "study.json").read_text() == before
    assert sorted(st.study_id for st in load(out).studies) == ["case-0000", "case-0001", "case-0002"]  # (its lock file)
    two = {s.study_id: s for s in load(tmp_path / "two").studies}
    _same(two["case-0000"], read_study_folder(out / "case-0000"))
    # several studies are never nested inside a single study's folder
    assert main(["convert", str(tmp_path / "two"), "--out", str(out / "case-0002"), "--overwrite"]) == 5
    assert (out / "case-0002" / "study.json").read_text() == before
    assert not (out / "case-0002" / "case-0000").exists()


def test_an_interrupted_conversion_leaves_whole_studies_only(tmp_path, monkeypatch, caplog, capsys):
    import SimpleITK as sitk

    import BINDSLib.studyfolder as sf
    from BINDSLib.fsutil import LOCK_NAME, visible_entries

    assert main(["phantom", "--out", str(tmp_path / "three"), "--cases", "3", "--seed", "2"]) == 0
    real, calls = sf.write_nrrd, []

    def write_then_stop(*a, **k):  # stopped while writing the second study's images
        calls.append(a)
        if len(calls) == 40:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sf, "write_nrrd", write_then_stop)
    assert main(["convert", str(tmp_path / "three"), "--out", str(tmp_path / "sf")]) == 130  # interrupted
    monkeypatch.undo()
    sf_dir = tmp_path / "sf"
    assert visible_entries(sf_dir) == [sf_dir / "case-0000"]  # no half-written study
    _same(load(tmp_path / "three" / "case-0000").studies[0], read_study_folder(sf_dir / "case-0000"))
    # the same command again goes on where it stopped: the study written is kept, not refused,
    # and what a killed run left behind (a hidden .part folder) is removed
    (sf_dir / ".case-0001.x1y2.part" / "images").mkdir(parents=True)
    inode = (sf_dir / "case-0000").stat().st_ino
    with caplog.at_level("WARNING"):
        assert main(["convert", str(tmp_path / "three"), "--out", str(sf_dir)]) == 0
    assert "1 of 3 studies were already converted (the same images); kept" in caplog.text
    assert sorted(p.name for p in sf_dir.iterdir() if p.name != LOCK_NAME) == ["case-0000", "case-0001", "case-0002"]
    assert (sf_dir / "case-0000").stat().st_ino == inode
    for st in load(tmp_path / "three").studies:
        _same(st, read_study_folder(sf_dir / st.study_id))
    # a study folder whose voxels differ from the study's is not taken for it
    nrrd = sf_dir / "case-0001" / "images" / "MG_L_CC.nrrd"
    img = sitk.ReadImage(str(nrrd))
    img[0, 0, 0] = img[0, 0, 0] + 1
    sitk.WriteImage(img, str(nrrd), True)
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "three"), "--out", str(sf_dir)]) == 5
    assert "already holds a study folder of study case-0001 with other images" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "three"), "--out", str(sf_dir), "--overwrite"]) == 0
    _same(load(tmp_path / "three" / "case-0001").studies[0], read_study_folder(sf_dir / "case-0001"))


def test_holds_study_compares_the_json_and_every_voxel(tmp_path):
    from BINDSLib.studyfolder import holds_study, write_study_folder

    assert main(["phantom", "--out", str(tmp_path / "ph"), "--cases", "1", "--seed", "3"]) == 0
    (study,) = load(tmp_path / "ph" / "case-0000").studies
    write_study_folder(study, tmp_path / "sf")
    assert holds_study(tmp_path / "sf", study)
    study.description = "another"  # anything of study.json
    assert not holds_study(tmp_path / "sf", study)
    (study,) = load(tmp_path / "ph" / "case-0000").studies
    assert not holds_study(tmp_path / "nowhere", study)
    mask_image = next(im for im in study.images if im.lesion_mask is not None)
    mask_image.lesion_mask = mask_image.lesion_mask.copy()
    mask_image.lesion_mask[0, 0, 0] ^= 1  # one mask voxel
    assert not holds_study(tmp_path / "sf", study)
    mask_image.lesion_mask[0, 0, 0] ^= 1
    assert holds_study(tmp_path / "sf", study)
    study.images[0].voxels = study.images[0].voxels.astype(np.float64)  # the same values, another type
    assert not holds_study(tmp_path / "sf", study)
    (study,) = load(tmp_path / "ph" / "case-0000").studies
    (tmp_path / "sf" / "images" / f"{study.images[0].label}.nrrd").write_bytes(b"NRRD0004\n")  # damaged
    assert not holds_study(tmp_path / "sf", study)


def test_role_named_folders_name_what_they_leave_and_where_the_images_are(tmp_path, capsys):
    import SimpleITK as sitk

    def picture(path, seed):
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = (np.random.default_rng(seed).random((40, 30)) * 255).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(pixels), str(path))

    case = tmp_path / "case"
    picture(case / "US_L.png", 0)
    picture(case / "US_L_2.png", 1)  # a study folder's label of a second US_L image
    picture(case / "more" / "MG_L_CC.png", 2)
    res = load(case)
    (study,) = res.studies
    assert sorted(im.role.key for im in study.images) == ["US_L", "US_L"]
    assert [(s.path, "read without its subfolders" in s.reason) for s in res.skipped] == [(str(case / "more"), True)]
    # one folder per patient: the message points to them instead of "no DICOM images found"
    patients = tmp_path / "patients"
    picture(patients / "p1" / "MG_L_CC.png", 3)
    picture(patients / "p2" / "MG_R_CC.png", 4)
    assert main(["inspect", str(patients)]) == 3
    assert "image files named after roles are in its subfolder(s) p1, p2: give each such folder" in \
        capsys.readouterr().err
    assert main(["inspect", str(patients / "p1"), str(patients / "p2")]) == 0
    assert capsys.readouterr().out.startswith("2 studies, 2 image(s), 0 skipped")


def test_image_files_beside_dicom_ones_are_skipped_with_the_reason(tmp_path):
    import SimpleITK as sitk

    assert main(["phantom", "--out", str(tmp_path / "ph"), "--cases", "1", "--seed", "4", "--dicom"]) == 0
    dicom = tmp_path / "ph" / "case-0000-dicom"
    n_images = len(load(dicom).studies[0].images)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.uint8)), str(dicom / "US_L.png"))
    (dicom / "readme.txt").write_text("notes")
    res = load(dicom)
    assert len(res.studies[0].images) == n_images  # the DICOM study, as before
    reasons = {s.path: s.reason for s in res.skipped}
    assert "image files beside DICOM images are not read" in reasons[str(dicom / "US_L.png")]
    assert reasons[str(dicom / "readme.txt")] == "not DICOM"


def test_a_conversion_of_several_studies_holds_the_folder_and_is_checked_before_making_it(
        tmp_path, capsys, caplog, monkeypatch):
    """A second conversion into a folder being written is refused at once; a conversion refused
    or failing before its first study leaves no new folder; a folder of study folders is never
    converted into itself; with --keep-identifiers, a run from another folder still finds its
    studies."""
    import os

    import BINDSLib.studyfolder as sf
    from BINDSLib.errors import OutputError
    from BINDSLib.fsutil import output_lock

    assert main(["phantom", "--out", str(tmp_path / "two"), "--cases", "2", "--seed", "5", "--dicom"]) == 0
    dicom = [str(tmp_path / "two" / f"case-000{k}-dicom") for k in (0, 1)]
    out = tmp_path / "sf"
    out.mkdir()
    with output_lock(out, "binds convert"):
        assert main(["convert", *dicom, "--out", str(out)]) == 5
    assert "another binds convert is writing into this folder now" in capsys.readouterr().err
    assert list(out.iterdir()) == [out / ".binds.lock"]
    # refused by a check (a name SimpleITK cannot write), or failing at the first study: no folder left
    bad = tmp_path / os.fsdecode(b"bad\xff")
    assert main(["convert", *dicom, "--out", str(bad)]) == 5 and not bad.exists()

    def full_disk(*a, **k):
        raise OutputError("cannot be written: No space left on device", a[1])

    monkeypatch.setattr(sf, "write_study_folder", full_disk)
    assert main(["convert", *dicom, "--out", str(tmp_path / "new")]) == 5 and not (tmp_path / "new").exists()
    monkeypatch.undo()
    # a folder of study folders converted into itself: refused, untouched
    assert main(["convert", *dicom, "--out", str(out)]) == 0
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(["convert", str(out), "--out", str(out)]) == 5
    assert "is an input of this command" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    # --keep-identifiers records the files as given: a rerun from another folder still keeps them
    keep = tmp_path / "keep"
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "two/case-0000-dicom", "two/case-0001-dicom", "--out", str(keep), "--keep-identifiers"]) == 0
    monkeypatch.chdir(tmp_path / "two")
    with caplog.at_level("WARNING"):
        assert main(["convert", "case-0000-dicom", "case-0001-dicom", "--out", str(keep), "--keep-identifiers"]) == 0
    assert "2 of 2 studies were already converted" in caplog.text


def test_folder_names_of_long_study_ids_are_bounded_and_distinct():
    from BINDSLib.commands.diagnose import MAX_FOLDER_NAME, _safe_name

    a, b = "x" * 5000, "x" * 4999 + "y"
    assert len(_safe_name(a)) == MAX_FOLDER_NAME and _safe_name(a) != _safe_name(b)
    assert _safe_name("ACC 123/4") == "ACC_123_4" and _safe_name("...") == "study"
