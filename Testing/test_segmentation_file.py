"""``.seg.nrrd`` writing and reading, checked against real MRML (slicer-core) when installed."""

import numpy as np
import pytest
import SimpleITK as sitk

from BINDSLib.errors import InputError
from BINDSLib.outputs.segmentation import LESION, SALIENT, read_seg_nrrd, write_seg_nrrd
from BINDSLib.study import Geometry

C, S = np.cos(0.5), np.sin(0.5)
GEOM = Geometry((0.5, 0.6, 2.0), (10.0, -5.0, 3.0), (C, -S, 0, S, C, 0, 0, 0, 1))
SHAPE = (3, 10, 12)


def masks():
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[1, 2:5, 3:6] = 1
    salient = np.zeros(SHAPE, np.uint8)
    salient[1, 3:8, 4:9] = 1  # overlaps the lesion
    return {"lesion": lesion, "salient_region": salient}


def test_round_trip_overlapping_segments(tmp_path):
    p = write_seg_nrrd(tmp_path / "MR_DCE1.seg.nrrd", masks(), GEOM, laterality="L")
    segs = read_seg_nrrd(p, GEOM, SHAPE)
    assert list(segs) == ["lesion", "salient_region"]
    for k, m in masks().items():
        np.testing.assert_array_equal(segs[k].mask, m)
    assert segs["lesion"].name == "Lesion" and segs["lesion"].color_rgb == LESION.color_rgb
    img = sitk.ReadImage(str(p))
    assert np.allclose(img.GetOrigin(), GEOM.origin_mm) and np.allclose(img.GetDirection(), GEOM.direction)
    assert img.GetMetaData("Segment0_Extent") == "3 5 2 4 1 1"
    assert "SCT^4147007^Mass" in img.GetMetaData("Segment0_Tags")
    assert "SCT^7771000^Left" in img.GetMetaData("Segment0_Tags")
    assert not list(tmp_path.glob(".*part*"))


def test_read_resamples_a_shifted_grid(tmp_path):
    # Slicer may write a segmentation cropped to its extent: a smaller grid, shifted origin.
    lesion = masks()["lesion"]
    crop = lesion[1:2, 2:5, 3:6]
    origin = GEOM.index_to_lps((3, 2, 1))
    p = write_seg_nrrd(tmp_path / "c.seg.nrrd", {"lesion": crop}, Geometry(GEOM.spacing_mm, tuple(origin), GEOM.direction))
    segs = read_seg_nrrd(p, GEOM, SHAPE)
    np.testing.assert_array_equal(segs["lesion"].mask, lesion)
    # one voxel off along rows would be detected
    assert not np.array_equal(np.roll(segs["lesion"].mask, 1, axis=1), lesion)


def test_not_a_segmentation(tmp_path):
    img = sitk.GetImageFromArray(np.zeros(SHAPE, np.uint8))
    sitk.WriteImage(img, str(tmp_path / "x.nrrd"))
    with pytest.raises(InputError, match="no Segment0_ID"):
        read_seg_nrrd(tmp_path / "x.nrrd", GEOM, SHAPE)


def test_slicer_reads_names_colours_layers_and_geometry(tmp_path):
    slicer = pytest.importorskip("slicer")
    p = write_seg_nrrd(tmp_path / "s.seg.nrrd", masks(), GEOM)
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(p))
    assert storage.ReadData(node)
    seg = node.GetSegmentation()
    assert seg.GetNumberOfSegments() == 2 and seg.GetNumberOfLayers() == 2
    lesion = seg.GetSegment("lesion")
    assert lesion.GetName() == "Lesion"
    assert np.allclose(lesion.GetColor(), LESION.color_rgb)
    assert np.allclose(seg.GetSegment("salient_region").GetColor(), SALIENT.color_rgb)
    # geometry: the labelmap's IJK->RAS equals the image's (LPS -> RAS flips x and y)
    labelmap = slicer.vtkOrientedImageData()
    node.GetBinaryLabelmapRepresentation("lesion", labelmap)
    import vtk

    m = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(m)
    ijk_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    expect = np.diag([-1, -1, 1, 1]) @ GEOM.ijk_to_lps_matrix()
    assert np.allclose(ijk_to_ras, expect)
