"""``binds diagnose``: stage logic, outputs on each image's own grid, determinism, batches,
atomic writes and clear errors."""

import csv
import dataclasses
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from BINDSLib.cli import main
from BINDSLib.diagnose import run_stages
from BINDSLib.errors import InputError
from BINDSLib.outputs.segmentation import read_seg_nrrd
from BINDSLib.study import Geometry, Image, Role, Study
from BINDSLib.studyfolder import read_study_folder, write_study_folder


# -- stage logic ------------------------------------------------------------------------------

class FakeModel:
    """Returns a fixed probability per modality set, records the calls."""

    def __init__(self, p1, p2=0.9):
        self.p1, self.p2, self.calls = p1, p2, []

    def predict(self, study, lesion_masks=None, modalities=None):
        self.calls.append(tuple(modalities))
        p = self.p2 if "MR" in modalities else self.p1
        return SimpleNamespace(malignancy_probability=p, subtype_probabilities={}, contributions={},
                               finding_probability=None)


def _study(*mods):
    ims = []
    if "US" in mods:
        ims.append(Image(np.random.default_rng(0).random((1, 8, 8)), Geometry(), Role.parse("US_L")))
    if "MG" in mods:
        ims.append(Image(np.random.default_rng(1).random((1, 8, 8)), Geometry(), Role.parse("MG_L_CC")))
    if "MR" in mods:
        ims.append(Image(np.random.default_rng(2).random((3, 8, 8)), Geometry(), Role.parse("MR_DCE1")))
    return Study("s", ims)


@pytest.mark.parametrize("p1, stage, mods, expect_calls", [
    (0.5, "auto", ("US", "MG", "MR"), [("MG", "US"), ("MG", "US", "MR")]),  # uncertain: stage 2
    (0.01, "auto", ("US", "MG", "MR"), [("MG", "US")]),                     # confident benign
    (0.99, "auto", ("US", "MR"), [("US",)]),                                # confident malignant
    (0.01, "2", ("US", "MR"), [("US",), ("US", "MR")]),                     # forced full path
    (0.5, "1", ("US", "MR"), [("US",)]),                                    # never MRI
    (0.5, "auto", ("US",), [("US",)]),                                      # no MRI to add
    (0.5, "auto", ("MR",), [("MR",)]),                                      # MRI only: stage 2
])
def test_two_stage_logic(p1, stage, mods, expect_calls):
    model = FakeModel(p1)
    stages, _ = run_stages(model, _study(*mods), stage, (0.02, 0.98), {})
    assert model.calls == expect_calls
    assert stages[-1].stage == (2 if "MR" in expect_calls[-1] else 1)


def test_an_mri_outline_reads_the_mri_and_an_empty_mask_outlines_nothing(tmp_path):
    study = _study("US", "MR")
    outline = np.zeros((3, 8, 8), np.uint8)
    for mask, expect in ((outline, [("US",)]), (outline + 1, [("US",), ("US", "MR")])):
        model = FakeModel(0.99)  # confident: stage 1 alone, unless the MRI was outlined
        run_stages(model, study, "auto", (0.02, 0.98), {"MR_DCE1": mask})
        assert model.calls == expect
    # one image's mask given twice (its label and its role key)
    from BINDSLib.diagnose import load_lesion_masks

    us = study.image("US_L")
    path = tmp_path / "mask.nrrd"
    sitk.WriteImage(us.to_sitk(np.ones((1, 8, 8), np.uint8)), str(path))
    with pytest.raises(InputError, match="a second lesion mask for image left .given as 'US_R'"):
        load_lesion_masks(Study("s", [us, Image(us.voxels, us.geometry, Role.parse("US_R"), name="left")]),
                          {"left": path, "US_R": path})


def test_a_forced_stage_without_its_modalities_is_refused():
    with pytest.raises(InputError, match=r"--stage 2 needs MRI the model reads; study s has MG, US \(use --stage auto or 1\)"):
        run_stages(FakeModel(0.5), _study("US", "MG"), "2", (0.02, 0.98), {})
    with pytest.raises(InputError, match=r"--stage 1 needs ultrasound or mammography"):
        run_stages(FakeModel(0.5), _study("MR"), "1", (0.02, 0.98), {})


# -- outputs ----------------------------------------------------------------------------------

def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.name != "timings.json"}


def test_outputs_on_each_image_grid_with_user_lesion(tmp_path, diagnosis_bundle, study_dir):
    study = read_study_folder(study_dir)
    us = next(im for im in study.images if im.modality.value == "US")
    # a user-edited lesion: a small box away from the true lesion
    mask = np.zeros(us.shape, np.uint8)
    mask[0, 20:31, 40:57] = 1
    img = sitk.GetImageFromArray(mask)
    us.geometry.apply_to_sitk(img)
    sitk.WriteImage(img, str(tmp_path / "edited.nrrd"))
    out = tmp_path / "out"
    assert main(["diagnose", str(study_dir), "--model", str(diagnosis_bundle), "--out", str(out), "--device", "cpu",
                 "--lesion-mask", f"{us.label}={tmp_path / 'edited.nrrd'}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["user_lesion_masks"] == [us.label]
    assert any("user-edited" in n for n in report["notes"])
    # a 2D image's lesion "volume" is its area (a 1 mm slab), whatever its nominal slice spacing
    entry = next(e for e in report["images"] if e["label"] == us.label)
    sx, sy, _ = us.geometry.spacing_mm
    assert entry["lesion_volume_mm3"] == pytest.approx(mask.sum() * sx * sy)
    for im in study.images:
        if not (out / f"{im.label}.seg.nrrd").exists():
            continue
        segs = read_seg_nrrd(out / f"{im.label}.seg.nrrd", im.geometry, im.shape)
        seg_img = sitk.ReadImage(str(out / f"{im.label}.seg.nrrd"))
        sal_img = sitk.ReadImage(str(out / f"{im.label}_saliency.nrrd"))
        for written in (seg_img, sal_img):  # same grid as the input image: overlays exactly
            assert written.GetSize()[::-1][-2:] == im.shape[-2:]
            assert np.allclose(written.GetOrigin(), im.geometry.origin_mm, atol=1e-6)
            assert np.allclose(written.GetSpacing()[:2], im.geometry.spacing_mm[:2], atol=1e-9)
            assert np.allclose(written.GetDirection(), im.geometry.direction, atol=1e-9)
        if im.label == us.label:
            np.testing.assert_array_equal(segs["lesion"].mask, mask)  # a one-voxel shift fails
    assert (out / "summary.png").stat().st_size > 10_000
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert rows[0]["user_lesion_masks"] == us.label and rows[0]["model"] == "random-demo"
    # the finding probability (abnormal vs normal) of the final stage, in the report and the table
    assert 0.0 < report["finding_probability"] < 1.0
    assert report["finding_probability"] == report["stages"][-1]["finding_probability"]
    assert float(rows[0]["finding_probability"]) == pytest.approx(report["finding_probability"], abs=1e-6)


def test_a_user_outline_of_one_mr_sequence_is_the_user_lesion_of_every_sequence(tmp_path, diagnosis_bundle, study_dir):
    """The other MR sequences take the outline given for one (mapped onto their grids): their
    lesion is the user's, and the report says so for each."""
    study = read_study_folder(study_dir)
    mr = [im for im in study.images if im.modality.value == "MR"]
    mask = np.zeros(mr[0].shape, np.uint8)
    d, r, c = mr[0].shape
    mask[d // 2 - 1:d // 2 + 2, r // 3:r // 3 + 6, c // 3:c // 3 + 6] = 1
    img = sitk.GetImageFromArray(mask)
    mr[0].geometry.apply_to_sitk(img)
    sitk.WriteImage(img, str(tmp_path / "mr.nrrd"))
    out = tmp_path / "out"
    assert main(["diagnose", str(study_dir), "--model", str(diagnosis_bundle), "--out", str(out), "--device", "cpu",
                 "--stage", "2", "--no-summary", "--lesion-mask", f"{mr[0].label}={tmp_path / 'mr.nrrd'}"]) == 0
    report = json.loads((out / "report.json").read_text())
    sources = {e["label"]: e["lesion_source"] for e in report["images"]}
    assert report["user_lesion_masks"] == [mr[0].label]
    assert sources[mr[0].label] == "user" and {sources[im.label] for im in mr[1:]} == {"user_shared"} and len(mr) > 1
    assert {v for k, v in sources.items() if k not in {im.label for im in mr}} == {"predicted"}


def test_a_small_mr_outline_is_kept_on_every_sequence_and_given_to_the_model(tmp_path, diagnosis_bundle, study_dir):
    """An outline smaller than half a voxel of the coarse MR model grid still reaches the model
    (its most covered voxel), and every other sequence takes the user's own outline: a copy on
    the same grid, resampled from the user's grid (not from the model's) on another one."""
    from BINDSLib.model.config import preset
    from BINDSLib.model.preprocess import prepare_study

    study = read_study_folder(study_dir)
    mr = [im for im in study.images if im.modality.value == "MR"]
    dce1, t2 = (next(im for im in mr if im.label == name) for name in ("MR_DCE1", "MR_T2"))
    # T2 on a finer grid shifted by half a voxel
    fine = sitk.GetImageFromArray(t2.voxels)
    t2.geometry.apply_to_sitk(fine)
    sx, sy, sz = t2.geometry.spacing_mm
    ref = sitk.Image([2 * n for n in fine.GetSize()[:2]] + [fine.GetSize()[2]], sitk.sitkFloat32)
    ref.SetSpacing((sx / 2, sy / 2, sz))
    ref.SetDirection(fine.GetDirection())
    ref.SetOrigin(fine.TransformContinuousIndexToPhysicalPoint((-0.25, -0.25, 0.0)))
    moved = sitk.Resample(fine, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    t2_fine = dataclasses.replace(t2, voxels=sitk.GetArrayFromImage(moved), geometry=Geometry.from_sitk(moved),
                                  lesion_mask=None)
    study = dataclasses.replace(study, images=[t2_fine if im.label == t2.label else im for im in study.images])
    folder = write_study_folder(study, tmp_path / "study")

    d, r, c = dce1.shape
    for z in range(d // 2 - 3, d // 2 + 1):  # 4 mm slices on 6.7 mm model slices: some fall between two
        mask = np.zeros(dce1.shape, np.uint8)
        mask[z, r // 3:r // 3 + 2, c // 3:c // 3 + 2] = 1  # 5 x 5 mm on one slice
        prepared = prepare_study(study, preset("demo"), lesion_masks={dce1.label: mask}, modalities=("MR",))
        assert 0 < prepared.inputs["MR"].masks.sum() <= 8 and prepared.inputs["MR"].mask_given.all(), z

    img = sitk.GetImageFromArray(mask)
    dce1.geometry.apply_to_sitk(img)
    sitk.WriteImage(img, str(tmp_path / "mr.nrrd"))
    out = tmp_path / "out"
    assert main(["diagnose", str(folder), "--model", str(diagnosis_bundle), "--out", str(out), "--device", "cpu",
                 "--stage", "2", "--no-summary", "--lesion-mask", f"{dce1.label}={tmp_path / 'mr.nrrd'}"]) == 0
    for im in mr:
        if im.label == t2.label:
            continue
        lesion = read_seg_nrrd(out / f"{im.label}.seg.nrrd", im.geometry, im.shape)["lesion"].mask
        np.testing.assert_array_equal(lesion, mask, err_msg=im.label)  # the same grid: the same voxels
    lesion = read_seg_nrrd(out / f"{t2.label}.seg.nrrd", t2_fine.geometry, t2_fine.shape)["lesion"].mask
    points = [g.index_to_lps(np.argwhere(m).mean(axis=0)[::-1])
              for g, m in ((dce1.geometry, mask), (t2_fine.geometry, lesion))]
    assert 10 <= lesion.sum() <= 20 and np.linalg.norm(points[0] - points[1]) < 1.0  # 4 voxels of 2.5 mm -> 16 of 1.25


def test_user_lesion_masks_placed_by_their_grid_and_empty_ones_noted(tmp_path, diagnosis_bundle, study_dir, capsys):
    from BINDSLib.outputs.segmentation import write_seg_nrrd

    study = read_study_folder(study_dir)
    us = next(im for im in study.images if im.modality.value == "US")
    mask = np.zeros(us.shape, np.uint8)
    mask[0, 20:31, 40:57] = 1
    # the same shape on a grid 4 columns to the right: the outline is read where its file places it
    step = 4 * np.asarray(us.geometry.direction).reshape(3, 3)[:, 0] * us.geometry.spacing_mm[0]
    shifted = dataclasses.replace(us.geometry, origin_mm=tuple(np.add(us.geometry.origin_mm, step)))
    img = sitk.GetImageFromArray(mask)
    shifted.apply_to_sitk(img)
    sitk.WriteImage(img, str(tmp_path / "shifted.nrrd"))
    base = ["diagnose", str(study_dir), "--model", str(diagnosis_bundle), "--device", "cpu", "--no-summary"]
    assert main(base + ["--out", str(tmp_path / "out-shifted"), "--lesion-mask", f"{us.label}={tmp_path / 'shifted.nrrd'}"]) == 0
    lesion = read_seg_nrrd(tmp_path / "out-shifted" / f"{us.label}.seg.nrrd", us.geometry, us.shape)["lesion"].mask
    want = np.zeros_like(mask)
    want[0, 20:31, 44:61] = 1
    np.testing.assert_array_equal(lesion, want)
    far = dataclasses.replace(us.geometry, origin_mm=tuple(np.add(us.geometry.origin_mm, (1000.0, 0, 0))))
    img = sitk.GetImageFromArray(mask)
    far.apply_to_sitk(img)  # another image's outline
    sitk.WriteImage(img, str(tmp_path / "far.nrrd"))
    write_seg_nrrd(tmp_path / "far.seg.nrrd", {"lesion": mask}, far)
    for name, message in (("far.nrrd", "none of the mask's lesion voxels lands on its image"),
                          ("far.seg.nrrd", "does not overlap its image")):
        assert main(base + ["--out", str(tmp_path / f"out-{name}"), "--lesion-mask", f"{us.label}={tmp_path / name}"]) == 3
        assert message in capsys.readouterr().err and not (tmp_path / f"out-{name}").exists()
    unset = tmp_path / "unset.nrrd"  # a mask saved without its grid: taken as drawn on the image's
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(unset))
    assert main(base + ["--out", str(tmp_path / "out-unset"), "--lesion-mask", f"{us.label}={unset}"]) == 0
    img = sitk.GetImageFromArray(np.zeros_like(mask))
    us.geometry.apply_to_sitk(img)
    sitk.WriteImage(img, str(tmp_path / "empty.nrrd"))
    out = tmp_path / "out"
    assert main(base + ["--out", str(out), "--lesion-mask", f"{us.label}={tmp_path / 'empty.nrrd'}"]) == 0
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert f"the lesion mask given for {us.label} is empty: no lesion is outlined on that image" in notes


def test_same_input_gives_byte_identical_outputs(tmp_path, diagnosis_bundle, study_dir):
    for name in ("a", "b"):
        assert main(["diagnose", str(study_dir), "--model", str(diagnosis_bundle), "--out", str(tmp_path / name),
                     "--device", "cpu", "--stage", "2"]) == 0
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b and len(a) > 10


def test_saliency_is_written_clipped_to_0_1(tmp_path, diagnosis_bundle, study_dir, monkeypatch):
    """Maps outside [0, 1] (float32: clipped in place; float64: clipped into a copy) are written
    as float32 in [0, 1], also for every image that shares one map array (MR sequences)."""
    import BINDSLib.diagnose as d

    real, want = d.run_stages, {}
    rng = np.random.default_rng(4)

    def stretched(*a, **k):
        stages, preds = real(*a, **k)
        groups = []  # images sharing one map array, with that array
        for out in preds[-1].images.values():
            group = next((g for g in groups if g[0] is out.saliency), None)
            if group is None:
                groups.append(group := (out.saliency, []))
            group[1].append(out)
        for i, (sal, outs) in enumerate(groups):
            raw = rng.uniform(-1.0, 2.0, sal.shape)  # this bundle's own maps are flat
            new = raw.astype(np.float64 if i == 0 else np.float32)
            for out in outs:
                want[out.label] = np.clip(raw, 0, 1).astype(np.float32)
                out.saliency = new
        assert any(len(outs) > 1 for _, outs in groups)  # the MR sequences share one map
        return stages, preds

    monkeypatch.setattr(d, "run_stages", stretched)
    out = tmp_path / "o"
    assert main(["diagnose", str(study_dir), "--model", str(diagnosis_bundle), "--out", str(out),
                 "--device", "cpu", "--stage", "2"]) == 0
    written = sorted(out.glob("*_saliency.nrrd"))
    assert len(written) > 3
    for f in written:
        sal = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        label = f.name[:-len("_saliency.nrrd")]
        assert sal.dtype == np.float32 and sal.min() >= 0 and sal.max() <= 1
        np.testing.assert_array_equal(sal.reshape(want[label].shape), want[label])


def test_existing_output_needs_overwrite(tmp_path, diagnosis_bundle, study_dir, capsys):
    out = tmp_path / "o"
    assert main(["diagnose", str(study_dir), "--model", str(diagnosis_bundle), "--out", str(out), "--stage", "1"]) == 0
    before = _files(out)
    assert main(["diagnose", str(study_dir), "--model", str(diagnosis_bundle), "--out", str(out)]) == 5
    assert "--overwrite" in capsys.readouterr().err
    assert _files(out) == before
    assert main(["diagnose", str(study_dir), "--model", str(diagnosis_bundle), "--out", str(out), "--overwrite"]) == 0


def test_failure_midway_leaves_no_output(tmp_path, diagnosis_bundle, study_dir, monkeypatch):
    import BINDSLib.diagnose as d

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(d, "write_seg_nrrd", boom)
    out = tmp_path / "o"
    assert main(["diagnose", str(study_dir), "--model", str(diagnosis_bundle), "--out", str(out)]) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_batch_with_a_broken_study_finishes_the_others_and_resumes(tmp_path, diagnosis_bundle, study_dir, capsys):
    from BINDSLib.synthetic import make_study

    root = tmp_path / "studies"
    root.mkdir()
    write_study_folder(read_study_folder(study_dir), root / "a")
    write_study_folder(make_study(12, diagnosis="benign", modalities=("US",)), root / "b")
    write_study_folder(make_study(13, modalities=("US",)), root / "c")
    (root / "c" / "images" / next(p.name for p in (root / "c" / "images").iterdir())).write_bytes(b"broken")
    out = tmp_path / "out"
    args = ["diagnose", str(root), "--model", str(diagnosis_bundle), "--out", str(out), "--stage", "1"]
    assert main(args) == 6
    err = capsys.readouterr().err
    assert "PROGRESS 3/3" in err
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 2
    # each row names its input (as failures.csv does) and its output folder
    assert [r["source"] for r in rows] == [str(root / "a"), str(root / "b")]
    for r, name in zip(rows, "ab"):
        assert json.loads((out / r["output"] / "report.json").read_text())["study_id"] == r["study_id"]
        assert r["study_id"] == read_study_folder(root / name).study_id
    failures = list(csv.DictReader(open(out / "failures.csv")))
    assert len(failures) == 1 and "c" in failures[0]["source"] and "unknown or damaged image format" in failures[0]["error"]
    done = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/report.json")}
    assert len(done) == 2
    # re-run: finished studies are skipped, not redone
    assert main(args) == 6
    assert "2 already done" in capsys.readouterr().out
    assert {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/report.json")} == done
    # a later batch of one study into the same folder: its tables hold that study only
    one = ["diagnose", str(root / "b"), str(root / "b"), "--model", str(diagnosis_bundle), "--out", str(out),
           "--stage", "1"]
    assert main(one) == 6  # the same study given twice: one failure, named so
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 1 and rows[0]["study_id"] == read_study_folder(root / "b").study_id
    assert rows[0]["source"] == str(root / "b")  # found already done: still named
    assert "was given twice" in open(out / "failures.csv").read()
    # a single study's results.csv has the report's columns only
    assert set(csv.DictReader(open(out / rows[0]["output"] / "results.csv")).fieldnames) & {"source", "output"} == set()


def test_a_study_that_fails_on_overwrite_keeps_its_folder_but_leaves_the_table(tmp_path, diagnosis_bundle,
                                                                              monkeypatch):
    """A batch rerun with --overwrite in which one study fails (its outputs cannot be written):
    its earlier folder stays, but results.csv lists only what this run stands by, not the
    earlier result of a study failures.csv lists."""
    import BINDSLib.diagnose as dg
    from BINDSLib.errors import OutputError
    from BINDSLib.synthetic import make_study

    root = tmp_path / "studies"
    for seed, name in ((12, "a"), (13, "b")):
        write_study_folder(make_study(seed, modalities=("US",)), root / name)
    out = tmp_path / "out"
    args = ["diagnose", str(root), "--model", str(diagnosis_bundle), "--out", str(out), "--stage", "1", "--no-summary"]
    assert main(args) == 0
    failing = read_study_folder(root / "b").study_id
    real = dg.diagnose_study

    def diagnose_study(model, study, target, *a, **k):
        if study.study_id == failing:
            raise OutputError("cannot be written: Operation not permitted", target)
        return real(model, study, target, *a, **k)

    monkeypatch.setattr(dg, "diagnose_study", diagnose_study)
    assert main(args + ["--overwrite"]) == 6
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["study_id"] for r in rows] == [read_study_folder(root / "a").study_id]
    assert failing in open(out / "failures.csv").read()
    assert any((d / "report.json").is_file() for d in out.iterdir() if failing in d.name)  # kept


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("make_bad, code, message", [
    (lambda d: d / "nope", 3, "no such file"),
    (lambda d: (d / "x.png").write_bytes(b"") or (d / "x.png"), 3, "role is unknown"),
    (lambda d: (d / "US_L.png").write_bytes(b"") or (d / "US_L.png"), 3, "file is empty"),
    (lambda d: _write(d / "notes.txt", "hi"), 3, "unsupported file type"),
    (lambda d: _write(d / "s" / "study.json", "{").parent, 3, "invalid JSON"),
    (lambda d: (d / "empty").mkdir() or (d / "empty"), 3, "no DICOM images found"),
])
def test_bad_inputs_give_clear_errors(tmp_path, diagnosis_bundle, capsys, make_bad, code, message):
    bad = make_bad(tmp_path)
    assert main(["diagnose", str(bad), "--model", str(diagnosis_bundle), "--out", str(tmp_path / "o")]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def test_bad_bundle_is_a_model_error(tmp_path, study_dir, capsys):
    assert main(["diagnose", str(study_dir), "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 4
    assert "model bundle not found" in capsys.readouterr().err


def test_views_beyond_what_the_model_takes_are_noted_not_a_crash(tmp_path):
    """A one-view mammography bundle on a 4-view exam: one view read, three listed as ignored."""
    import torch

    from BINDSLib.diagnose import DiagnoseOptions, diagnose_study
    from BINDSLib.model.inference import DiagnosisModel
    from BINDSLib.model.network import DiagnosisNetwork
    from BINDSLib.synthetic import make_study
    from test_model_cases import tiny_config

    torch.manual_seed(0)
    model = DiagnosisModel(DiagnosisNetwork(tiny_config(mg_max_views=1)),
                           {"modalities": ["MG"], "caution": "a test model"}, "cpu", {"name": "one-view"})
    study = make_study(3, modalities=("MG",))
    report = diagnose_study(model, study, tmp_path / "out", DiagnoseOptions(device="cpu", summary_png=False))
    assert len(list((tmp_path / "out").glob("*.seg.nrrd"))) == 1 == len(report.images)
    ignored = [n for n in report.notes if n.endswith("mammogram slot(s); not read for the diagnosis")]
    assert len(ignored) == 3 and report.images[0].label not in " ".join(ignored)
    assert "model caution: a test model" in report.notes


def test_batch_csv_with_a_byte_order_mark_and_one_without_rows(tmp_path, diagnosis_bundle, study_dir, capsys):
    listing = tmp_path / "batch.csv"
    listing.write_text(f"path\n{study_dir}\n", encoding="utf-8-sig")  # as a spreadsheet saves it
    out = tmp_path / "out"
    assert main(["diagnose", str(listing), "--model", str(diagnosis_bundle), "--out", str(out), "--no-summary"]) == 0
    assert (out / "report.json").is_file()  # one study: diagnosed as such
    listing.write_text("path\n")
    assert main(["diagnose", str(listing), "--model", str(diagnosis_bundle), "--out", str(tmp_path / "o2")]) == 3
    assert "the batch CSV lists no study" in capsys.readouterr().err


def test_a_second_batch_into_the_same_folder_is_refused_while_the_first_runs(tmp_path, diagnosis_bundle,
                                                                            study_dir, capsys):
    """A batch removes the half-written study folders a killed run left; a second batch into
    the same folder would have removed the first one's live ones (seen: a report listing maps
    that were not there). The folder's lock refuses the second batch at once."""
    from BINDSLib.fsutil import output_lock
    from BINDSLib.synthetic import make_study

    root = tmp_path / "studies"
    root.mkdir()
    write_study_folder(read_study_folder(study_dir), root / "a")
    write_study_folder(make_study(12, diagnosis="benign", modalities=("US",)), root / "b")
    out = tmp_path / "out"
    out.mkdir()
    args = ["diagnose", str(root), "--model", str(diagnosis_bundle), "--out", str(out), "--stage", "1"]
    with output_lock(out, "binds diagnose batch"):  # the first batch, still running
        assert main(args) == 5
        assert "another binds diagnose batch is writing into this folder now" in capsys.readouterr().err
        assert not (out / "results.csv").exists()
    assert main(args) == 0  # once it is done (or killed: the lock goes with the process)


def test_a_study_whose_outputs_cannot_be_written_is_a_failure_of_the_batch(tmp_path, diagnosis_bundle, study_dir,
                                                                           monkeypatch, capsys):
    import errno

    import BINDSLib.diagnose as dg
    from BINDSLib.synthetic import make_study

    root = tmp_path / "studies"
    root.mkdir()
    write_study_folder(read_study_folder(study_dir), root / "a")
    write_study_folder(make_study(12, diagnosis="benign", modalities=("US",)), root / "b")
    real = dg.diagnose_study

    def full_disk_for_a(model, st, target, *a, **k):
        if target.name == "a" or st.study_id == read_study_folder(study_dir).study_id:
            raise OSError(errno.ENOSPC, "No space left on device", str(target / "x.nrrd"))
        return real(model, st, target, *a, **k)

    monkeypatch.setattr(dg, "diagnose_study", full_disk_for_a)
    out = tmp_path / "out"
    assert main(["diagnose", str(root), "--model", str(diagnosis_bundle), "--out", str(out), "--stage", "1"]) == 6
    failures = list(csv.DictReader(open(out / "failures.csv")))
    assert len(failures) == 1 and failures[0]["error"].endswith("x.nrrd: No space left on device")
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 1  # the other study was diagnosed


def test_the_report_says_why_the_mri_was_or_was_not_read(tmp_path, diagnosis_bundle, study_dir):
    import shutil

    notes = {}
    for name, band in (("narrow", [0.999999, 1.0]), ("wide", [0.0, 1.0])):
        bundle = tmp_path / name
        shutil.copytree(diagnosis_bundle, bundle)
        meta_path = bundle / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["binds"]["uncertainty_band"] = band
        meta_path.write_text(json.dumps(meta))
        out = tmp_path / f"out-{name}"
        assert main(["diagnose", str(study_dir), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                     "--no-summary"]) == 0
        report = json.loads((out / "report.json").read_text())
        notes[name] = (len(report["stages"]), [n for n in report["notes"] if "stage 1 probability" in n])
    p1 = "stage 1 probability "
    assert notes["narrow"][0] == 1 and len(notes["narrow"][1]) == 1
    assert notes["narrow"][1][0].startswith(p1) and notes["narrow"][1][0].endswith(
        "outside the uncertainty band 0.999999-1: the MRI was not read (--stage 2 reads it)")
    assert notes["wide"][0] == 2 and notes["wide"][1][0].endswith(
        "inside the uncertainty band 0-1: stage 2 with MRI replaces it")
    # a lesion outlined on the MRI: read whatever stage 1 says; with --stage 1 it is not used, and said so
    study = read_study_folder(study_dir)
    mr = next(im for im in study.images if im.modality.value == "MR")
    mask = np.zeros(mr.shape, np.uint8)
    mask[mr.shape[0] // 2, 10:20, 10:20] = 1
    img = sitk.GetImageFromArray(mask)
    mr.geometry.apply_to_sitk(img)
    sitk.WriteImage(img, str(tmp_path / "mr.nrrd"))
    for stage, n_stages in (("auto", 2), ("1", 1)):
        out = tmp_path / f"out-mr-{stage}"
        assert main(["diagnose", str(study_dir), "--model", str(tmp_path / "narrow"), "--out", str(out),
                     "--device", "cpu", "--no-summary", "--stage", stage,
                     "--lesion-mask", f"{mr.label}={tmp_path / 'mr.nrrd'}"]) == 0
        report = json.loads((out / "report.json").read_text())
        assert len(report["stages"]) == n_stages
        if stage == "auto":
            assert report["user_lesion_masks"] == [mr.label]
            assert any(n.endswith("outside the uncertainty band 0.999999-1; the MRI was read because a lesion "
                                  "was outlined on it: stage 2 with MRI replaces it") for n in report["notes"])
        else:
            assert report["user_lesion_masks"] == []
            assert f"lesion masks of images not read (not used): {mr.label}" in report["notes"]
            assert not any("re-assessed" in n for n in report["notes"])


def test_the_salient_region_is_the_top_half_of_each_images_saliency(tmp_path, study_dir):
    """The salient-region segment is where an image's saliency reaches half its maximum (the
    alignment saliency of whole images peaks well below 0.5, so an absolute 0.5 left it empty),
    and nothing where the saliency stays below SALIENT_FLOOR."""
    from BINDSLib.diagnose import SALIENT_FLOOR, salient_mask

    sal = np.array([[[0.0, 0.05, 0.11, 0.2, 0.22]]], np.float32)
    np.testing.assert_array_equal(salient_mask(sal), [[[0, 0, 1, 1, 1]]])
    assert not salient_mask(sal * (SALIENT_FLOOR / 0.22) * 0.99).any()
    assert salient_mask(sal).dtype == np.uint8

    out = tmp_path / "out"
    assert main(["diagnose", str(study_dir), "--model", "binds-diagnosis-demo", "--out", str(out), "--device", "cpu",
                 "--stage", "2", "--no-summary"]) == 0  # the shipped bundle: a trained saliency
    study = read_study_folder(study_dir)
    report = json.loads((out / "report.json").read_text())
    seen = 0
    for entry in report["images"]:
        im = study.image(entry["label"])
        saliency = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{im.label}_saliency.nrrd"))).reshape(im.shape)
        region = read_seg_nrrd(out / f"{im.label}.seg.nrrd", im.geometry, im.shape)["salient_region"].mask
        np.testing.assert_array_equal(region, salient_mask(saliency), err_msg=im.label)
        if saliency.max() >= SALIENT_FLOOR:
            seen += 1
            assert region.any() and entry["salient_volume_mm3"] > 0, im.label
    assert seen >= 6  # (mammograms, ultrasound and MRI peak at 0.15-0.6 with it)


def test_a_batch_table_follows_the_order_the_studies_were_given_in(tmp_path, diagnosis_bundle):
    from BINDSLib.synthetic import make_study

    paths = [write_study_folder(make_study(seed, modalities=("US",)), tmp_path / name)
             for seed, name in ((21, "z-first"), (22, "a-second"))]
    for order in (paths, paths[::-1]):
        out = tmp_path / f"out-{order[0].name}"
        assert main(["diagnose", *map(str, order), "--model", str(diagnosis_bundle), "--out", str(out),
                     "--stage", "1", "--no-summary"]) == 0
        rows = list(csv.DictReader(open(out / "results.csv")))
        assert [r["study_id"] for r in rows] == [read_study_folder(p).study_id for p in order]


def test_quiet_leaves_out_the_progress_lines(tmp_path, diagnosis_bundle, study_dir, capsys):
    """binds -q prints errors only: not the PROGRESS lines the Slicer module reads (it never
    passes -q)."""
    for flags, shown in ((["-q"], False), ([], True)):
        out = tmp_path / f"out{len(flags)}"
        assert main([*flags, "diagnose", str(study_dir), "--model", str(diagnosis_bundle), "--out", str(out),
                     "--stage", "1", "--no-summary"]) == 0
        assert ("PROGRESS 1/4" in capsys.readouterr().err) == shown


def test_every_report_field_is_documented(tmp_path, diagnosis_bundle, study_dir):
    """docs/REPORT.md names every field of report.json, of its image entries and of its stages,
    and every column of results.csv."""
    import re

    from BINDSLib.outputs.report import BATCH_COLUMNS, RESULT_COLUMNS

    out = tmp_path / "out"
    assert main(["diagnose", str(study_dir), "--model", str(diagnosis_bundle), "--out", str(out), "--stage", "2",
                 "--no-summary"]) == 0
    report = json.loads((out / "report.json").read_text())
    doc = (Path(__file__).resolve().parents[1] / "docs" / "REPORT.md").read_text()
    named = set(re.findall(r"`([a-z_0-9]+)`", doc))
    keys = set(report) | {k for e in report["images"] for k in e} | {k for s in report["stages"] for k in s}
    assert keys - named == set()
    assert set(RESULT_COLUMNS + BATCH_COLUMNS) - named == set()
