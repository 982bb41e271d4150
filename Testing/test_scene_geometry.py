"""Scene layer on real MRML (slicer-core): volume nodes <-> BINDSLib images, study folders from
the scene, subject hierarchy placement. Geometry is checked voxel by voxel in physical space, so
a lost LPS/RAS flip, a transposed axis or a one-voxel shift fails."""

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "BINDS"))

from BINDSLib.study import Geometry, Image, Role, Study  # noqa: E402
from BINDSLib.studyfolder import read_study_folder  # noqa: E402
from BINDSSlicerLib import scene as sc  # noqa: E402

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


def oblique_direction():
    """A rotation about an oblique axis (no axis stays aligned with a world axis)."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    angle = 0.7
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


GEOM_3D = Geometry((0.7, 0.9, 2.5), (-31.0, 12.5, 40.25), tuple(oblique_direction().ravel()))
GEOM_2D = Geometry((0.1, 0.12, 1.0), (5.0, -80.0, 3.0), (0.0, -1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0))


def voxels(shape, dtype, seed):
    return np.random.default_rng(seed).integers(0, 4000, size=shape).astype(dtype)


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def physical_lps(geometry, ijk):
    return geometry.index_to_lps(ijk)


def node_ras(node, ijk):
    m = sc.ijkToRASArray(node)
    return (m @ np.append(np.asarray(ijk, float), 1.0))[:3]


def test_volume_node_geometry_is_the_image_geometry_in_ras(scene):
    vox = voxels((5, 7, 9), np.int16, 0)
    node = sc.addVolumeFromVoxels(scene, vox, GEOM_3D, "MR")
    # every corner voxel is at the same physical point (RAS = flipped LPS)
    for ijk in [(0, 0, 0), (8, 0, 0), (0, 6, 0), (0, 0, 4), (8, 6, 4), (3.5, 2.25, 1.0)]:
        np.testing.assert_allclose(node_ras(node, ijk), RAS_FROM_LPS @ physical_lps(GEOM_3D, ijk), atol=1e-9)
    # voxel (i, j, k) of the node is voxels[k, j, i]
    array = slicer.util.arrayFromVolume(node)
    assert array.shape == (5, 7, 9) and array.dtype == np.int16
    assert array[4, 2, 7] == vox[4, 2, 7]
    back = sc.geometryFromVolumeNode(node)
    np.testing.assert_allclose(back.ijk_to_lps_matrix(), GEOM_3D.ijk_to_lps_matrix(), atol=1e-12)
    np.testing.assert_allclose(back.spacing_mm, GEOM_3D.spacing_mm, atol=1e-12)


def test_geometry_from_a_node_set_by_slicer_calls(scene):
    """A node placed with Slicer's own setters (as a reader does) converts to the right LPS geometry."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "plain")
    node.SetSpacing(0.5, 0.8, 3.0)
    node.SetOrigin(10.0, 20.0, -30.0)  # RAS
    node.SetIJKToRASDirections(-1, 0, 0, 0, 0, 1, 0, -1, 0)  # rows: R, A, S components of the i, j, k axes
    sc.setVolumeVoxels(node, np.zeros((2, 3, 4), np.uint8))
    geometry = sc.geometryFromVolumeNode(node)
    assert geometry.spacing_mm == pytest.approx((0.5, 0.8, 3.0))
    assert geometry.origin_mm == pytest.approx((-10.0, -20.0, -30.0))
    # i axis points to RAS (-1, 0, 0) = LPS (1, 0, 0); j axis RAS (0, 0, -1) = LPS (0, 0, -1)
    np.testing.assert_allclose(geometry.direction_matrix[:, 0], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(geometry.direction_matrix[:, 1], [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(geometry.direction_matrix[:, 2], [0, -1, 0], atol=1e-12)


def test_sheared_volume_is_refused_with_its_name(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "sheared")
    m = np.eye(4)
    m[0, 1] = 0.3
    node.SetIJKToRASMatrix(sc.vtkMatrixFromArray(m))
    with pytest.raises(ValueError, match="sheared"):
        sc.geometryFromVolumeNode(node)


def test_study_folder_from_scene_has_the_exact_voxels_and_geometry(scene, tmp_path):
    mr = sc.addVolumeFromVoxels(scene, voxels((5, 7, 9), np.int16, 1), GEOM_3D, "T2 axial")
    mg = sc.addVolumeFromVoxels(scene, voxels((1, 11, 6), np.uint16, 2), GEOM_2D, "left CC")
    us1 = sc.addVolumeFromVoxels(scene, voxels((1, 4, 5), np.uint8, 3), GEOM_2D, "us a")
    us2 = sc.addVolumeFromVoxels(scene, voxels((1, 4, 5), np.uint8, 4), GEOM_2D, "us b")
    sc.setVolumeRole(mr, "mr_t2")
    sc.setVolumeRole(mg, "MG_L_CC")
    sc.setVolumeRole(us1, "US_L")
    sc.setVolumeRole(us2, "US_L")
    unused = sc.addVolumeFromVoxels(scene, voxels((1, 2, 2), np.uint8, 5), GEOM_2D, "not used")
    assigned = sc.assignedVolumes(scene)
    assert [n.GetName() for n, _ in assigned] == ["T2 axial", "left CC", "us a", "us b"]
    assert unused not in [n for n, _ in assigned]
    assert mr.GetAttribute(sc.ROLE_ATTRIBUTE) == "MR_T2"  # normalised by BINDSLib

    path, by_label = sc.writeStudyFolder(assigned, tmp_path / "study", "s1", "2024-03-05", "patient-7")
    assert by_label == {"MR_T2": mr.GetID(), "MG_L_CC": mg.GetID(), "US_L": us1.GetID(), "US_L_2": us2.GetID()}
    study = read_study_folder(path)
    assert study.study_id == "s1" and study.study_date.isoformat() == "2024-03-05"
    assert study.patient_id.startswith("anon-")  # pseudonymised by BINDSLib
    for image in study.images:
        node = scene.GetNodeByID(by_label[image.label])
        expected = slicer.util.arrayFromVolume(node)
        assert image.voxels.dtype == expected.dtype
        np.testing.assert_array_equal(image.voxels, expected)
        # the same voxel is at the same physical point in the file and in the scene
        shape = image.shape
        for ijk in [(0, 0, 0), (shape[2] - 1, shape[1] - 1, shape[0] - 1), (1, 2, 0)]:
            np.testing.assert_allclose(RAS_FROM_LPS @ image.geometry.index_to_lps(ijk), node_ras(node, ijk),
                                       atol=1e-6)
    assert study.image("MR_T2").role == Role.parse("MR_T2")


def test_a_one_voxel_shift_is_seen_by_the_physical_check(scene):
    node = sc.addVolumeFromVoxels(scene, voxels((2, 3, 4), np.int16, 0), GEOM_3D, "v")
    shifted = Geometry(GEOM_3D.spacing_mm, tuple(GEOM_3D.index_to_lps((1, 0, 0))), GEOM_3D.direction)
    assert not np.allclose(RAS_FROM_LPS @ shifted.index_to_lps((0, 0, 0)), node_ras(node, (0, 0, 0)), atol=1e-3)


def test_colour_volume_becomes_grayscale(scene):
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    rgb = np.zeros((1, 2, 3, 3), np.uint8)
    rgb[0, 1, 2] = (255, 255, 255)
    rgb[0, 0, 0] = (255, 0, 0)
    slicer.util.updateVolumeFromArray(node, rgb)
    gray = sc.voxelsFromVolumeNode(node)
    assert gray.shape == (1, 2, 3)
    assert gray[0, 1, 2] == pytest.approx(255.0, abs=0.01)
    assert gray[0, 0, 0] == pytest.approx(0.299 * 255, abs=0.01)
    # six values per voxel are no colour: DCE phases in one node, refused with the volume's name
    phases = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "DCE multivolume")
    slicer.util.updateVolumeFromArray(phases, np.zeros((4, 2, 3, 6), np.int16))
    with pytest.raises(ValueError, match="volume 'DCE multivolume' has 6 values per voxel"):
        sc.voxelsFromVolumeNode(phases)


def test_study_added_to_scene_round_trips(scene, tmp_path):
    study = Study("synthetic-9", images=[
        Image(voxels((1, 11, 6), np.uint16, 6), GEOM_2D, Role.parse("MG_R_MLO")),
        Image(voxels((5, 7, 9), np.uint16, 7), GEOM_3D, Role.parse("MR_DCE2")),
    ], study_date=None, synthetic=True)
    nodes = sc.addStudyToScene(scene, study)
    assert list(nodes) == ["MG_R_MLO", "MR_DCE2"]
    assert nodes["MR_DCE2"].GetAttribute(sc.ROLE_ATTRIBUTE) == "MR_DCE2"
    assert nodes["MR_DCE2"].GetAttribute(sc.SYNTHETIC_ATTRIBUTE) == "1"
    # both under one study item, itself under a patient item
    sh = sc.subjectHierarchy(scene)
    study_item = sc.studyItemOf(scene, nodes["MG_R_MLO"])
    assert study_item and study_item == sc.studyItemOf(scene, nodes["MR_DCE2"])
    assert sh.GetItemLevel(study_item) == "Study"
    assert sh.GetItemLevel(sh.GetItemParent(study_item)) == "Patient"
    assert "SYNTHETIC" in sh.GetItemName(study_item)
    back, by_label = sc.studyFromVolumeNodes(sc.assignedVolumes(scene), "again")
    assert back.synthetic
    for original in study.images:
        image = back.image(original.label)
        np.testing.assert_array_equal(image.voxels, original.voxels)
        np.testing.assert_allclose(image.geometry.ijk_to_lps_matrix(), original.geometry.ijk_to_lps_matrix(),
                                   atol=1e-9)


def test_volumes_without_study_are_put_under_a_new_study(scene):
    a = sc.addVolumeFromVoxels(scene, voxels((1, 2, 2), np.uint8, 0), GEOM_2D, "a")
    b = sc.addVolumeFromVoxels(scene, voxels((1, 2, 2), np.uint8, 1), GEOM_2D, "b")
    assert not sc.studyItemOf(scene, a)
    item = sc.ensureStudyItem(scene, [a, b])
    assert sc.studyItemOf(scene, a) == item == sc.studyItemOf(scene, b)
    assert sc.ensureStudyItem(scene, [b]) == item


def test_study_info_from_dicom_attributes_of_the_hierarchy(scene):
    node = sc.addVolumeFromVoxels(scene, voxels((1, 2, 2), np.uint8, 0), GEOM_2D, "a")
    patient = sc.createSubjectItem(scene, "Doe^Jane")
    study = sc.createStudyItem(scene, patient, "Mammo screening")
    sh = sc.subjectHierarchy(scene)
    sh.SetItemUID(study, "DICOM", "1.2.3.4")
    sh.SetItemAttribute(study, "DICOM.StudyDate", "20230405")
    sh.SetItemAttribute(patient, "DICOM.PatientID", "P-12")
    sc.placeUnder(scene, node, study)
    assert sc.studyInfo(scene, node) == {"study_id": "1.2.3.4", "study_date": "2023-04-05", "patient_id": "P-12"}


def test_inputs_exclude_outputs_and_labelmaps(scene):
    keep = sc.addVolumeFromVoxels(scene, voxels((1, 2, 2), np.uint8, 0), GEOM_2D, "image")
    out = sc.addVolumeFromVoxels(scene, voxels((1, 2, 2), np.uint8, 0), GEOM_2D, "saliency")
    out.SetAttribute("BINDS.Output", "saliency")
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    assert sc.volumeNodes(scene) == [keep]


def test_unknown_role_is_refused(scene):
    node = sc.addVolumeFromVoxels(scene, voxels((1, 2, 2), np.uint8, 0), GEOM_2D, "a")
    with pytest.raises(ValueError, match="unknown role"):
        sc.setVolumeRole(node, "XR_CHEST")
    sc.setVolumeRole(node, "")
    assert sc.volumeRole(node) == ""
    with pytest.raises(ValueError, match="assign roles"):
        sc.studyFromVolumeNodes([], "s")
