"""A ``binds diagnose`` output folder loaded into real MRML (slicer-core): segmentation, saliency
and table nodes with the right geometry, names, colours and terminology; user edits of the lesion
read back on the image grid; re-runs that never overwrite an edited segmentation; export."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")  # comes with slicer-core
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "BINDS"))

from BINDSLib.diagnose import load_lesion_masks  # noqa: E402
from BINDSLib.fsutil import json_dumps  # noqa: E402
from BINDSLib.outputs.report import DiagnosisReport, ImageOutput, StageResult, report_table_rows  # noqa: E402
from BINDSLib.outputs.segmentation import LESION, SALIENT, TERMINOLOGY_CONTEXT, read_seg_nrrd, write_seg_nrrd  # noqa: E402
from BINDSLib.study import Geometry, Image, Role, Study  # noqa: E402
from BINDSLib.studyfolder import read_volume, write_nrrd  # noqa: E402
from BINDSSlicerLib import results as res  # noqa: E402
from BINDSSlicerLib import scene as sc  # noqa: E402

C, S = np.cos(0.4), np.sin(0.4)
GEOMS = {
    # oblique, anisotropic, off-origin MR volume
    "MR_DCE1": Geometry((0.8, 0.6, 2.0), (-40.0, 25.0, 12.5), (C, 0.0, S, 0.0, 1.0, 0.0, -S, 0.0, C)),
    # a mammogram in a rotated detector plane
    "MG_L_CC": Geometry((0.2, 0.25, 1.0), (3.0, -7.0, 1.5), (0.0, -1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0)),
}
SHAPES = {"MR_DCE1": (6, 12, 10), "MG_L_CC": (1, 16, 11)}
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lesion_mask(label):
    mask = np.zeros(SHAPES[label], np.uint8)
    if label == "MR_DCE1":
        mask[2:4, 3:7, 2:5] = 1
    else:
        mask[0, 4:9, 2:6] = 1
    return mask


def salient_mask(label):
    mask = np.zeros(SHAPES[label], np.uint8)
    if label == "MR_DCE1":
        mask[1:5, 2:9, 1:7] = 1
    else:
        mask[0, 3:11, 1:8] = 1
    return mask


def saliency_map(label):
    depth, rows, cols = SHAPES[label]
    k, j, i = np.meshgrid(np.arange(depth), np.arange(rows), np.arange(cols), indexing="ij")
    return ((i + 2 * j + 3 * k) / (cols + 2 * rows + 3 * depth)).astype(np.float32)


def make_report(labels, probabilities, user=(), images=None):
    images = images or [ImageOutput(label, label, label[:2], f"{label}.seg.nrrd", f"{label}_saliency.nrrd",
                                    "user" if label in user else "predicted", float(lesion_mask(label).sum()),
                                    float(salient_mask(label).sum()), probabilities[label]) for label in labels]
    stages = [StageResult(1, ["MG"], 0.4, {}, {"MG": 1.0}),
              StageResult(2, ["MG", "MR"], 0.87, {"luminal_a": 0.1, "luminal_b": 0.6, "her2_enriched": 0.2,
                                                   "triple_negative": 0.1}, {"MG": 0.3, "MR": 0.7}, 0.93)]
    return DiagnosisReport(
        study_id="s-1", patient_id="anon-000000000001", study_date="2024-01-02", synthetic=True, stage=2,
        stages=stages, malignancy_probability=0.87, subtype_probabilities=stages[-1].subtype_probabilities,
        contributions=stages[-1].contributions, threshold=0.5, uncertainty_band=(0.02, 0.98),
        recommendation="biopsy", recommendation_detail="biopsy recommended", user_lesion_masks=sorted(user),
        images=images, model={"name": "test-model", "version": "1"}, inputs=[], notes=["a note"]).to_json()


def write_outputs(folder, probabilities=None, user=(), lesions=None):
    """A real output folder, written by BINDSLib's own writers (as binds diagnose does)."""
    probabilities = probabilities or {"MR_DCE1": 0.9, "MG_L_CC": 0.6}
    folder.mkdir(parents=True)
    for label in GEOMS:
        lesion = (lesions or {}).get(label, lesion_mask(label))
        write_seg_nrrd(folder / f"{label}.seg.nrrd", {"lesion": lesion, "salient_region": salient_mask(label)},
                       GEOMS[label], laterality="L")
        write_nrrd(folder / f"{label}_saliency.nrrd", saliency_map(label), GEOMS[label])
    (folder / "report.json").write_text(json_dumps(make_report(list(GEOMS), probabilities, user)), encoding="utf-8")
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture()
def images(scene):
    study = Study("s-1", images=[Image(np.full(SHAPES[label], 100 + n, np.int16), GEOMS[label], Role.parse(label))
                                 for n, label in enumerate(GEOMS)])
    return sc.addStudyToScene(scene, study)


@pytest.fixture()
def loaded(scene, images, tmp_path):
    report = write_outputs(tmp_path / "out")
    return res.loadDiagnosisResults(scene, tmp_path / "out", images), report


def ijk_to_ras_of_labelmap(segmentation_node, segment_id):
    import vtk

    labelmap = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    m = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(m)
    return sc.arrayFromVTKMatrix(m)


def test_segmentations_have_names_colours_terminology_and_the_image_geometry(scene, images, loaded):
    results, _ = loaded
    assert set(results.segmentations) == set(GEOMS)
    for label, seg in results.segmentations.items():
        image = images[label]
        assert seg.GetName() == f"{label} BINDS segmentation"
        segmentation = seg.GetSegmentation()
        assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == \
            ["lesion", "salient_region"]
        for spec in (LESION, SALIENT):
            segment = segmentation.GetSegment(spec.segment_id)
            assert segment.GetName() == spec.name
            np.testing.assert_allclose(segment.GetColor(), spec.color_rgb, atol=1e-6)
        lesion_terms = segmentation.GetSegment("lesion").GetTerminology()
        assert lesion_terms.startswith(TERMINOLOGY_CONTEXT + "~SCT^49755003^Morphologically Altered Structure~SCT^4147007^Mass")
        assert "SCT^7771000^Left" in lesion_terms
        assert "99BINDS^SALIENT^Salient region" in segmentation.GetSegment("salient_region").GetTerminology()
        # the labelmap's voxel grid is the image's (IJK->RAS equal, LPS flipped)
        expected = RAS_FROM_LPS @ GEOMS[label].ijk_to_lps_matrix()
        np.testing.assert_allclose(sc.ijkToRASArray(image), expected, atol=1e-9)
        np.testing.assert_allclose(ijk_to_ras_of_labelmap(seg, "lesion"), expected, atol=1e-6)
        # reference geometry and links to the image
        assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is image
        assert res.imageOfOutput(seg) is image
        # voxels: exactly the written masks, on the image grid; a one-voxel shift would differ
        mask = res.segmentMask(seg, "lesion", image)
        np.testing.assert_array_equal(mask, lesion_mask(label))
        assert not np.array_equal(np.roll(mask, 1, axis=2), lesion_mask(label))
        np.testing.assert_array_equal(res.segmentMask(seg, "salient_region", image), salient_mask(label))
        assert not res.isLesionEdited(seg)


def test_saliency_volumes_overlay_their_image_with_a_heat_map(scene, images, loaded):
    results, _ = loaded
    for label, sal in results.saliency.items():
        image = images[label]
        assert sal.GetName() == f"{label} BINDS saliency"
        np.testing.assert_allclose(sc.ijkToRASArray(sal), sc.ijkToRASArray(image), atol=1e-6)
        assert sal.GetImageData().GetDimensions() == image.GetImageData().GetDimensions()
        np.testing.assert_allclose(slicer.util.arrayFromVolume(sal), saliency_map(label), atol=1e-7)
        display = sal.GetDisplayNode()
        color = display.GetColorNode()
        assert color.GetName() == res.HEAT_COLOR_NAME
        assert display.GetWindowLevelMin() == pytest.approx(0.0) and display.GetWindowLevelMax() == pytest.approx(1.0)
        assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(res.SALIENCY_DISPLAY_THRESHOLD)
    # one heat colour table for all maps: black -> red -> yellow -> white, brightness increasing
    heat = res.heatColorNode(scene)
    assert len({s.GetDisplayNode().GetColorNodeID() for s in results.saliency.values()}) == 1
    rgba = [heat.GetLookupTable().GetTableValue(i) for i in range(heat.GetNumberOfColors())]
    assert rgba[0][:3] == pytest.approx((0, 0, 0)) and rgba[-1][:3] == pytest.approx((1, 1, 1))
    mid = rgba[len(rgba) // 3]
    assert mid[0] > 0.8 and mid[1] < 0.2 and mid[2] < 0.1  # red in the lower third
    brightness = [sum(c[:3]) for c in rgba]
    assert all(b2 >= b1 for b1, b2 in zip(brightness, brightness[1:]))


def test_report_table_and_subject_hierarchy(scene, images, loaded):
    results, report = loaded
    rows = res.tableRows(results.table)
    assert rows[0] == ("Study", "s-1")
    assert rows[1:1 + len(report_table_rows(report))] == report_table_rows(report)
    assert ("Stage", "2") in rows and ("Recommendation", "biopsy") in rows
    assert ("Malignancy probability", "0.870") in rows and ("Contribution MR", "0.700") in rows
    assert ("Finding probability (abnormal vs normal)", "0.930") in rows  # the final stage's
    assert ("Subtype luminal b", "0.600") in rows and ("Most likely subtype", "luminal b") in rows
    assert ("Intended use", "Research use only; not for clinical use.") in rows
    table = results.table.GetTable()
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == ["Quantity", "Value"]
    assert json.loads(results.table.GetAttribute(res.REPORT_JSON_ATTRIBUTE)) == report
    # every output is in one results folder under the images' study
    sh = sc.subjectHierarchy(scene)
    study_item = sc.studyItemOf(scene, images["MR_DCE1"])
    assert sh.GetItemParent(results.folderItem) == study_item
    assert sh.GetItemName(results.folderItem) == "BINDS results 1"
    children = set(sc.itemChildrenNodes(scene, results.folderItem))
    assert children == set(results.segmentations.values()) | set(results.saliency.values()) | {results.table}


def test_display_shows_most_suspicious_images_with_saliency_and_the_table(scene, images, loaded):
    results, _ = loaded
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    selection = scene.AddNewNodeByClass("vtkMRMLSelectionNode")
    for name in ("Red", "Yellow", "Green"):
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(name)
        slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        slice_node.SetLayoutName(name)
        if name == "Green":  # an earlier run's overlay in a view this run does not need
            composite.SetForegroundVolumeID(results.saliency["MG_L_CC"].GetID())
            composite.SetForegroundOpacity(0.5)
    shown = res.showDiagnosisResults(scene, results)
    assert shown == ["MR_DCE1", "MG_L_CC"]  # by lesion probability 0.9, 0.6
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView
    assert selection.GetActiveTableID() == results.table.GetID()
    composites = {c.GetLayoutName(): c for c in [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                                                 for i in range(3)]}
    assert composites["Red"].GetBackgroundVolumeID() == images["MR_DCE1"].GetID()
    assert composites["Red"].GetForegroundVolumeID() == results.saliency["MR_DCE1"].GetID()
    assert composites["Red"].GetForegroundOpacity() == pytest.approx(res.SALIENCY_OPACITY)
    assert composites["Yellow"].GetBackgroundVolumeID() == images["MG_L_CC"].GetID()
    assert composites["Green"].GetForegroundVolumeID() is None and composites["Green"].GetForegroundOpacity() == 0.0
    # the Yellow view is turned face-on to the mammogram's detector plane
    yellow = [scene.GetNthNodeByClass(i, "vtkMRMLSliceNode") for i in range(3)]
    yellow = next(n for n in yellow if n.GetLayoutName() == "Yellow")
    normal = sc.arrayFromVTKMatrix(yellow.GetSliceToRAS())[:3, 2]
    image_normal = sc.ijkToRASArray(images["MG_L_CC"])[:3, 2]
    assert abs(np.dot(normal, image_normal / np.linalg.norm(image_normal))) == pytest.approx(1.0, abs=1e-6)


def test_edited_lesion_is_read_back_on_the_image_grid(scene, images, loaded, tmp_path):
    results, _ = loaded
    seg = results.segmentations["MR_DCE1"]
    image = images["MR_DCE1"]
    edited = lesion_mask("MR_DCE1").copy()
    edited[2, 3, 5] = 1  # the user adds a voxel and removes another
    edited[3, 6, 4] = 0
    res.setSegmentMask(seg, "lesion", edited, image)
    nodes = scene.GetNumberOfNodes()
    assert res.isLesionEdited(seg)
    assert not res.isLesionEdited(results.segmentations["MG_L_CC"])
    assert scene.GetNumberOfNodes() == nodes  # reading masks leaves no temporary node behind
    masks = res.lesionMasksForReassessment(scene, images)
    assert list(masks) == ["MR_DCE1"]
    np.testing.assert_array_equal(masks["MR_DCE1"], edited)
    # written for binds diagnose --lesion-mask, read back by BINDSLib on the image grid
    paths = res.writeLesionMaskFiles(masks, images, tmp_path / "masks")
    study = Study("s-1", images=[Image(np.zeros(SHAPES["MR_DCE1"], np.int16), GEOMS["MR_DCE1"], Role.parse("MR_DCE1"))])
    back = load_lesion_masks(study, paths)
    np.testing.assert_array_equal(back["MR_DCE1"], edited)
    assert not np.array_equal(np.roll(back["MR_DCE1"], 1, axis=1), edited)
    from BINDSLib.study import Geometry as G

    written = G.from_sitk(read_volume(paths["MR_DCE1"]))
    np.testing.assert_allclose(written.ijk_to_lps_matrix(), GEOMS["MR_DCE1"].ijk_to_lps_matrix(), atol=1e-6)


def test_removing_the_lesion_segment_counts_as_an_edit(scene, images, loaded):
    results, _ = loaded
    seg = results.segmentations["MG_L_CC"]
    seg.GetSegmentation().RemoveSegment("lesion")
    assert res.isLesionEdited(seg)
    # re-assessed as "no lesion on this image", as if every voxel had been erased
    masks = res.lesionMasksForReassessment(scene, images)
    assert list(masks) == ["MG_L_CC"] and masks["MG_L_CC"].shape == lesion_mask("MG_L_CC").shape
    assert not masks["MG_L_CC"].any()


def test_a_new_run_never_overwrites_an_edited_segmentation(scene, images, loaded, tmp_path):
    results, _ = loaded
    edited_node = results.segmentations["MR_DCE1"]
    edited = lesion_mask("MR_DCE1")
    edited[0, 0, 0] = 1
    res.setSegmentMask(edited_node, "lesion", edited, images["MR_DCE1"])
    old_mg = results.segmentations["MG_L_CC"]
    old_table = results.table
    new_lesion = np.zeros(SHAPES["MR_DCE1"], np.uint8)
    new_lesion[1, 1, 1] = 1
    write_outputs(tmp_path / "out2", user=("MR_DCE1",), lesions={"MR_DCE1": edited})
    second = res.loadDiagnosisResults(scene, tmp_path / "out2", images)
    # the edited node is kept, with its edit; the unedited outputs and the old table are gone
    assert scene.GetNodeByID(edited_node.GetID()) is edited_node
    assert edited_node.GetName().endswith("(edited)")
    np.testing.assert_array_equal(res.segmentMask(edited_node, "lesion", images["MR_DCE1"]), edited)
    assert old_mg.GetScene() is None and old_table.GetScene() is None
    assert second.keptEdited == [edited_node]
    assert second.segmentations["MR_DCE1"] is not edited_node
    assert second.runIndex == 2
    assert res.outputNodes(scene, "segmentation", images["MR_DCE1"]) == [edited_node, second.segmentations["MR_DCE1"]]
    # the new run's lesion came from the user: it is passed again on the next re-assessment
    assert second.segmentations["MR_DCE1"].GetAttribute(res.LESION_SOURCE_ATTRIBUTE) == "user"
    np.testing.assert_array_equal(res.lesionMasksForReassessment(scene, images)["MR_DCE1"], edited)
    assert "edited lesions" in sc.subjectHierarchy(scene).GetItemName(second.folderItem)


def test_a_new_run_replaces_the_earlier_results_folder(scene, images, loaded, tmp_path):
    first, _ = loaded
    write_outputs(tmp_path / "out2")
    second = res.loadDiagnosisResults(scene, tmp_path / "out2", images)
    sh = sc.subjectHierarchy(scene)
    # nothing of the first run was edited: its folder goes with its nodes (headless, the items
    # of removed nodes stay behind, so the folder never looked empty) and the index moves on
    ids = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), ids, True)
    folders = [ids.GetId(i) for i in range(ids.GetNumberOfIds())
               if sh.GetItemAttribute(ids.GetId(i), res.FOLDER_ATTRIBUTE)]
    assert folders == [second.folderItem]
    assert second.runIndex == 2 and sh.GetItemName(second.folderItem) == "BINDS results 2"
    assert scene.GetNodesByName("BINDS report 1").GetNumberOfItems() == 0


def test_export_writes_files_binds_reads_back(scene, images, loaded, tmp_path):
    results, report = loaded
    edited = lesion_mask("MG_L_CC")
    edited[0, 0, :3] = 1
    res.setSegmentMask(results.segmentations["MG_L_CC"], "lesion", edited, images["MG_L_CC"])
    written = res.exportResults(scene, tmp_path / "export")
    names = sorted(Path(p).name for p in written)
    assert names == ["MG_L_CC.seg.nrrd", "MG_L_CC_saliency.nrrd", "MR_DCE1.seg.nrrd", "MR_DCE1_saliency.nrrd",
                     "report.csv", "report.json"]
    segs = read_seg_nrrd(tmp_path / "export" / "MG_L_CC.seg.nrrd", GEOMS["MG_L_CC"], SHAPES["MG_L_CC"])
    np.testing.assert_array_equal(segs["lesion"].mask, edited)
    assert segs["lesion"].name == "Lesion" and segs["lesion"].color_rgb == pytest.approx(LESION.color_rgb)
    sal = read_volume(tmp_path / "export" / "MR_DCE1_saliency.nrrd")
    assert Geometry.from_sitk(sal).ijk_to_lps_matrix() == pytest.approx(GEOMS["MR_DCE1"].ijk_to_lps_matrix(), abs=1e-6)
    assert json.loads((tmp_path / "export" / "report.json").read_text()) == report
    csv_lines = (tmp_path / "export" / "report.csv").read_text().splitlines()
    assert csv_lines[0] == "quantity,value" and "Recommendation,biopsy" in csv_lines


def test_export_of_a_scene_without_results_keeps_the_earlier_export(scene, images, loaded, tmp_path):
    written = res.exportResults(scene, tmp_path / "export")
    before = sorted(p.name for p in (tmp_path / "export").iterdir())
    empty = slicer.vtkMRMLScene()  # e.g. after File > Close Scene, or before any run
    with pytest.raises(ValueError, match="no BINDS results in the scene"):
        res.exportResults(empty, tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == before and all(Path(p).is_file() for p in written)
    with pytest.raises(ValueError, match="no BINDS results"):
        res.exportResults(empty, tmp_path / "never-made")
    assert not (tmp_path / "never-made").exists()


def test_outputs_of_images_not_in_the_scene_are_refused(scene, images, tmp_path):
    write_outputs(tmp_path / "out")
    with pytest.raises(ValueError, match="not in the scene"):
        res.loadDiagnosisResults(scene, tmp_path / "out", {"MR_DCE1": images["MR_DCE1"]})


def test_terminology_file_matches_the_segments_binds_writes():
    t = slicer.vtkSlicerTerminologiesModuleLogic()
    name = t.LoadTerminologyFromFile(str(REPO / "Resources" / "Terminology" / "BINDS.term.json"))
    assert name == TERMINOLOGY_CONTEXT
    found = {}
    for i in range(t.GetNumberOfCategoriesInTerminology(name)):
        category = slicer.vtkSlicerTerminologyCategory()
        t.GetNthCategoryInTerminology(name, i, category)
        for j in range(t.GetNumberOfTypesInTerminologyCategory(name, category)):
            type_ = slicer.vtkSlicerTerminologyType()
            t.GetNthTypeInTerminologyCategory(name, category, j, type_)
            key = (f"{category.GetCodingSchemeDesignator()}^{category.GetCodeValue()}^{category.GetCodeMeaning()}",
                   f"{type_.GetCodingSchemeDesignator()}^{type_.GetCodeValue()}^{type_.GetCodeMeaning()}")
            found[key] = type_.GetRecommendedDisplayRGBValue()
    for spec in (LESION, SALIENT):
        assert (spec.category, spec.type) in found
        assert found[(spec.category, spec.type)] == tuple(round(255 * c) for c in spec.color_rgb)


def test_under_a_transform_the_segmentation_keeps_the_image_grid(scene, images, tmp_path):
    """An image under a parent transform: its segmentation's reference geometry is the image's
    grid (not the grid moved twice), and an edit, the export and --lesion-mask land on the
    same voxels."""
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    m = vtk.vtkMatrix4x4()
    c, s = np.cos(0.5), np.sin(0.5)
    for r, row in enumerate([[c, 0, s, 10.0], [0, 1, 0, -20.0], [-s, 0, c, 30.0]]):
        for k, v in enumerate(row):
            m.SetElement(r, k, v)
    transform.SetMatrixTransformToParent(m)
    for node in images.values():
        node.SetAndObserveTransformNodeID(transform.GetID())
    write_outputs(tmp_path / "out")
    results = res.loadDiagnosisResults(scene, tmp_path / "out", images)
    for label, image in images.items():
        seg = results.segmentations[label]
        assert seg.GetTransformNodeID() == transform.GetID()
        np.testing.assert_allclose(ijk_to_ras_of_labelmap(seg, "lesion"), sc.ijkToRASArray(image), atol=1e-6)
        np.testing.assert_array_equal(res.currentLesionMask(seg), lesion_mask(label))
    edited = lesion_mask("MG_L_CC")
    edited[0, 0, :3] = 1
    res.setSegmentMask(results.segmentations["MG_L_CC"], "lesion", edited, images["MG_L_CC"])
    masks = res.lesionMasksForReassessment(scene, images)
    assert list(masks) == ["MG_L_CC"]
    np.testing.assert_array_equal(masks["MG_L_CC"], edited)
    res.exportResults(scene, tmp_path / "export")
    for label in GEOMS:
        segs = read_seg_nrrd(tmp_path / "export" / f"{label}.seg.nrrd", GEOMS[label], SHAPES[label])
        np.testing.assert_array_equal(segs["lesion"].mask, edited if label == "MG_L_CC" else lesion_mask(label))


def test_an_outline_shared_from_another_sequence_is_not_passed_back_as_the_users(scene, images, tmp_path):
    """A re-assessment passes the user's own outline ("user") and edits; a lesion that only took
    the outline given for another MR sequence ("user_shared") is not passed back, so that an
    edit of the outlined sequence reaches the model instead of the stale copy."""
    report = write_outputs(tmp_path / "out", user=("MR_DCE1",))
    for entry in report["images"]:
        if entry["label"] == "MG_L_CC":
            entry["lesion_source"] = "user_shared"
    (tmp_path / "out" / "report.json").write_text(json_dumps(report), encoding="utf-8")
    results = res.loadDiagnosisResults(scene, tmp_path / "out", images)
    assert results.segmentations["MG_L_CC"].GetAttribute(res.LESION_SOURCE_ATTRIBUTE) == "user_shared"
    assert list(res.lesionMasksForReassessment(scene, images)) == ["MR_DCE1"]


def _two_sequence_run(folder, lesions, user=()):
    """An output folder of two MR sequences on one grid (the model reads them with one outline:
    the user's sequence "user", the other "user_shared")."""
    folder.mkdir(parents=True)
    entries = []
    for label in ("MR_DCE1", "MR_DCE2"):
        write_seg_nrrd(folder / f"{label}.seg.nrrd", {"lesion": lesions[label], "salient_region": salient_mask("MR_DCE1")},
                       GEOMS["MR_DCE1"], laterality="L")
        write_nrrd(folder / f"{label}_saliency.nrrd", saliency_map("MR_DCE1"), GEOMS["MR_DCE1"])
        source = "user" if label in user else "user_shared" if user else "predicted"
        entries.append(ImageOutput(label, label, "MR", f"{label}.seg.nrrd", f"{label}_saliency.nrrd", source,
                                   1.0, 1.0, 0.5))
    report = make_report([], {}, user, images=entries)
    (folder / "report.json").write_text(json_dumps(report), encoding="utf-8")


def _box(z, y, x):
    mask = np.zeros(SHAPES["MR_DCE1"], np.uint8)
    mask[z, y, x] = 1
    return mask


def test_reassessment_passes_the_newest_edit_and_one_mr_outline(scene, tmp_path):
    """The newest edit wins, also on a kept "(edited)" segmentation of an earlier run; of the MR
    sequences (one outline in the model) only the most recently edited one is passed; a kept
    segmentation's salient region (of its older run) is hidden."""
    study = Study("s-1", images=[Image(np.full(SHAPES["MR_DCE1"], 100 + n, np.int16), GEOMS["MR_DCE1"],
                                       Role.parse(label)) for n, label in enumerate(("MR_DCE1", "MR_DCE2"))])
    images = sc.addStudyToScene(scene, study)
    predicted = {label: lesion_mask("MR_DCE1") for label in images}
    _two_sequence_run(tmp_path / "run1", predicted)
    run1 = res.loadDiagnosisResults(scene, tmp_path / "run1", images)
    edit1 = _box(slice(1, 3), slice(2, 5), slice(2, 5))
    res.setSegmentMask(run1.segmentations["MR_DCE1"], "lesion", edit1, images["MR_DCE1"])
    passed = {}
    masks = res.lesionMasksForReassessment(scene, images, passed)
    assert list(masks) == ["MR_DCE1"] and np.array_equal(masks["MR_DCE1"], edit1)
    # run 2 read edit1 (DCE2 took it: "user_shared"); loaded, the passed lesion is recorded
    _two_sequence_run(tmp_path / "run2", {"MR_DCE1": edit1, "MR_DCE2": edit1}, user=("MR_DCE1",))
    run2 = res.loadDiagnosisResults(scene, tmp_path / "run2", images)
    res.markPassed(passed)
    kept = run1.segmentations["MR_DCE1"]
    assert run2.keptEdited == [kept] and kept.GetName().endswith("(edited)")
    assert not kept.GetDisplayNode().GetSegmentVisibility(res.SALIENT_SEGMENT_ID)
    assert kept.GetDisplayNode().GetSegmentVisibility(res.LESION_SEGMENT_ID)
    assert run2.segmentations["MR_DCE1"].GetDisplayNode().GetSegmentVisibility(res.SALIENT_SEGMENT_ID)

    def passed_after(node, label, edit):
        """What a re-assessment passes after ``edit`` (None: no edit) is painted on ``node``."""
        if edit is not None:
            res.setSegmentMask(node, "lesion", edit, images[label])
        masks = res.lesionMasksForReassessment(scene, images)
        return list(masks), masks[next(iter(masks))]

    # nothing edited since: the user's outline of run 2 again
    labels, mask = passed_after(None, "MR_DCE1", None)
    assert labels == ["MR_DCE1"] and np.array_equal(mask, edit1)
    # the user keeps painting on the kept segmentation: that edit, not run 2's copy of edit1
    edit3 = _box(slice(3, 5), slice(6, 9), slice(5, 8))
    labels, mask = passed_after(kept, "MR_DCE1", edit3)
    assert labels == ["MR_DCE1"] and np.array_equal(mask, edit3)
    # then refines the lesion on DCE2: the newest MR edit is the one outline passed
    edit2 = _box(slice(2, 5), slice(5, 10), slice(4, 9))
    labels, mask = passed_after(run2.segmentations["MR_DCE2"], "MR_DCE2", edit2)
    assert labels == ["MR_DCE2"] and np.array_equal(mask, edit2)
    # and back on DCE1's kept node: DCE1 again
    edit4 = _box(slice(0, 2), slice(0, 3), slice(0, 3))
    labels, mask = passed_after(kept, "MR_DCE1", edit4)
    assert labels == ["MR_DCE1"] and np.array_equal(mask, edit4)


def test_a_rename_is_no_edit_and_a_superseded_mr_outline_does_not_come_back(scene, tmp_path):
    study = Study("s-1", images=[Image(np.full(SHAPES["MR_DCE1"], 100 + n, np.int16), GEOMS["MR_DCE1"],
                                       Role.parse(label)) for n, label in enumerate(("MR_DCE1", "MR_DCE2"))])
    images = sc.addStudyToScene(scene, study)
    _two_sequence_run(tmp_path / "run1", {label: lesion_mask("MR_DCE1") for label in images})
    run1 = res.loadDiagnosisResults(scene, tmp_path / "run1", images)
    older, newer = _box(slice(1, 3), slice(2, 5), slice(2, 5)), _box(slice(2, 5), slice(5, 10), slice(4, 9))
    res.setSegmentMask(run1.segmentations["MR_DCE2"], "lesion", older, images["MR_DCE2"])
    res.setSegmentMask(run1.segmentations["MR_DCE1"], "lesion", newer, images["MR_DCE1"])
    # Apply (no re-assessment): both edited segmentations are kept and renamed; a rename is no edit
    _two_sequence_run(tmp_path / "run2", {label: lesion_mask("MR_DCE1") for label in images})
    res.loadDiagnosisResults(scene, tmp_path / "run2", images)
    passed = {}
    masks = res.lesionMasksForReassessment(scene, images, passed)
    assert list(masks) == ["MR_DCE1"] and np.array_equal(masks["MR_DCE1"], newer)
    # the re-assessment read DCE1's outline; DCE2's older edit was set aside: it does not come back
    _two_sequence_run(tmp_path / "run3", {"MR_DCE1": newer, "MR_DCE2": newer}, user=("MR_DCE1",))
    res.loadDiagnosisResults(scene, tmp_path / "run3", images)
    res.markPassed(passed)
    masks = res.lesionMasksForReassessment(scene, images)
    assert list(masks) == ["MR_DCE1"] and np.array_equal(masks["MR_DCE1"], newer)


def test_an_mr_edit_a_stage_1_run_did_not_read_stays_pending(scene, tmp_path):
    """A re-assessment whose run read no MRI (stage 1) did not use the MR outline: the next
    re-assessment passes it again."""
    study = Study("s-1", images=[Image(np.full(SHAPES["MR_DCE1"], 100 + n, np.int16), GEOMS["MR_DCE1"],
                                       Role.parse(label)) for n, label in enumerate(("MR_DCE1", "MR_DCE2"))])
    images = sc.addStudyToScene(scene, study)
    _two_sequence_run(tmp_path / "run1", {label: lesion_mask("MR_DCE1") for label in images})
    run1 = res.loadDiagnosisResults(scene, tmp_path / "run1", images)
    edit = _box(slice(1, 3), slice(2, 5), slice(2, 5))
    res.setSegmentMask(run1.segmentations["MR_DCE1"], "lesion", edit, images["MR_DCE1"])
    passed = {}
    assert list(res.lesionMasksForReassessment(scene, images, passed)) == ["MR_DCE1"]
    stage1 = {"user_lesion_masks": [], "stages": [{"stage": 1, "modalities": ["US"]}]}
    res.markPassed(passed, stage1)
    masks = res.lesionMasksForReassessment(scene, images)
    assert list(masks) == ["MR_DCE1"] and np.array_equal(masks["MR_DCE1"], edit)
    # read by a run that used it: not passed again unless edited again
    res.markPassed(passed, {"user_lesion_masks": ["MR_DCE1"], "stages": [{"stage": 2, "modalities": ["US", "MR"]}]})
    assert res.lesionMasksForReassessment(scene, images) == {}


def test_a_mask_drawn_on_a_turned_mammogram_lands_on_the_study_folders_pixels(tmp_path):
    """A mammogram the DICOM module loaded stored turned (PatientOrientation kept on the node) is
    re-indexed in the study folder; a lesion drawn on the node is written on that study grid, so
    `binds diagnose --lesion-mask` reads it on the same physical pixels (review: a node on the
    unset 1 mm grid wrote a mask BINDSLib took as drawn on the re-indexed pixels: mirrored)."""
    from BINDSLib.study import Geometry

    scene = slicer.vtkMRMLScene()
    stored = np.arange(1 * 6 * 4, dtype=np.uint16).reshape(1, 6, 4)
    node = sc.addVolumeFromVoxels(scene, stored, Geometry(), "MG_L_CC")  # GDCM's grid of a file without one
    sc.setVolumeRole(node, "MG_L_CC")
    node.SetAttribute(sc.ORIENTATION_ATTRIBUTE, "A\\L")  # a left CC turned upside down
    drawn = np.zeros(stored.shape, np.uint8)
    drawn[0, 1, 0] = drawn[0, 2, 1] = 1
    paths = res.writeLesionMaskFiles({"MG_L_CC": drawn}, {"MG_L_CC": node}, tmp_path / "masks")
    image = sc.imageFromVolumeNode(node)
    assert image.source.reoriented == "turned a half (upside down)"
    study = Study("s-1", images=[image])
    back = load_lesion_masks(study, paths)["MG_L_CC"]
    np.testing.assert_array_equal(back, drawn[:, ::-1, ::-1])  # the node's pixels, turned as the image is
    np.testing.assert_array_equal(image.voxels[back.astype(bool)], stored[drawn.astype(bool)][::-1])


def test_a_lesion_drawn_outside_the_ultrasound_region_is_refused_not_read_as_none(tmp_path):
    """The study-folder image of a DICOM ultrasound is its tissue region; a lesion drawn on the
    node outside it came out empty, which reads as "no lesion" (review): refused, naming it."""
    from BINDSLib.study import Geometry

    scene = slicer.vtkMRMLScene()
    node = sc.addVolumeFromVoxels(scene, np.ones((1, 20, 30), np.uint8), Geometry(), "Breast US")
    sc.setVolumeRole(node, "US_R")
    node.SetAttribute(sc.US_REGION_ATTRIBUTE, "10 5 29 19")
    outside = np.zeros((1, 20, 30), np.uint8)
    outside[0, 0:3, 0:5] = 1  # in the annotation band above and left of the region
    with pytest.raises(ValueError, match="the lesion drawn on 'Breast US' lies outside the image BINDS reads"):
        res.writeLesionMaskFiles({"US_R": outside}, {"US_R": node}, tmp_path / "m1")
    inside = np.zeros((1, 20, 30), np.uint8)
    inside[0, 8:12, 15:20] = 1
    paths = res.writeLesionMaskFiles({"US_R": inside}, {"US_R": node}, tmp_path / "m2")
    study = Study("s", images=[sc.imageFromVolumeNode(node)])
    back = load_lesion_masks(study, paths)["US_R"]
    assert back.shape == (1, 15, 20) and back.sum() == 20
    np.testing.assert_array_equal(back[0, 3:7, 5:10], 1)
