"""DICOM writer: SOP classes and attributes, deterministic UIDs, atomic output, and the round
trip through the reader (roles, geometry, voxels within the rescale quantisation)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from BINDSLib.errors import OutputError  # noqa: E402
from BINDSLib.io.dicom import load_dicom_folder, write_study_dicom  # noqa: E402
from BINDSLib.io.dicom_write import quantise_uint16  # noqa: E402
from BINDSLib.study import Geometry, Image, Modality, Role, Study, pseudonym  # noqa: E402

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    a, b, c = np.radians([ax, ay, az])
    x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    y = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    z = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return z @ y @ x


MR_GEOMETRY = Geometry((0.7, 0.8, 2.5), (-100.0, 20.0, -30.0), tuple(rotation(10, -20, 30).ravel()))


def make_study(synthetic: bool = True, study_id: str = "rt-1") -> Study:
    rng = np.random.default_rng(0)
    images = [Image((rng.random((1, 40, 30)) * 1000).astype(np.float32), Geometry((0.07, 0.065, 1.0)),
                    Role(Modality.MG, laterality=lat, view=view))
              for lat in "LR" for view in ("CC", "MLO")]
    images.append(Image(rng.integers(0, 256, (3, 50, 60)).astype(np.float32), Geometry((0.2, 0.25, 1.0)),
                        Role(Modality.US, laterality="L", clock_position=10, frame=1)))

    def mr(role: Role) -> Image:
        return Image((rng.random((6, 20, 24)) * 500 - 50).astype(np.float32), MR_GEOMETRY, role)

    images.append(mr(Role(Modality.MR, sequence="T1_PRE")))
    images += [mr(Role(Modality.MR, sequence="DCE", phase=k, phase_time_s=60.0 * k + 30)) for k in (1, 2, 3)]
    images += [mr(Role(Modality.MR, sequence="T2")), mr(Role(Modality.MR, sequence="DWI", b_value=800)),
               mr(Role(Modality.MR, sequence="ADC"))]
    return Study(study_id, images, patient_id="PAT1", study_date=dt.date(2024, 3, 1), synthetic=synthetic)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    study = make_study()
    out = write_study_dicom(study, tmp_path_factory.mktemp("w") / "dicom")
    return study, out


def _headers(folder: Path) -> list:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


def test_round_trip_roles_geometry_voxels(written):
    study, out = written
    (back,), skipped = load_dicom_folder(out)
    assert skipped == []
    assert [im.label for im in back.images] == [
        "MG_R_CC", "MG_R_MLO", "MG_L_CC", "MG_L_MLO", "US_L_10h", "MR_T1_PRE",
        "MR_DCE1", "MR_DCE2", "MR_DCE3", "MR_T2", "MR_DWI_b800", "MR_ADC"]
    assert back.synthetic and back.study_date == study.study_date
    assert back.patient_id == pseudonym("PAT1")
    for a in study.images:
        b = back.image(a.label)
        assert b.role == a.role, a.label  # includes phase_time_s and b_value
        assert b.shape == a.shape and b.voxels.dtype == np.float32
        np.testing.assert_allclose(b.geometry.spacing_mm, a.geometry.spacing_mm, atol=1e-4)
        np.testing.assert_allclose(b.geometry.origin_mm, a.geometry.origin_mm, atol=1e-4)
        np.testing.assert_allclose(b.geometry.direction, a.geometry.direction, atol=1e-4)
        slope = float(pydicom.dcmread(b.source.files[0], stop_before_pixels=True).get("RescaleSlope", 1))
        np.testing.assert_allclose(b.voxels, a.voxels, atol=slope / 2 + 1e-4 * np.abs(a.voxels).max())
        assert b.acquisition_date == study.study_date


def test_mg_attributes(written):
    _, out = written
    (ds,) = _headers(out / "03_MG_L_CC")
    assert ds.SOPClassUID == MG_FOR_PRESENTATION and ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.Modality == "MG" and ds.PresentationIntentType == "FOR PRESENTATION"
    assert (ds.ViewPosition, ds.ImageLaterality) == ("CC", "L")
    assert ds.ViewCodeSequence[0].CodeMeaning == "cranio-caudal"
    assert ds.ViewCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert [float(x) for x in ds.PixelSpacing] == [0.065, 0.07]  # (row, column)
    assert [float(x) for x in ds.ImagerPixelSpacing] == [0.065, 0.07]
    assert (ds.BitsAllocated, ds.PixelRepresentation, ds.pixel_array.dtype) == (16, 0, np.uint16)
    assert ds.PhotometricInterpretation == "MONOCHROME2"


def test_us_attributes(written):
    study, out = written
    (ds,) = _headers(out / "05_US_L_10h")
    assert ds.SOPClassUID == US_MULTIFRAME and int(ds.NumberOfFrames) == 3
    assert ds.pixel_array.shape == (3, 50, 60) and ds.RepresentativeFrameNumber == 2
    (region,) = ds.SequenceOfUltrasoundRegions
    assert (region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection) == (3, 3)
    assert (region.PhysicalDeltaX, region.PhysicalDeltaY) == pytest.approx((0.02, 0.025))  # cm
    assert (region.RegionLocationMaxX1, region.RegionLocationMaxY1) == (59, 49)
    np.testing.assert_array_equal(ds.pixel_array, study.image("US_L_10h").voxels)  # 8-bit, lossless


def test_single_frame_us_uses_us_image_storage(tmp_path):
    im = Image(np.full((1, 8, 9), 3.5, np.float32), Geometry((0.1, 0.1, 1)), Role(Modality.US))
    out = write_study_dicom(Study("u", [im]), tmp_path / "o")
    (ds,) = _headers(next(out.iterdir()))
    assert ds.SOPClassUID == US_IMAGE and "NumberOfFrames" not in ds
    assert ds.BitsAllocated == 16 and float(ds.RescaleIntercept) == 3.5


def test_mr_attributes(written):
    study, out = written
    folders = {p.name.split("_", 1)[1]: p for p in out.iterdir()}
    pre = _headers(folders["MR_T1_PRE"])
    assert len(pre) == 6 and {ds.SOPClassUID for ds in pre} == {MR_IMAGE}
    assert len({ds.SeriesInstanceUID for ds in pre}) == 1 and "ContrastBolusAgent" not in pre[0]
    d = np.asarray(MR_GEOMETRY.direction_matrix)
    for k, ds in enumerate(pre):
        expected = np.asarray(MR_GEOMETRY.origin_mm) + d[:, 2] * 2.5 * k
        np.testing.assert_allclose([float(x) for x in ds.ImagePositionPatient], expected, atol=1e-6)
        np.testing.assert_allclose([float(x) for x in ds.ImageOrientationPatient],
                                   [*d[:, 0], *d[:, 1]], atol=1e-9)
        assert [float(x) for x in ds.PixelSpacing] == [0.8, 0.7]
    dce2 = _headers(folders["MR_DCE2"])[0]
    assert dce2.TemporalPositionIdentifier == 3 and float(dce2.TriggerTime) == 150000.0
    assert dce2.ContrastBolusAgent and dce2.ContrastBolusStartTime
    assert float(_headers(folders["MR_DWI_b800"])[0].DiffusionBValue) == 800.0
    adc = _headers(folders["MR_ADC"])[0]
    assert adc.ImageType[0] == "DERIVED" and adc.ImageType[-1] == "ADC"


def test_marks_synthetic_and_deidentified(written):
    _, out = written
    headers = [ds for folder in sorted(out.iterdir()) for ds in _headers(folder)]
    for ds in headers:
        assert ds.SeriesDescription.startswith("SYNTHETIC ")
        assert "SYNTHETIC" in ds.ImageComments
        assert (ds.PatientIdentityRemoved, ds.BurnedInAnnotation) == ("YES", "NO")
        assert ds.PatientID == pseudonym("PAT1") and ds.StudyDate == "20240301"
    uids = [ds.SOPInstanceUID for ds in headers]
    assert len(set(uids)) == len(uids) and all(pydicom.uid.UID(u).is_valid for u in uids)
    assert len({ds.StudyInstanceUID for ds in headers}) == 1
    assert len({ds.SeriesInstanceUID for ds in headers}) == 12


def test_not_synthetic_keeps_identifiers_when_asked(tmp_path):
    study = make_study(synthetic=False)
    study.images = study.images[:1]
    out = write_study_dicom(study, tmp_path / "o", keep_identifiers=True)
    (ds,) = _headers(next(out.iterdir()))
    assert "SYNTHETIC" not in ds.SeriesDescription and "ImageComments" not in ds
    assert ds.PatientID == "PAT1" and ds.PatientIdentityRemoved == "NO"
    (back,), _ = load_dicom_folder(out)
    assert not back.synthetic and back.patient_id == "PAT1"


def test_output_is_deterministic(tmp_path):
    study = make_study()
    study.images = study.images[3:6]  # one MG, the US, one MR
    a = write_study_dicom(study, tmp_path / "a")
    b = write_study_dicom(study, tmp_path / "b")
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.dcm"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.dcm")) and len(files_a) == 8
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    other = write_study_dicom(make_study(study_id="rt-2"), tmp_path / "c")
    uid = lambda root: pydicom.dcmread(next(root.rglob("*.dcm"))).StudyInstanceUID  # noqa: E731
    assert uid(a) == uid(b) != uid(other)


def test_overwrite_and_atomic_failure(tmp_path):
    study = make_study()
    study.images = study.images[:1]
    out = write_study_dicom(study, tmp_path / "o")
    with pytest.raises(OutputError, match="already exists"):
        write_study_dicom(study, out)
    write_study_dicom(study, out, overwrite=True)
    bad = Study("bad", [Image(np.array([[[1.0, np.nan]]], np.float32), Geometry(), Role(Modality.US))])
    with pytest.raises(OutputError, match="NaN"):
        write_study_dicom(bad, tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # nothing half-written


def test_3d_mammogram_refused(tmp_path):
    im = Image(np.zeros((2, 4, 4), np.float32), Geometry(), Role(Modality.MG, "L", "CC"))
    with pytest.raises(OutputError, match="must be 2D"):
        write_study_dicom(Study("x", [im]), tmp_path / "o")


def test_left_handed_direction_reads_back_as_the_same_grid(tmp_path):
    flip = np.diag([1.0, 1.0, -1.0])  # slice axis opposite to row x column
    geom = Geometry((1.0, 1.5, 2.0), (5.0, 6.0, 7.0), tuple(flip.ravel()))
    vox = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    study = Study("lh", [Image(vox, geom, Role(Modality.MR, sequence="T2"))])
    (back,), _ = load_dicom_folder(write_study_dicom(study, tmp_path / "o"))
    b = back.images[0]
    np.testing.assert_array_equal(b.voxels, vox[::-1])
    for ijk in [(0, 0, 0), (1, 2, 3)]:  # the same voxel lands at the same place
        np.testing.assert_allclose(b.geometry.index_to_lps((ijk[0], ijk[1], 3 - ijk[2])),
                                   geom.index_to_lps(ijk), atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
                  elements=st.floats(-1e6, 1e6, allow_nan=False)))
def test_quantise_uint16_error_within_half_a_step(values):
    stored, slope, intercept = quantise_uint16(values)
    assert stored.dtype == np.uint16 and len(slope) <= 16 and len(intercept) <= 16
    decoded = stored * float(slope) + float(intercept)
    assert np.abs(decoded - values).max() <= float(slope) / 2 + 1e-9 * max(1.0, np.abs(values).max())


@given(hnp.arrays(np.int64, hnp.array_shapes(max_dims=2, max_side=6), elements=st.integers(-40000, 25000)))
def test_quantise_uint16_integral_data_is_lossless(values):
    stored, slope, intercept = quantise_uint16(values)
    np.testing.assert_array_equal(stored * float(slope) + float(intercept), values)
