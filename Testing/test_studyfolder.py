"""The study folder: write then read gives identical voxels and geometry; bad files are refused."""

import json

import numpy as np
import pytest

from BINDSLib.errors import InputError, OutputError
from BINDSLib.study import Finding, Geometry, Image, Pathology, Role, Study
from BINDSLib.studyfolder import read_study_folder, write_study_folder


def make_study() -> Study:
    rng = np.random.default_rng(0)
    c, s = np.cos(0.4), np.sin(0.4)
    mr_geom = Geometry((0.8, 0.9, 2.5), (-100.0, 50.0, 12.5), (1, 0, 0, 0, c, -s, 0, s, c))
    mg = Image(rng.integers(0, 4096, (1, 30, 20)).astype(np.uint16), Geometry((0.1, 0.1, 1)),
               Role.parse("MG_L_CC"), findings=(Finding("CIRC", "B", 5, 6, 3),))
    us = Image(rng.random((1, 16, 24)).astype(np.float32), Geometry((0.2, 0.25, 1)), Role.parse("US_R_10h"),
               lesion_mask=(rng.random((1, 16, 24)) > 0.7))
    mr = Image(rng.normal(size=(6, 10, 12)).astype(np.float32), mr_geom,
               Role(modality="MR", sequence="DCE", phase=2, phase_time_s=180.0))
    return Study("study-1", [mg, us, mr], patient_id="Jane Doe 123", diagnosis="malignant",
                 pathology=Pathology(True, "IDC", 2, 80, 40, 1, None, 12), synthetic=True,
                 attributes={"dup_group": "7"})


def test_round_trip_identical_voxels_and_geometry(tmp_path):
    st = make_study()
    write_study_folder(st, tmp_path / "s")
    back = read_study_folder(tmp_path / "s")
    assert [im.label for im in back.images] == [im.label for im in st.images]
    for a, b in zip(st.images, back.images):
        assert b.voxels.dtype == a.voxels.dtype
        np.testing.assert_array_equal(a.voxels, b.voxels)
        assert b.geometry == a.geometry
        assert b.role == a.role
        if a.lesion_mask is None:
            assert b.lesion_mask is None
        else:
            np.testing.assert_array_equal(a.lesion_mask, b.lesion_mask)
        assert b.findings == a.findings
    assert back.pathology == st.pathology and back.diagnosis == st.diagnosis
    assert back.synthetic and back.attributes == {"dup_group": "7"}


def test_comparison_images_round_trip_apart_from_the_images(tmp_path):
    st = make_study()
    rng = np.random.default_rng(1)
    other = Image(rng.integers(0, 4096, (1, 30, 20)).astype(np.uint16), Geometry((0.1, 0.1, 1), (5.0, 0.0, 0.0)),
                  Role.parse("MG_R_CC"), lesion_mask=np.zeros((1, 30, 20), np.uint8))
    same_label = Image(rng.random((1, 8, 8)).astype(np.float32), Geometry((0.3, 0.3, 1)), Role.parse("MG_L_CC"))
    st.comparison = [other, same_label]  # a label may repeat one of the study's images
    write_study_folder(st, tmp_path / "s")
    doc = json.loads((tmp_path / "s" / "study.json").read_text())
    assert [e["path"] for e in doc["comparison_images"]] == ["comparison/MG_R_CC.nrrd", "comparison/MG_L_CC.nrrd"]
    assert doc["comparison_images"][0]["lesion_mask"] == "masks/comparison/MG_R_CC.nrrd"
    back = read_study_folder(tmp_path / "s")
    assert [im.label for im in back.images] == [im.label for im in st.images]
    np.testing.assert_array_equal(back.image("MG_L_CC").voxels, st.images[0].voxels)  # not overwritten
    assert [im.label for im in back.comparison] == ["MG_R_CC", "MG_L_CC"]
    for a, b in zip(st.comparison, back.comparison):
        np.testing.assert_array_equal(a.voxels, b.voxels)
        assert b.geometry == a.geometry and b.role == a.role
    np.testing.assert_array_equal(back.comparison[0].lesion_mask, other.lesion_mask)
    # a study without comparison images writes no such key; a malformed one is refused
    write_study_folder(make_study(), tmp_path / "plain")
    assert "comparison_images" not in json.loads((tmp_path / "plain" / "study.json").read_text())
    assert read_study_folder(tmp_path / "plain").comparison == []
    doc["comparison_images"] = {"path": "comparison/MG_R_CC.nrrd"}
    (tmp_path / "s" / "study.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="'comparison_images' must be a list"):
        read_study_folder(tmp_path / "s")
    doc["comparison_images"] = [{"path": "comparison/MG_R_CC.nrrd", "role": "MG_R_CC"}] * 2
    (tmp_path / "s" / "study.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"comparison_images\[1\]: duplicate image label 'MG_R_CC'"):
        read_study_folder(tmp_path / "s")


def test_identifiers_pseudonymised_unless_asked(tmp_path):
    write_study_folder(make_study(), tmp_path / "a")
    text = (tmp_path / "a" / "study.json").read_text()
    assert "Jane" not in text and '"anon-' in text
    write_study_folder(make_study(), tmp_path / "b", keep_identifiers=True)
    assert "Jane Doe 123" in (tmp_path / "b" / "study.json").read_text()


def test_write_is_deterministic(tmp_path):
    for name in ("a", "b"):
        write_study_folder(make_study(), tmp_path / name)
    for f in sorted((tmp_path / "a").rglob("*")):
        if f.is_file():
            assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f


def test_no_overwrite_without_flag_and_no_partial_output(tmp_path, monkeypatch):
    target = tmp_path / "s"
    write_study_folder(make_study(), target)
    with pytest.raises(OutputError, match="--overwrite"):
        write_study_folder(make_study(), target)
    write_study_folder(make_study(), target, overwrite=True)
    # a failure midway leaves neither a partial target nor temporary folders
    import BINDSLib.studyfolder as sf

    calls = {"n": 0}
    real = sf.write_nrrd

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(sf, "write_nrrd", failing)
    with pytest.raises(OSError):
        write_study_folder(make_study(), tmp_path / "t")
    assert not (tmp_path / "t").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def _doc(tmp_path):
    write_study_folder(make_study(), tmp_path / "s")
    return json.loads((tmp_path / "s" / "study.json").read_text())


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(schema="other"), "not a BINDS study file"),
    (lambda d: d.update(schema_version=99), "newer than this BINDS supports"),
    (lambda d: d.update(images="x"), "'images' must be a list"),
    (lambda d: d["images"][0].pop("role_detail") and d["images"][0].update(role="MG_Q_CC"), "unknown role"),
    (lambda d: d["images"][0].update(path="../../etc/passwd"), "inside the study folder"),
    (lambda d: d["images"][0].update(path="images/missing.nrrd"), "file not found"),
    (lambda d: d["images"][1].update(label="MG_L_CC"), "duplicate image label"),
    (lambda d: d["images"][0].update(modality="US"), "contradicts role"),
    # the copies beside role_detail: a hand edit of one alone would be ignored
    (lambda d: d["images"][0].update(laterality="R"), "laterality 'R' contradicts role MG_L_CC"),
    (lambda d: d["images"][0].update(view="MLO"), "view 'MLO' contradicts role MG_L_CC"),
    (lambda d: d["images"][0].update(role="MG_R_CC"), "role 'MG_R_CC' contradicts role_detail"),
    (lambda d: d["images"][0].update(laterality=1), "'laterality' must be str"),
    (lambda d: d["images"][2].update(phase=1), "phase 1 contradicts role MR_DCE2"),
    (lambda d: d.update(diagnosis="maybe"), "invalid study fields"),
])
def test_bad_study_json_gives_clear_error(tmp_path, mutate, message):
    doc = _doc(tmp_path)
    mutate(doc)
    (tmp_path / "s" / "study.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=message) as e:
        read_study_folder(tmp_path / "s")
    assert str(tmp_path / "s") in str(e.value)


def test_invalid_json_and_missing_folder(tmp_path):
    with pytest.raises(InputError, match="no study.json"):
        read_study_folder(tmp_path)
    (tmp_path / "study.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        read_study_folder(tmp_path)


def test_corrupt_image_file_named(tmp_path):
    write_study_folder(make_study(), tmp_path / "s")
    (tmp_path / "s" / "images" / "US_R_10h.nrrd").write_bytes(b"NRRD0004\ngarbage")
    with pytest.raises(InputError, match="US_R_10h.nrrd"):
        read_study_folder(tmp_path / "s")


def test_reference_masks_left_unread_for_diagnosis_and_risk(tmp_path):
    """Diagnosis and risk scoring read a study folder without its reference lesion masks
    (ground truth they never use): not even opened, so a broken mask file does not stop them,
    while training and evaluation (the default) still read and check it."""
    from BINDSLib.commands.diagnose import load_source
    from BINDSLib.io.loader import load
    from BINDSLib.risk.preprocess import load_exam

    write_study_folder(make_study(), tmp_path / "s")
    assert read_study_folder(tmp_path / "s").image("US_R_10h").lesion_mask is not None
    (tmp_path / "s" / "masks" / "US_R_10h.nrrd").write_bytes(b"NRRD0004\ngarbage")
    with pytest.raises(InputError, match="US_R_10h.nrrd"):
        read_study_folder(tmp_path / "s")
    bare = read_study_folder(tmp_path / "s", reference_masks=False)
    assert all(im.lesion_mask is None for im in bare.images)
    np.testing.assert_array_equal(bare.image("US_R_10h").voxels, make_study().image("US_R_10h").voxels)
    (study,) = load_source("path", str(tmp_path / "s"))  # what `binds diagnose STUDY` reads
    assert all(im.lesion_mask is None for im in study.images)
    assert all(im.lesion_mask is None for im in load_exam(tmp_path / "s").images)
    # a folder of study folders (a batch) too
    (study,) = load(tmp_path, reference_masks=False).studies
    assert study.image("US_R_10h").lesion_mask is None
    # a mask path outside the folder is refused whether or not the mask is read
    doc = json.loads((tmp_path / "s" / "study.json").read_text())
    doc["images"][1]["lesion_mask"] = "../outside.nrrd"
    (tmp_path / "s" / "study.json").write_text(json.dumps(doc))
    for masks in (True, False):
        with pytest.raises(InputError, match="outside.nrrd|outside"):
            read_study_folder(tmp_path / "s", reference_masks=masks)


def test_geometry_mismatch_between_file_and_json_is_refused(tmp_path):
    doc = _doc(tmp_path)
    doc["images"][2]["geometry"]["origin_mm"][0] += 5.0
    (tmp_path / "s" / "study.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="differs from study.json"):
        read_study_folder(tmp_path / "s")


def test_null_shape_and_geometry_in_study_json_mean_absent(tmp_path):
    # optional fields may be null: the image file's own shape and geometry stand (found by the
    # property test of study.json parsing: a null "shape" raised a TypeError)
    st = make_study()
    doc = _doc(tmp_path)
    doc["images"][1]["shape"] = None
    doc["images"][2]["geometry"] = None
    (tmp_path / "s" / "study.json").write_text(json.dumps(doc))
    back = read_study_folder(tmp_path / "s")
    assert back.images[1].shape == st.images[1].shape
    assert np.allclose(back.images[2].geometry.ijk_to_lps_matrix(), st.images[2].geometry.ijk_to_lps_matrix(),
                       atol=1e-6)


def test_outputs_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from BINDSLib.fsutil import atomic_write_text

    old = os.umask(0o022)
    try:
        write_study_folder(make_study(), tmp_path / "s")
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644


def test_study_json_with_a_byte_order_mark_is_read_and_deep_nesting_refused(tmp_path):
    from test_model_cases import make_case

    folder = write_study_folder(make_case(0, True, ("US",)), tmp_path / "s")
    jpath = folder / "study.json"
    text = jpath.read_text(encoding="utf-8")
    jpath.write_text(text, encoding="utf-8-sig")  # as some editors save it
    assert read_study_folder(folder).study_id == json.loads(text)["study_id"]
    jpath.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(InputError, match="study.json: invalid JSON: nested too deeply"):
        read_study_folder(folder)


def test_copies_of_the_role_that_agree_or_say_nothing_are_accepted(tmp_path):
    doc = _doc(tmp_path)
    assert doc["images"][0]["role"] == "MG_L_CC"
    doc["images"][0].update(laterality="l", view="cc", phase=3)  # case; a phase the role has none of
    (tmp_path / "s" / "study.json").write_text(json.dumps(doc))
    assert read_study_folder(tmp_path / "s").images[0].role.key == "MG_L_CC"


def test_a_folder_of_studies_and_histories_reads_them_all_and_names_what_it_left(tmp_path, caplog):
    """Study folders and women's exam histories side by side are all read; a DICOM folder or
    image file beside them is listed as skipped (it was read silently as nothing before)."""
    import datetime as dt

    from BINDSLib.cli import main
    from BINDSLib.io.loader import load
    from BINDSLib.study import ExamHistory
    from BINDSLib.studyfolder import write_history

    root = tmp_path / "batch"
    write_study_folder(make_study(), root / "s1")
    exams = []
    for i in range(2):
        st = make_study()
        st.study_id, st.study_date = f"exam-{i}", dt.date(2020 + i, 1, 1)
        exams.append(st)
    write_history(ExamHistory("W-1", exams), root / "woman")
    assert main(["phantom", "--out", str(tmp_path / "ph"), "--cases", "1", "--dicom"]) == 0
    (tmp_path / "ph" / "case-0000-dicom").rename(root / "dicom")
    (root / "extra.nrrd").write_bytes(b"")
    (root / "notes.csv").write_text("not an image\n")
    res = load(root)
    assert sorted(s.study_id for s in res.studies) == ["exam-0", "exam-1", "study-1"]
    assert sorted((s.path, "give this folder on its own" in s.reason or "give this file on its own" in s.reason)
                  for s in res.skipped) == [(str(root / "dicom"), True), (str(root / "extra.nrrd"), True)]
    # a diagnose batch of that folder diagnoses every study and exam, and says what it skipped
    out = tmp_path / "dx"
    with caplog.at_level("WARNING"):
        code = main(["diagnose", str(root), "--out", str(out), "--no-summary", "--model", "binds-diagnosis-demo"])
    assert code == 0, caplog.text
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["exam-0", "exam-1", "study-1"]
    assert f"skipped {root / 'dicom'}: not read" in caplog.text


def test_a_study_id_repeated_across_histories_is_refused_and_a_dicom_folder_is_not_opened_twice(
        tmp_path, monkeypatch):
    import datetime as dt
    import shutil

    import BINDSLib.io.loader as loader
    from BINDSLib.cli import main
    from BINDSLib.study import ExamHistory
    from BINDSLib.studyfolder import write_history

    exams = []
    for i in range(2):
        st = make_study()
        st.study_id, st.study_date = f"exam-{i}", dt.date(2020 + i, 1, 1)
        exams.append(st)
    root = tmp_path / "women"
    write_history(ExamHistory("W-1", exams), root / "woman-a")
    shutil.copytree(root / "woman-a", root / "woman-a copy")  # the same woman twice
    with pytest.raises(InputError, match=r"study ID 'exam-0' of an exam of woman-a copy is also that of an "
                                         r"exam of woman-a"):
        loader.load(root)
    # a plain DICOM folder is no collection: its files are not opened to say so
    assert main(["phantom", "--out", str(tmp_path / "ph"), "--cases", "1", "--dicom"]) == 0
    flat = tmp_path / "flat"  # every file in one folder, as a PACS export may be
    flat.mkdir()
    for n, f in enumerate(sorted((tmp_path / "ph" / "case-0000-dicom").rglob("*.dcm"))):
        shutil.copy(f, flat / f"{n:04d}.dcm")
    opened = []
    monkeypatch.setattr(loader, "is_dicom_file", lambda p: opened.append(p) or True)
    assert loader.collection(flat) is None and opened == []


def test_a_reference_mask_is_read_where_its_grid_places_it(tmp_path):
    """A study folder's reference mask (training, evaluate's Dice) is placed by its grid, as a
    --lesion-mask is: one of the same shape placed elsewhere is not read onto the wrong pixels,
    one cropped to the lesion (as a labelmap export may be) is read whole, one off the image is
    refused."""
    import SimpleITK as sitk

    write_study_folder(make_study(), tmp_path / "s")
    path = tmp_path / "s" / "masks" / "US_R_10h.nrrd"
    img = sitk.ReadImage(str(path))
    full = np.zeros(sitk.GetArrayViewFromImage(img).shape, np.uint8)
    full[0, 5:9, 6:12] = 1
    block = sitk.GetImageFromArray(full)
    block.CopyInformation(img)
    sitk.WriteImage(block, str(path))
    np.testing.assert_array_equal(read_study_folder(tmp_path / "s").image("US_R_10h").lesion_mask, full)
    sitk.WriteImage(block[6:12, 5:9], str(path))  # cropped to the lesion, in its place
    assert sitk.ReadImage(str(path)).GetSize()[:2] == (6, 4)
    np.testing.assert_array_equal(read_study_folder(tmp_path / "s").image("US_R_10h").lesion_mask, full)
    img.SetOrigin([o + 1000.0 for o in img.GetOrigin()])
    sitk.WriteImage(img, str(path))
    with pytest.raises(InputError, match=r"US_R_10h.nrrd: none of the mask's lesion voxels lands on its image"):
        read_study_folder(tmp_path / "s")
