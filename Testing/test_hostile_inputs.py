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
