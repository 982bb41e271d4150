"""The scene flow's checks and clean-up (slicer-core, headless): what a run refuses before it
writes anything, what it leaves behind when it cannot start, how its errors name the volumes,
and what a later run and an export do with the outputs of an earlier one."""

import datetime as dt
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "BINDS"))

from BINDSLib.study import Image, Role, Study  # noqa: E402
from BINDSSlicerLib import results as res  # noqa: E402
from BINDSSlicerLib import runs  # noqa: E402
from BINDSSlicerLib import scene as sc  # noqa: E402
from test_scene_run import GEOMS, fake_python, scene_with_case  # noqa: E402,F401 - fixtures


def _run(scene, work, python, **kw):
    return runs.DiagnosisRun(scene, sc.assignedVolumes(scene), str(work), python=python, summary=False, **kw)


def _case(scene, study_id, seed, labels=("MG_R_CC",), patient="woman-1", date=dt.date(2023, 4, 19)):
    rng = np.random.default_rng(seed)
    images = [Image(rng.integers(0, 1000, size=(1, 20, 16)).astype(np.uint16), GEOMS["MG_R_CC"], Role.parse(label))
              for label in labels]
    return sc.addStudyToScene(scene, Study(study_id, images=images, study_date=date, patient_id=patient))


def test_volumes_of_two_patients_are_refused_before_anything_is_written(tmp_path, fake_python):
    scene = slicer.vtkMRMLScene()
    _case(scene, "case-a", 0, patient="woman-1")
    _case(scene, "case-b", 1, labels=("US_R",), patient="woman-2")
    with pytest.raises(ValueError, match=r"belong to 2 patients \('woman-1': MG_R_CC; 'woman-2': US_R\)"):
        _run(scene, tmp_path / "work", fake_python).start()
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_a_prior_exam_is_refused_and_volumes_of_unknown_patients_are_combined(tmp_path, fake_python):
    """A prior exam is another visit. Volumes loaded from plain files have no patient: run one
    by one, then together, they are combined (each run put them under a "BINDS patient")."""
    scene = slicer.vtkMRMLScene()
    rng = np.random.default_rng(0)
    loose = {}
    for label in ("MG_R_CC", "US_R"):
        loose[label] = sc.addVolumeFromVoxels(scene, rng.integers(0, 1000, size=(1, 20, 16)).astype(np.uint16),
                                              GEOMS["MG_R_CC"], f"{label} file")
        sc.setVolumeRole(loose[label], label)
    for nodes in ([loose["MG_R_CC"]], [loose["US_R"]], list(loose.values())):
        run = runs.DiagnosisRun(scene, [(n, sc.volumeRole(n)) for n in nodes], str(tmp_path / "work"),
                                python=fake_python, summary=False).start().wait(timeout=60)
        assert run.error is None, run.errorDetails
    assert set(run.results.segmentations) == {"MG_R_CC", "US_R"}
    scene = slicer.vtkMRMLScene()
    _case(scene, "prior", 0, labels=("MG_R_CC",), date=dt.date(2021, 4, 1))
    _case(scene, "current", 1, labels=("MG_L_CC",))
    with pytest.raises(ValueError, match=r"come from studies 748 days apart \('Study prior \(2021-04-01\)', e.g. "
                                         r"'MG_R_CC', and 'Study current \(2023-04-19\)', e.g. 'MG_L_CC'\)"):
        _run(scene, tmp_path / "work2", fake_python).start()
    assert not (tmp_path / "work2").exists() or not any((tmp_path / "work2").iterdir())


def test_one_patients_studies_are_diagnosed_together(tmp_path, fake_python):
    """A woman's mammography and ultrasound are usually two DICOM studies, days apart: they are
    combined, under her patient ID."""
    scene = slicer.vtkMRMLScene()
    _case(scene, "mammography", 0)
    _case(scene, "ultrasound", 1, labels=("US_R",), date=dt.date(2023, 5, 2))
    run = _run(scene, tmp_path / "work", fake_python).start().wait(timeout=60)
    assert run.error is None, run.errorDetails
    assert set(run.results.segmentations) == {"MG_R_CC", "US_R"}


def test_two_mammograms_with_one_view_are_refused_naming_them(tmp_path, fake_python):
    scene = slicer.vtkMRMLScene()
    nodes = _case(scene, "case-a", 0, labels=("MG_R_CC", "MG_L_CC"))
    nodes["MG_R_CC"].SetName("right CC (prior)")
    nodes["MG_L_CC"].SetName("right CC (current)")
    sc.setVolumeRole(nodes["MG_L_CC"], "MG_R_CC")
    with pytest.raises(ValueError, match=r"2 volumes have the role MG_R_CC \('right CC \(prior\)', "
                                         r"'right CC \(current\)'\)"):
        _run(scene, tmp_path / "work", fake_python).start()
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_a_run_that_cannot_start_leaves_no_copy_of_the_images(scene_with_case, tmp_path, fake_python):
    scene, _ = scene_with_case
    run = _run(scene, tmp_path / "work", str(tmp_path / "no-such-PythonSlicer"))
    with pytest.raises(OSError):
        run.start()
    assert run.runFolder and not os.path.exists(run.runFolder)
    with pytest.raises(RuntimeError, match="was not started"):
        run.wait()
    again = _run(scene, tmp_path / "work", fake_python, useEditedLesions=True)  # nothing edited yet
    with pytest.raises(ValueError, match="no lesion was edited"):
        again.start()
    assert list((tmp_path / "work").iterdir()) == []


def test_errors_name_the_volumes_not_the_deleted_temporary_files(scene_with_case, tmp_path):
    scene, nodes = scene_with_case
    nodes["MG_R_CC"].SetName("right CC (prior)")
    failing = tmp_path / "PythonSlicer"
    failing.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, sys
        study = sys.argv[4]
        image = os.path.join(study, "images", "MG_R_CC.nrrd")
        sys.stderr.write(f"binds diagnose: error: {{image}}: holds 1 NaN or infinite voxel(s)\\n")
        sys.exit(3)
        """))
    failing.chmod(0o755)
    run = _run(scene, tmp_path / "work", str(failing))
    run.start().wait(timeout=60)
    assert run.error == "volume 'right CC (prior)' (MG_R_CC): holds 1 NaN or infinite voxel(s)"


def test_a_stage_1_run_after_a_stage_2_one_leaves_no_stale_mr_output_and_export_writes_the_newest(
        scene_with_case, fake_python, tmp_path):
    scene, nodes = scene_with_case
    first = _run(scene, tmp_path / "work", fake_python, stage="2").start().wait(timeout=60)
    assert first.error is None, first.errorDetails
    assert set(first.results.segmentations) == {"MG_R_CC", "MR_DCE1"}
    export = tmp_path / "export"
    res.exportResults(scene, str(export))
    assert (export / "MR_DCE1.seg.nrrd").is_file()
    (export / "my notes.txt").write_text("kept")
    second = _run(scene, tmp_path / "work", fake_python, stage="1").start().wait(timeout=60)
    assert second.error is None, second.errorDetails
    assert set(second.results.segmentations) == {"MG_R_CC"}
    assert res.outputNodes(scene, image=nodes["MR_DCE1"]) == []  # the stage-2 MR outputs are gone
    # exported again to the same folder: the newest run only, the user's file kept
    written = sorted(Path(p).name for p in res.exportResults(scene, str(export)))
    assert written == ["MG_R_CC.seg.nrrd", "MG_R_CC_saliency.nrrd", "report.csv", "report.json"]
    assert sorted(p.name for p in export.iterdir()) == sorted(written + [res.EXPORT_MANIFEST, "my notes.txt"])
    report = json.loads((export / "report.json").read_text())
    assert report["stage"] == 1 and [e["label"] for e in report["images"]] == ["MG_R_CC"]
    # without a manifest (an earlier BINDS's export, a binds diagnose output, the user's own
    # segmentations) nothing but the files of this export is touched
    (export / res.EXPORT_MANIFEST).unlink()
    (export / "expert reader.seg.nrrd").write_text("the user's")
    res.exportResults(scene, str(export))
    assert (export / "expert reader.seg.nrrd").read_text() == "the user's"
    assert (export / "my notes.txt").read_text() == "kept"


def test_an_input_removed_during_the_run_fails_cleanly_and_keeps_the_earlier_results(
        scene_with_case, fake_python, tmp_path):
    scene, nodes = scene_with_case
    first = _run(scene, tmp_path / "work", fake_python, stage="2").start().wait(timeout=60)
    assert first.error is None, first.errorDetails
    nodes["MR_DCE1"].SetName("DCE phase 1")
    second = _run(scene, tmp_path / "work", fake_python, stage="2").start()
    scene.RemoveNode(nodes["MR_DCE1"])
    second.wait(timeout=60)
    assert second.error == ("loading the outputs failed: 'DCE phase 1' was removed from the scene during the "
                            "run; the results were not loaded: run again")
    # nothing of the first run was removed, nothing of the second added
    assert first.results.segmentations["MG_R_CC"].GetScene() is scene and first.results.table.GetScene() is scene
    assert len(res.outputNodes(scene, "report")) == 1


def test_a_deleted_lesion_segment_is_reassessed_as_no_lesion(scene_with_case, fake_python, tmp_path):
    import SimpleITK as sitk

    scene, nodes = scene_with_case
    first = _run(scene, tmp_path / "work", fake_python, stage="2").start().wait(timeout=60)
    assert first.error is None, first.errorDetails
    seg = first.results.segmentations["MR_DCE1"]
    seg.GetSegmentation().RemoveSegment("lesion")
    run = _run(scene, tmp_path / "work", fake_python, stage="2", useEditedLesions=True)
    run.prepare()
    assert list(run.lesionMaskFiles) == ["MR_DCE1"]
    voxels = sitk.GetArrayFromImage(sitk.ReadImage(run.lesionMaskFiles["MR_DCE1"]))
    assert voxels.shape == slicer.util.arrayFromVolume(nodes["MR_DCE1"]).shape and not voxels.any()
    # and the whole re-assessment: the model is given "no lesion" on that image
    again = _run(scene, tmp_path / "work", fake_python, stage="2", useEditedLesions=True).start().wait(timeout=60)
    assert again.error is None, again.errorDetails
    assert again.results.report["user_lesion_masks"] == ["MR_DCE1"]
    assert not res.segmentMask(again.results.segmentations["MR_DCE1"], "lesion", nodes["MR_DCE1"]).any()


def test_the_study_id_and_date_of_a_loaded_study_go_into_the_next_run(scene_with_case):
    scene, nodes = scene_with_case
    info = sc.studyInfo(scene, nodes["MG_R_CC"])
    assert info["study_id"] == "case-1" and info["study_date"] is None  # the fixture's study is undated
    scene = slicer.vtkMRMLScene()
    nodes = _case(scene, "case-7", 0)
    assert sc.studyInfo(scene, nodes["MG_R_CC"])["study_date"] == "2023-04-19"
    sh = sc.subjectHierarchy(scene)
    study = sc.studyItemOf(scene, nodes["MG_R_CC"])
    sh.SetItemAttribute(study, "DICOM.StudyDate", "00000000")  # what an anonymiser writes
    assert sc.studyInfo(scene, nodes["MG_R_CC"])["study_date"] is None
    sh.SetItemAttribute(study, "DICOM.StudyDate", "20190301")
    assert sc.studyInfo(scene, nodes["MG_R_CC"])["study_date"] == "2019-03-01"


def test_a_bad_acquisition_date_names_the_volume(scene_with_case):
    scene, nodes = scene_with_case
    nodes["MG_R_CC"].SetAttribute(sc.ACQUISITION_DATE_ATTRIBUTE, "2019-02-30")
    with pytest.raises(ValueError, match=r"volume 'MG_R_CC': its attribute BINDS.AcquisitionDate '2019-02-30' "
                                         r"is not a date"):
        sc.imageFromVolumeNode(nodes["MG_R_CC"])


def test_a_report_that_is_not_a_json_object_is_a_clear_error(tmp_path):
    (tmp_path / "report.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a BINDS report"):
        res.readReport(str(tmp_path))
    (tmp_path / "report.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read the report"):
        res.readReport(str(tmp_path))


def test_a_run_stopped_for_good_removes_its_copies_of_the_images(scene_with_case, tmp_path):
    """When the module is destroyed (Slicer closes) or a scripted wait times out, no timer polls
    the run any more: stop() cancels it and waits, so it still cleans up its study folder."""
    if os.name == "nt":
        pytest.skip("a shell script stands in for PythonSlicer")
    scene, _ = scene_with_case
    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nsleep 60\n")
    slow.chmod(0o755)
    run = _run(scene, tmp_path / "work", str(slow)).start()
    assert os.path.isdir(run.studyFolder)
    run.stop(timeout=20)
    assert run.cancelled and not os.path.exists(run.studyFolder)
    run.stop()  # (again: nothing to do)


def test_a_run_cancelled_as_the_scene_closes_loads_nothing_onto_the_next_patient(tmp_path, fake_python):
    """File > Close scene cancels the run. If its process had just ended, not yet polled, its
    results must not be loaded: the next patient's volumes may have the same node IDs."""
    import time

    scene = slicer.vtkMRMLScene()
    first = _case(scene, "case-a", 0, labels=("MG_R_CC", "US_R"), patient="woman-1")
    run = _run(scene, tmp_path / "work", fake_python).start()
    deadline = time.monotonic() + 60
    while run.process.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the process has ended; the poll timer has not fired
    run.cancel()
    scene.Clear(0)
    second = _case(scene, "case-b", 1, labels=("MG_R_CC", "US_R"), patient="woman-2")
    assert {n.GetID() for n in second.values()} == {run.nodeIDByLabel[label] for label in second}  # IDs reused
    assert all(node is None for node in run.imageNodesByLabel().values())  # but not the volumes written
    while run.poll():
        time.sleep(0.05)
    assert run.cancelled and run.error is None and run.results is None
    assert res.outputNodes(scene) == [] and not first["MG_R_CC"].GetScene()
