"""The whole scene flow headless (slicer-core): volumes with roles -> study folder -> ``binds
diagnose`` in a background process -> outputs loaded over the volumes -> lesion edited ->
re-assessed with ``--lesion-mask`` -> export.

The process is ``python -m BINDSLib diagnose`` with BINDS's own argument parser and output writer
(``BINDSLib.diagnose.diagnose_study``) around a stand-in model, so it runs in seconds without a
trained bundle; ``test_real_model_end_to_end`` runs the shipped demo bundle when there is one.
"""

import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "BINDS"))

from BINDSLib.study import Geometry, Image, Role, Study  # noqa: E402
from BINDSSlicerLib import results as res  # noqa: E402
from BINDSSlicerLib import runs  # noqa: E402
from BINDSSlicerLib import scene as sc  # noqa: E402

#: A stand-in for PythonSlicer: "-m BINDSLib diagnose ARGS" parsed by BINDS's own parser, outputs
#: written by BINDS's own diagnose_study; the model marks the brightest voxels as the lesion.
FAKE_PYTHON = '''\
#!{python}
import sys
from types import SimpleNamespace
from pathlib import Path

import numpy as np

assert sys.argv[1:4] == ["-m", "BINDSLib", "diagnose"], sys.argv
from BINDSLib.cli import build_parser
from BINDSLib.commands.diagnose import progress
from BINDSLib.diagnose import DiagnoseOptions, diagnose_study
from BINDSLib.studyfolder import read_study_folder

args = build_parser().parse_args(sys.argv[3:])
masks = dict(item.split("=", 1) for item in args.lesion_mask)
progress(0, 2, "reading the study")
study = read_study_folder(args.studies[0])


class Summary(dict):
    """The model's summary, as a dict or as a method returning it."""

    def __call__(self):
        return self


class Model:
    """What diagnose_study uses of BINDSLib.model.inference.DiagnosisModel (keep in step with it)."""

    uncertainty_band = (0.02, 0.98)
    threshold = 0.5
    summary = Summary(name="stand-in", version="0", weights_sha256="0" * 64, kind="diagnosis")
    bundle = SimpleNamespace(binds={{"uncertainty_band": [0.02, 0.98], "operating_point": {{"threshold": 0.5}}}},
                             summary=summary, path=Path("stand-in"))

    def predict(self, study, lesion_masks=None, modalities=None):
        out = SimpleNamespace(malignancy_probability=0.8, subtype_probabilities={{"luminal_a": 0.7, "luminal_b": 0.3}},
                              contributions={{m: 1.0 / len(modalities) for m in modalities}},
                              lesion_masks={{}}, saliency={{}}, lesion_probability={{}}, images={{}}, timings={{}},
                              timings_s={{}}, finding_probability=0.9)
        for im in study.images:
            v = im.voxels.astype(np.float32)
            lesion = (lesion_masks or {{}}).get(im.label)
            if lesion is None:
                lesion = (v >= np.percentile(v, 95)).astype(np.uint8)
            sal = (v - v.min()) / max(float(v.max() - v.min()), 1e-6)
            out.lesion_masks[im.label], out.saliency[im.label], out.lesion_probability[im.label] = lesion, sal, sal
            out.images[im.label] = SimpleNamespace(lesion_mask=lesion, saliency=sal, lesion_probability=sal,
                                                   lesion_probability_max=float(sal.max()),
                                                   lesion_mask_source="user" if im.label in (lesion_masks or {{}}) else "predicted")
        return out


progress(1, 2, "stage 2: MG+MR")
report = diagnose_study(Model(), study, Path(args.out), DiagnoseOptions(stage=args.stage, overwrite=args.overwrite,
                                                                          summary_png=not args.no_summary), masks)
progress(2, 2, "done")
print(f"{{report.study_id}}: outputs in {{args.out}}")
'''

C, S = np.cos(0.3), np.sin(0.3)
GEOMS = {
    "MG_R_CC": Geometry((0.3, 0.25, 1.0), (12.0, 40.0, -3.0), (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)),
    "MR_DCE1": Geometry((1.1, 0.9, 2.5), (-50.0, 20.0, 7.0), (C, -S, 0.0, S, C, 0.0, 0.0, 0.0, 1.0)),
}


@pytest.fixture()
def fake_python(tmp_path):
    path = tmp_path / "PythonSlicer"
    path.write_text(FAKE_PYTHON.format(python=sys.executable), encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture()
def scene_with_case():
    scene = slicer.vtkMRMLScene()
    rng = np.random.default_rng(0)
    images = []
    for label, geometry in GEOMS.items():
        shape = (1, 20, 16) if label.startswith("MG") else (5, 12, 14)
        images.append(Image(rng.integers(0, 1000, size=shape).astype(np.uint16), geometry, Role.parse(label)))
    nodes = sc.addStudyToScene(scene, Study("case-1", images=images, synthetic=True))
    return scene, nodes


def test_diagnosis_run_from_scene_to_nodes_and_back(scene_with_case, fake_python, tmp_path):
    scene, nodes = scene_with_case
    progress = []
    run = runs.DiagnosisRun(scene, sc.assignedVolumes(scene), str(tmp_path / "work"), device="cpu", stage="2",
                            python=fake_python, summary=False)
    run.start(onProgress=progress.append).wait(timeout=60)
    assert run.error is None, run.errorDetails
    assert [p.message for p in progress] == ["reading the study", "stage 2: MG+MR", "done"]
    results = run.results
    assert set(results.segmentations) == set(GEOMS)
    for label, seg in results.segmentations.items():
        image = nodes[label]
        voxels = slicer.util.arrayFromVolume(image)
        # the lesion the "model" found (the brightest voxels) lands on the same voxels of the image
        np.testing.assert_array_equal(res.segmentMask(seg, "lesion", image),
                                      (voxels >= np.percentile(voxels, 95)).astype(np.uint8))
        np.testing.assert_allclose(sc.ijkToRASArray(results.saliency[label]), sc.ijkToRASArray(image), atol=1e-6)
        sal = slicer.util.arrayFromVolume(results.saliency[label])
        assert np.unravel_index(np.argmax(sal), sal.shape) == np.unravel_index(np.argmax(voxels), voxels.shape)
    assert ("Stage", "2") in res.tableRows(results.table)
    # the study copy is gone, the outputs are kept
    assert not os.path.exists(run.studyFolder) and os.path.isfile(os.path.join(run.outputFolder, "report.json"))

    # the user corrects the MR lesion and re-assesses
    edited = np.zeros((5, 12, 14), np.uint8)
    edited[2, 4:7, 5:9] = 1
    first_mr = results.segmentations["MR_DCE1"]
    res.setSegmentMask(first_mr, "lesion", edited, nodes["MR_DCE1"])
    second = runs.DiagnosisRun(scene, sc.assignedVolumes(scene), str(tmp_path / "work"), useEditedLesions=True,
                               python=fake_python, summary=False)
    second.start().wait(timeout=60)
    assert second.error is None, second.errorDetails
    assert list(second.lesionMaskFiles) == ["MR_DCE1"]
    report = second.results.report
    assert report["user_lesion_masks"] == ["MR_DCE1"]
    np.testing.assert_array_equal(res.segmentMask(second.results.segmentations["MR_DCE1"], "lesion", nodes["MR_DCE1"]),
                                  edited)
    # the edited segmentation is still there, untouched; the unedited MG one was replaced
    assert first_mr.GetScene() is scene
    np.testing.assert_array_equal(res.segmentMask(first_mr, "lesion", nodes["MR_DCE1"]), edited)
    assert results.segmentations["MG_R_CC"].GetScene() is None
    # the edit the run read is recorded on it once the results are loaded: it is not "newer" than
    # the run's own copy any more, but a further edit of it is
    assert first_mr.GetAttribute(res.PASSED_CHECKSUM_ATTRIBUTE) == res.maskChecksum(edited)
    edited[2, 8, 8] = 1
    res.setSegmentMask(first_mr, "lesion", edited, nodes["MR_DCE1"])
    np.testing.assert_array_equal(res.lesionMasksForReassessment(scene, second.imageNodesByLabel())["MR_DCE1"], edited)

    written = res.exportResults(scene, str(tmp_path / "export"))
    assert json.loads((tmp_path / "export" / "report.json").read_text())["user_lesion_masks"] == ["MR_DCE1"]
    assert "MR_DCE1_edited_run1.seg.nrrd" in [Path(p).name for p in written]


def test_reassess_without_an_edit_says_what_to_do(scene_with_case, fake_python, tmp_path):
    scene, _ = scene_with_case
    run = runs.DiagnosisRun(scene, sc.assignedVolumes(scene), str(tmp_path), useEditedLesions=True, python=fake_python)
    with pytest.raises(ValueError, match="no lesion was edited"):
        run.start()


def test_a_failing_run_reports_the_binds_error(scene_with_case, tmp_path):
    scene, _ = scene_with_case
    failing = tmp_path / "PythonSlicer"
    failing.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        sys.stderr.write("binds diagnose: error: model bundle not found (searched x)\\n")
        sys.exit(4)
        """))
    failing.chmod(0o755)
    finished = []
    run = runs.DiagnosisRun(scene, sc.assignedVolumes(scene), str(tmp_path / "work"), python=str(failing))
    run.start(onFinished=finished.append).wait(timeout=60)
    assert finished == [run] and run.results is None
    assert run.error == "model bundle not found (searched x)"
    assert res.outputNodes(scene) == []


def test_real_model_end_to_end(diagnosis_bundle, tmp_path):
    """The real ``python -m BINDSLib diagnose`` (random-weight demo bundle of conftest.py) on a
    synthetic study: every output overlays its image."""
    if not (REPO / "BINDSLib" / "model" / "inference.py").is_file():
        pytest.skip("the diagnosis model is not available yet")
    from BINDSLib.synthetic import make_study

    scene = slicer.vtkMRMLScene()
    nodes = sc.addStudyToScene(scene, make_study(5, diagnosis="malignant", size="demo", dce_times_s=(90.0,)))
    run = runs.DiagnosisRun(scene, sc.assignedVolumes(scene), str(tmp_path), model=str(diagnosis_bundle),
                            device="cpu", stage="2", python=sys.executable, summary=False)
    run.start().wait(timeout=300)
    assert run.error is None, run.errorDetails
    assert run.results.report["stage"] == 2
    assert set(run.results.segmentations) == set(nodes)  # stage 2 uses every image
    for label, seg in run.results.segmentations.items():
        image = nodes[label]
        shape = slicer.util.arrayFromVolume(image).shape
        assert res.segmentMask(seg, "lesion", image).shape == shape
        assert seg.GetSegmentation().GetSegment("lesion").GetName() == "Lesion"
        np.testing.assert_allclose(sc.ijkToRASArray(run.results.saliency[label]), sc.ijkToRASArray(image), atol=1e-5)


def test_load_study_reads_dicom_in_a_separate_process(cbis_cases, tmp_path):
    """"Load study...": ``binds convert`` in a process (BINDS' pydicom), then study folders ->
    volume nodes with roles and the exact geometry of the DICOM files."""
    from BINDSLib.io.loader import load

    scene = slicer.vtkMRMLScene()
    finished = []
    run = runs.ConvertRun(scene, cbis_cases / "sfm-benign-0", str(tmp_path / "work"), python=sys.executable)
    run.start(onFinished=finished.append).wait(timeout=120)
    assert run.error is None, run.errorDetails
    assert finished == [run]
    (study,) = load(cbis_cases / "sfm-benign-0").studies
    assert len(run.nodes) == len(study.images) == 4
    by_role = {sc.volumeRole(n): n for n in run.nodes}
    for im in study.images:
        node = by_role[im.role.key]
        assert slicer.util.arrayFromVolume(node).shape == im.shape
        assert np.allclose(node.GetSpacing(), im.geometry.spacing_mm)
    assert not os.path.exists(run.runFolder)  # the intermediate study folders are removed


def test_load_study_of_a_missing_path_is_a_clear_error(tmp_path):
    run = runs.ConvertRun(slicer.vtkMRMLScene(), tmp_path / "nope", str(tmp_path / "work"), python=sys.executable)
    with pytest.raises(ValueError, match="not found"):
        run.start()
