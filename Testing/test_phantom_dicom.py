"""A phantom study written as DICOM reads back with the same roles, geometry and voxels."""

import numpy as np

from BINDSLib.cli import main
from BINDSLib.io.loader import load


def test_phantom_written_as_dicom_reads_back(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "ph"), "--cases", "1", "--seed", "3", "--dicom"]) == 0
    (folder,) = load(tmp_path / "ph" / "case-0000").studies
    (dicom,) = load(tmp_path / "ph" / "case-0000-dicom").studies
    assert dicom.synthetic and folder.synthetic
    got = {im.role: im for im in dicom.images}
    assert set(got) == {im.role for im in folder.images}  # roles incl. DCE phase times, b-value
    for im in folder.images:
        other = got[im.role]
        assert other.shape == im.shape, im.label
        assert np.allclose(other.geometry.spacing_mm, im.geometry.spacing_mm, atol=1e-4), im.label
        assert np.allclose(other.geometry.origin_mm, im.geometry.origin_mm, atol=1e-3), im.label
        assert np.allclose(other.geometry.direction, im.geometry.direction, atol=1e-5), im.label
        assert np.abs(other.voxels - im.voxels.astype(np.float32)).max() <= 1e-3 * max(1.0, float(np.abs(im.voxels).max()))
    # and `binds inspect --json` reports what a user needs
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "ph" / "case-0000-dicom"), "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    roles = {i["role"]: i for i in doc["studies"][0]["images"]}
    assert roles["MG_L_MLO"]["view"] == "MLO" and roles["MG_L_MLO"]["laterality"] == "L"
    assert roles["MR_DCE2"]["phase"] == 2 and roles["MR_DCE2"]["phase_time_s"] is not None
