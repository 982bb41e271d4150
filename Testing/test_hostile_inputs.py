"""A corpus of hostile inputs, built here (no committed files), run through ``binds diagnose``.

Every case ends in a clear one-line error naming the file or folder (exit code 3), or in a
documented skip/warning; never a traceback, a hang or a partial output. docs/RELIABILITY.md
reports the count.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from BINDSLib.cli import main
from BINDSLib.studyfolder import read_study_folder, write_study_folder


def _dicom_mr(src: Path, dst: Path, **changes) -> Path:
    ds = pydicom.dcmread(src)
    for k, v in changes.items():
        setattr(ds, k, v)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)
    return dst


def build(name: str, root: Path, files: Path, study_dir: Path) -> Path:
    """Create the hostile input ``name`` under ``root``; return the path to give to binds."""
    d = root / name
    d.mkdir(parents=True)
    mr = files / "MR_small.dcm"
    if name == "truncated_dicom":
        (d / "a.dcm").write_bytes(mr.read_bytes()[:3000])
    elif name == "zero_length_dicom":
        (d / "a.dcm").write_bytes(b"")
    elif name == "missing_tags":  # no Rows/Columns/pixels: not an image
        ds = pydicom.dcmread(mr)
        for kw in ("Rows", "Columns", "PixelData"):
            delattr(ds, kw)
        ds.save_as(d / "a.dcm")
    elif name == "wrong_tags":  # Rows says 4096: the pixel data cannot hold it
        _dicom_mr(mr, d / "a.dcm", Rows=4096)
    elif name == "huge_dimensions":
        _dicom_mr(mr, d / "a.dcm", Rows=65535, Columns=65535)  # 8 GB of 16-bit pixels
    elif name == "non_image_dicom":
        shutil.copy(files / "reportsi.dcm", d / "sr.dcm")
    elif name == "for_processing_only":
        ds = pydicom.dcmread(mr)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2.1"
        ds.Modality, ds.PresentationIntentType, ds.ImageLaterality, ds.ViewPosition = "MG", "FOR PROCESSING", "L", "CC"
        ds.save_as(d / "a.dcm")
    elif name == "inconsistent_slice_spacing":
        for k, z in enumerate((0.0, 1.0, 2.0, 5.0)):
            _dicom_mr(mr, d / f"s{k}.dcm", ImagePositionPatient=[0, 0, z], SOPInstanceUID=f"1.2.3.{k}",
                      InstanceNumber=k + 1)
    elif name == "nan_voxels":
        arr = np.ones((3, 8, 8), np.float32)
        arr[1, 2, 2] = np.nan
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(d / "MR_T2.nrrd"))
        return d / "MR_T2.nrrd"
    elif name == "inf_voxels_in_study_folder":
        study = read_study_folder(study_dir)
        us = next(im for im in study.images if im.modality.value == "US")
        us.voxels = us.voxels.astype(np.float32)
        us.voxels[0, 0, 0] = np.inf
        write_study_folder(study, d / "s")
        return d / "s"
    elif name == "inconsistent_geometry":
        shutil.copytree(study_dir, d / "s")
        doc = json.loads((d / "s" / "study.json").read_text())
        doc["images"][0]["geometry"]["spacing_mm"][0] *= 2
        (d / "s" / "study.json").write_text(json.dumps(doc))
        return d / "s"
    elif name == "wrong_modality_for_role":  # a 3D MR volume given as a mammogram
        sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)),
                        str(d / "MG_L_CC.nrrd"))
        return d / "MG_L_CC.nrrd"
    elif name == "duplicated_view":
        study = read_study_folder(study_dir)
        cc = next(im for im in study.images if im.role.key == "MG_L_CC")
        rcc = next(im for im in study.images if im.role.key == "MG_R_CC")
        rcc.voxels = cc.voxels.copy()
        rcc.geometry = cc.geometry
        write_study_folder(study, d / "s")
        return d / "s"
    elif name == "corrupt_png":
        img = sitk.GetImageFromArray(np.zeros((32, 32), np.uint8))
        sitk.WriteImage(img, str(d / "tmp.png"))
        data = (d / "tmp.png").read_bytes()
        (d / "tmp.png").unlink()
        (d / "US_L.png").write_bytes(data[:50] + b"\0" * 20)
        return d / "US_L.png"
    elif name == "symlink_loop":
        (d / "sub").mkdir()
        os.symlink(d, d / "sub" / "loop")
    elif name == "unreadable_file":
        shutil.copy(mr, d / "a.dcm")
        os.chmod(d / "a.dcm", 0)
    elif name == "empty_folder":
        pass
    elif name == "float64_beyond_float32":  # finite, but infinite once the model reads it as float32
        arr = np.random.default_rng(0).random((1, 32, 32)) * 1e300
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(d / "US_L.nrrd"))
        return d / "US_L.nrrd"
    elif name == "finding_not_a_number":  # a spreadsheet's text where study.json needs a number
        shutil.copytree(study_dir, d / "s")
        doc = json.loads((d / "s" / "study.json").read_text())
        doc["images"][0]["findings"] = [{"abnormality": "mass", "center_col": "44.2", "center_row": 5, "radius_px": 3}]
        (d / "s" / "study.json").write_text(json.dumps(doc))
        return d / "s"
    elif name == "batch_csv_row_without_path":
        (d / "batch.csv").write_text(f"id,path\na,{study_dir}\nb\n")
        return d / "batch.csv"
    elif name == "huge_integer_in_study_json":
        shutil.copytree(study_dir, d / "s")
        text = (d / "s" / "study.json").read_text()
        (d / "s" / "study.json").write_text(text.replace('"study_id"', '"n": ' + "9" * 5000 + ', "study_id"', 1))
        return d / "s"
    else:
        raise KeyError(name)
    return d


#: case -> text the one-line error must contain.
CASES = {
    "truncated_dicom": "truncated",
    "zero_length_dicom": "empty",
    "missing_tags": "not an image",
    "wrong_tags": "",
    "huge_dimensions": "too large",
    "non_image_dicom": "Basic Text SR",
    "for_processing_only": "For Processing",
    "inconsistent_slice_spacing": "spacing",
    "nan_voxels": "NaN",
    "inf_voxels_in_study_folder": "NaN or infinite",
    "inconsistent_geometry": "differs from study.json",
    "wrong_modality_for_role": "must be a 2D image",
    "duplicated_view": "a view is duplicated",
    "corrupt_png": "US_L.png",
    "symlink_loop": "no DICOM images found",
    "unreadable_file": "",
    "empty_folder": "no DICOM images found",
    "float64_beyond_float32": "beyond the float32 range",
    "finding_not_a_number": "center_col must be a number",
    "batch_csv_row_without_path": "line 3: no path",
    "huge_integer_in_study_json": "invalid JSON",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_gives_clear_error_and_no_output(case, tmp_path, pydicom_test_files, study_dir,
                                                        diagnosis_bundle, capsys):
    path = build(case, tmp_path / "in", pydicom_test_files, study_dir)
    out = tmp_path / "out"
    code = main(["diagnose", str(path), "--model", str(diagnosis_bundle), "--out", str(out), "--stage", "1"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("binds diagnose:")]
    if case == "unreadable_file" and os.geteuid() == 0:
        # root reads a chmod-000 file anyway; the permission path is tested in test_dicom_read
        assert code in (0, 3)
    else:
        assert code == 3, err
        assert len(lines) == 1 and "error:" in lines[0], err
        assert CASES[case] in lines[0], lines[0]
        assert str(tmp_path / "in") in lines[0]  # names the file or folder
    assert "Traceback" not in err
    if code != 0:
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary left


def test_corpus_size_matches_the_documented_count():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md").read_text()
    assert f"{len(CASES)} hostile inputs" in doc


def test_hand_edited_bundle_calibration_is_refused_when_loaded(tmp_path, tiny_bundle, study_dir, capsys):
    """Only the weights are hash-checked: a calibration that would saturate or invert every
    probability is a model error (exit 4), not exit 1 or a wrong recommendation."""
    for n, bad in enumerate(["abc", None, -1, 0, float("inf"), [1.0]]):
        copy = tmp_path / f"b{n}"
        shutil.copytree(tiny_bundle, copy)
        meta = json.loads((copy / "configs" / "metadata.json").read_text())
        if isinstance(bad, list):
            meta["binds"]["calibration"] = bad
        else:
            meta["binds"]["calibration"]["temperature"] = bad
        (copy / "configs" / "metadata.json").write_text(json.dumps(meta))
        code = main(["diagnose", str(study_dir), "--model", str(copy), "--out", str(tmp_path / f"o{n}"), "--stage", "1"])
        err = capsys.readouterr().err
        assert code == 4 and "invalid bundle metadata: calibration" in err and "Traceback" not in err, (bad, err)
        assert not (tmp_path / f"o{n}").exists()


def test_more_hostile_command_lines(tmp_path, tiny_bundle, study_dir, capsys):
    from BINDSLib.io.files import read_mask_file
    from BINDSLib.study import Geometry

    # one image's lesion mask given twice: a usage error, not the last one silently
    us = next(im for im in read_study_folder(study_dir).images if im.modality.value == "US")
    mask = tmp_path / "m.nrrd"
    img = sitk.GetImageFromArray(np.zeros(us.shape, np.int16))
    us.geometry.apply_to_sitk(img)
    sitk.WriteImage(img, str(mask))
    assert main(["diagnose", str(study_dir), "--model", str(tiny_bundle), "--out", str(tmp_path / "o"),
                 "--lesion-mask", f"{us.label}={mask}", "--lesion-mask", f"{us.label}={mask}"]) == 2
    assert "is given twice" in capsys.readouterr().err and not (tmp_path / "o").exists()
    # a lesion mask's non-zero voxels are lesion, negative ones too
    arr = np.zeros((1, 4, 4), np.int16)
    arr[0, 1, 1] = -1
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "neg.nrrd"))
    assert read_mask_file(tmp_path / "neg.nrrd", (1, 4, 4), Geometry()).sum() == 1
    # an output folder below a file: said so
    (tmp_path / "afile").write_text("x")
    assert main(["diagnose", str(study_dir), "--model", str(tiny_bundle), "--out", str(tmp_path / "afile" / "x")]) == 5
    assert "is a file, not a folder" in capsys.readouterr().err
    # calibrating a bundle on studies it cannot read: an input error, not a KeyError
    meta_copy = tmp_path / "mg-only"
    shutil.copytree(tiny_bundle, meta_copy)
    meta = json.loads((meta_copy / "configs" / "metadata.json").read_text())
    meta["binds"]["modalities"] = ["MG"]
    (meta_copy / "configs" / "metadata.json").write_text(json.dumps(meta))
    us_only = tmp_path / "us-only"
    s = read_study_folder(study_dir)
    s.images = [im for im in s.images if im.modality.value == "US"]
    write_study_folder(s, us_only / "case")
    code = main(["calibrate", "--model", str(meta_copy), "--data", str(us_only), "--out", str(tmp_path / "cal")])
    assert code == 3 and "no study tiny can read in" in capsys.readouterr().err
    code = main(["evaluate", "--model", str(meta_copy), "--data", str(us_only), "--out", str(tmp_path / "ev")])
    assert code == 3 and f"{us_only}: no studies to evaluate; 1 had no image tiny reads" in capsys.readouterr().err
    # --merge-only into a folder that holds no earlier run: refused, and no folder made
    from test_risk_support import tiny_bundle as risk_bundle

    manifest = tmp_path / "m.csv"
    manifest.write_text("exam_id,path\na,x\n")
    rb = risk_bundle(tmp_path / "risk")
    assert main(["cohort", str(manifest), "--model", str(rb), "--out", str(tmp_path / "typo"), "--merge-only"]) == 3
    assert "no earlier scoring run to merge" in capsys.readouterr().err and not (tmp_path / "typo").exists()


def test_an_image_given_as_its_own_lesion_mask_is_refused(tmp_path, tiny_bundle, study_dir, capsys):
    """Every non-zero voxel of a mask is lesion, so an image given by mistake would make the whole
    image the lesion; a mask of a few labels, or a lossy or anti-aliased one, is still read."""
    from BINDSLib.io.files import read_mask_file

    us = next(im for im in read_study_folder(study_dir).images if im.modality.value == "US")
    image_file = next((study_dir / "images").glob(us.label + ".*"))
    out = tmp_path / "o"
    assert main(["diagnose", str(study_dir), "--model", str(tiny_bundle), "--out", str(out),
                 "--lesion-mask", f"{us.label}={image_file}"]) == 3
    err = capsys.readouterr().err
    assert f"{image_file.name}: this looks like an image, not a lesion mask" in err and "Traceback" not in err
    assert not out.exists()

    rr, cc = np.ogrid[:64, :64]
    labels = np.zeros((1, 64, 64), np.uint8)  # a labelmap: 3 lesions of labels 1, 2 and 3
    for k, (y, x) in enumerate([(16, 16), (40, 20), (30, 48)], start=1):
        labels[0][(rr - y) ** 2 + (cc - x) ** 2 <= 36] = k
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(tmp_path / "labels.png"))
    np.testing.assert_array_equal(read_mask_file(tmp_path / "labels.png", (1, 64, 64)), labels != 0)
    many = (np.arange(64 * 64).reshape(1, 64, 64) // 200).astype(np.uint8)  # 21 labels, most of them "grey"
    sitk.WriteImage(sitk.GetImageFromArray(many), str(tmp_path / "many.nrrd"))
    np.testing.assert_array_equal(read_mask_file(tmp_path / "many.nrrd", (1, 64, 64)), many != 0)
    # an anti-aliased disc: 0 and 255 with shades along its edge
    rr, cc = np.ogrid[:128, :128]
    dist = np.sqrt((rr - 64.3) ** 2 + (cc - 60.7) ** 2)
    soft = (np.clip((20.5 - dist) / 1.5, 0, 1) * 255).astype(np.uint8)[None]
    assert np.unique(soft).size > 16
    sitk.WriteImage(sitk.GetImageFromArray(soft), str(tmp_path / "soft.png"))
    np.testing.assert_array_equal(read_mask_file(tmp_path / "soft.png", (1, 128, 128)), soft != 0)
