"""The lesion outline refiner: crop and paste geometry, its place in a prediction (the map on
the image's pixels, the mask drawn from it), training, and the ``binds train`` stage."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from BINDSLib.cli import main
from BINDSLib.errors import InputError, ModelError
from BINDSLib.model.config import DiagnosisConfig, RefinerConfig
from BINDSLib.model.inference import DiagnosisModel, predicted_lesion_mask
from BINDSLib.model.network import DiagnosisNetwork
from BINDSLib.model.refiner import (Box, LesionPlane, LesionRefiner, RefinerTraining, crop,
                                   lesion_planes, paste, train_refiner)
from BINDSLib.study import Geometry, Image, Modality, Role, Study
from BINDSLib.studyfolder import read_study_folder, write_study_folder
from test_model_cases import make_case, tiny_config

TINY = {"size": 32, "channels": [4, 8], "res_units": 0}


def _disk(shape, cy, cx, ry, rx) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(float)
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)


# -- geometry ------------------------------------------------------------------------------

def test_box_is_a_square_in_millimetres_around_the_lesion():
    m = np.zeros((100, 120), bool)
    m[20:31, 40:61] = True  # 11 rows x 21 columns
    b = Box.around(m, (0.5, 1.0), scale=2.0, pad=4)  # rows 0.5 mm, columns 1 mm
    assert (b.cy, b.cx) == (25.0, 50.0)
    side = 2.0 * max(11 * 0.5, 21 * 1.0) + 4 * 0.5  # mm
    assert b.hy * 2 * 0.5 == pytest.approx(side) and b.hx * 2 * 1.0 == pytest.approx(side)
    assert Box.around(np.zeros((5, 5), bool), (1, 1), 1.5, 8) is None
    shifted = Box.of_extent(20, 30, 40, 60, (0.5, 1.0), 2.0, 4, shift=(0.1, -0.2))
    assert (shifted.cy, shifted.cx) == pytest.approx((25 + 1.1, 50 - 4.2))


def test_crop_then_paste_gives_back_the_plane_inside_the_box():
    yy, xx = np.mgrid[:90, :70].astype(np.float32)
    plane = 0.3 * yy + 0.7 * xx  # linear: bilinear sampling is exact
    box = Box(40.0, 30.0, 16.0, 12.0)
    c = crop(plane, box, 64)
    # crop pixel (i, j) samples the plane at the box's pixel centres
    lin = (np.arange(64) + 0.5) / 64 * 2 - 1
    want = 0.3 * (40 + lin * 16)[:, None] + 0.7 * (30 + lin * 12)[None, :]
    np.testing.assert_allclose(c[0].numpy(), want, rtol=1e-5, atol=1e-3)
    pixels, values = paste(c[0], box, plane.shape)
    assert pixels == (slice(24, 57), slice(18, 43))
    inner = (slice(2, -2), slice(2, -2))  # the outer half crop pixel is clamped
    np.testing.assert_allclose(values[inner], plane[pixels][inner], rtol=1e-4, atol=2e-2)


def test_crop_outside_the_plane_is_zero_and_paste_stays_inside():
    plane = np.ones((20, 20), np.float32)
    c = crop(plane, Box(0.0, 0.0, 10.0, 10.0), 16)  # centred on the corner pixel
    assert c[0, :6, :6].max() == 0 and c[0, -4:, -4:].min() == pytest.approx(1.0)
    pixels, values = paste(torch.ones(16, 16), Box(0.0, 0.0, 10.0, 10.0), (20, 20))
    assert pixels == (slice(0, 11), slice(0, 11)) and values.shape == (11, 11)
    assert crop(plane, Box(-50.0, -50.0, 5.0, 5.0), 16).abs().max() == 0  # misses the plane


# -- config ----------------------------------------------------------------------------------

def test_refiner_config_round_trips_and_refuses_bad_values():
    cfg = DiagnosisConfig.from_json({**tiny_config().to_json(), "lesion_refiner": {"size": 64}})
    assert cfg.lesion_refiner == RefinerConfig(size=64)
    assert DiagnosisConfig.from_json(cfg.to_json()) == cfg
    assert tiny_config().to_json()["lesion_refiner"] is None
    for bad in ({"modalities": ["MR"]}, {"size": 100}, {"channels": [8]}, {"box_scale": 0.5}):
        with pytest.raises(ValueError):
            RefinerConfig(**bad)
    with pytest.raises(TypeError):
        DiagnosisConfig.from_json({"lesion_refiner": {"sizes": 64}})
    with pytest.raises(ValueError):
        RefinerTraining(scale_range=(2.0, 1.0))


# -- prediction ------------------------------------------------------------------------------

class _Drawn(torch.nn.Module):
    """A refiner network that draws a fixed logit map (the test knows what it should see)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.logits.expand(x.shape[0], 1, -1, -1)


def _us_study(frames=1, spacing=(0.4, 0.25, 1.0)):
    rng = np.random.default_rng(0)
    shp = (frames, 96, 128)
    v = rng.normal(60, 8, shp).astype(np.float32)
    lesion = _disk(shp[1:], 50, 70, 10, 16)
    v[frames // 2] -= 30 * lesion
    im = Image(v, Geometry(spacing, (1.0, 2.0, 3.0)), Role(Modality.US, laterality="L"))
    return Study("refine", [im])


def _model_with(drawn_logits, coarse: np.ndarray, monkeypatch) -> DiagnosisModel:
    """A US model whose refiner draws ``drawn_logits`` and whose locator's map on the image
    grid is ``coarse`` (every map is mapped back through ``to_image_grid``)."""
    import BINDSLib.model.preprocess as pp

    cfg = tiny_config(lesion_refiner=RefinerConfig(**TINY), lesion_mask_mode="peak_component")
    net = DiagnosisNetwork(cfg)
    net.refiner.net = _Drawn(drawn_logits)
    monkeypatch.setattr(pp, "to_image_grid", lambda a, g, s: coarse.copy())
    return DiagnosisModel(net, {"modalities": ["US"]}, device="cpu")


def _square_logits(lo=8, hi=24):
    logits = torch.full((1, 1, TINY["size"], TINY["size"]), -8.0)
    logits[..., lo:hi, lo:hi] = 8.0
    return logits


@pytest.mark.parametrize("peak", [1.0, 0.7])
def test_refined_map_replaces_the_locator_map_inside_the_box_and_draws_the_mask(monkeypatch, peak):
    size = TINY["size"]
    # the locator's map on the image grid: a small blob (the mask the refiner starts from);
    # the refiner: the middle half of its crop is lesion
    coarse = peak * _disk((96, 128), 50, 70, 6, 8)[None].astype(np.float32)
    model = _model_with(_square_logits(), coarse, monkeypatch)
    study = _us_study()
    out = model.predict(study, saliency="none").images[study.images[0].label]
    box = Box.around(coarse[0] > 0, (0.25, 0.4), 1.5, 8)
    # the lesion score stays the locator's: the refiner's map is scaled by its peak
    assert out.lesion_probability_max == pytest.approx(peak, rel=1e-3)
    pixels = box.pixels((96, 128))
    prob = out.lesion_probability[0]
    inside = np.zeros((96, 128), bool)
    inside[pixels] = True
    # inside the box: the refiner's map (its central half), outside: the locator's (0 here)
    np.testing.assert_array_equal(prob[~inside], coarse[0][~inside])
    drawn = prob[pixels] >= 0.5 * peak
    rows, cols = np.flatnonzero(drawn.any(1)), np.flatnonzero(drawn.any(0))
    height = (rows[-1] - rows[0] + 1) / drawn.shape[0]
    width = (cols[-1] - cols[0] + 1) / drawn.shape[1]
    assert height == pytest.approx(0.5, abs=0.05) and width == pytest.approx(0.5, abs=0.05)
    np.testing.assert_array_equal(out.lesion_mask, predicted_lesion_mask(out.lesion_probability, 0.5,
                                                                         "peak_component"))
    assert out.lesion_probability_max == pytest.approx(float(prob.max()))
    # the crop the refiner read: the image around the lesion, normalised to [0, 1], mirrored too
    seen = model.network.refiner.net.seen
    assert len(seen) == 2 and torch.equal(seen[1], seen[0].flip(-1))
    assert seen[0].shape == (1, 1, size, size) and 0 <= float(seen[0].min()) and float(seen[0].max()) <= 1
    assert float(seen[0][0, 0, 12:20, 12:20].mean()) < float(seen[0][0, 0, :3].mean())  # dark lesion


@pytest.mark.parametrize("mode", ["threshold", "peak_component"])
def test_an_unsure_refiner_keeps_the_locator_peak_and_its_outline(monkeypatch, mode):
    # the refiner's peak is 0.6 (logit 0.405), the locator's 0.8: the map's maximum stays 0.8
    # and the outline is where the refiner passes half its peak (threshold mode: 0.5 of 0.8)
    coarse = 0.8 * _disk((96, 128), 50, 70, 6, 8)[None].astype(np.float32)
    logits = torch.full((1, 1, TINY["size"], TINY["size"]), -8.0)
    logits[..., 8:24, 8:24] = float(np.log(0.6 / 0.4))
    model = _model_with(logits, coarse, monkeypatch)
    model.config = model.network.config = dataclasses.replace(model.config, lesion_mask_mode=mode)
    study = _us_study()
    out = model.predict(study, saliency="none").images[study.images[0].label]
    assert out.lesion_probability_max == pytest.approx(0.8, rel=1e-3)
    box = Box.around(coarse[0] > 0, (0.25, 0.4), 1.5, 8)
    drawn = out.lesion_mask[0][box.pixels((96, 128))]
    assert drawn.mean() == pytest.approx(0.25, abs=0.05)  # the middle half in each direction
    assert out.lesion_mask.sum() == drawn.sum()


def test_a_refiner_finding_no_lesion_leaves_the_locator_map(monkeypatch):
    coarse = _disk((96, 128), 50, 70, 6, 8)[None].astype(np.float32)
    model = _model_with(_square_logits(0, 0), coarse, monkeypatch)  # no lesion drawn
    study = _us_study()
    out = model.predict(study, saliency="none").images[study.images[0].label]
    np.testing.assert_array_equal(out.lesion_probability, coarse)
    np.testing.assert_array_equal(out.lesion_mask, coarse.astype(np.uint8))


def test_the_refiner_works_on_the_frame_the_network_read(monkeypatch):
    coarse = np.zeros((3, 96, 128), np.float32)
    coarse[1] = _disk((96, 128), 50, 70, 6, 8)  # the central frame, read by the network
    model = _model_with(_square_logits(), coarse, monkeypatch)
    study = _us_study(frames=3)
    out = model.predict(study, saliency="none").images[study.images[0].label]
    assert out.lesion_probability[[0, 2]].max() == 0 and out.lesion_mask[[0, 2]].max() == 0
    assert out.lesion_mask[1].sum() > coarse[1].sum()  # the refiner's larger lesion
    seen = model.network.refiner.net.seen[0][0, 0]  # it read the central frame, with the lesion
    assert float(seen[12:20, 12:20].mean()) < float(seen[:3].mean()) - 0.2


# -- training --------------------------------------------------------------------------------

def _planes(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(30, 50), rng.uniform(30, 50), rng.uniform(6, 12)
        m = _disk((80, 80), cy, cx, r, r * rng.uniform(0.7, 1.3))
        plane = np.clip(0.6 + 0.08 * rng.standard_normal((80, 80)) - 0.4 * m, 0, 1).astype(np.float32)
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        out.append(LesionPlane(plane, m, (1.0, 1.0), (rows[0], rows[-1], cols[0], cols[-1])))
    return out


def test_training_teaches_the_refiner_the_lesion_outline():
    torch.manual_seed(0)
    refiner = LesionRefiner(RefinerConfig(size=32, channels=(8, 16, 32), res_units=0))
    val = _planes(8, 1)
    before = train_refiner(refiner, _planes(24, 0), RefinerTraining(epochs=0), seed=0, val_planes=val)
    assert "validation_dice_reference_box" not in before  # nothing trained, nothing measured
    result = train_refiner(refiner, _planes(24, 0), RefinerTraining(epochs=25, batch_size=8, lr=5e-3),
                           seed=0, val_planes=val)
    assert result["n_train"] == 24 and result["n_validation"] == 8
    assert result["validation_dice_reference_box"] > 0.8
    assert not refiner.training


def test_lesion_planes_are_the_lesion_images_of_the_refined_modalities():
    studies = [make_case(0, True, ("MG", "US"), us_frames=3), make_case(1, None, ("US",))]
    planes = lesion_planes(studies, RefinerConfig(modalities=("US",)), (0.5, 99.5))
    assert len(planes) == 1  # the normal study has no lesion; MG is not refined
    us = studies[0].image(next(im.label for im in studies[0].images if im.modality == Modality.US))
    p = planes[0]
    assert p.mask.sum() == us.lesion_mask[1].sum() > us.lesion_mask[0].sum()  # the central frame
    assert p.mask.dtype == np.uint8 and 0 <= float(p.plane.min()) and float(p.plane.max()) <= 1
    assert p.spacing_yx == (us.geometry.spacing_mm[1], us.geometry.spacing_mm[0])
    both = lesion_planes(studies, RefinerConfig(modalities=("US", "MG")), (0.5, 99.5))
    assert len(both) == 3  # + the two left-breast mammograms with the lesion


def test_lesion_planes_keep_only_what_the_largest_training_box_reaches():
    from BINDSLib.model.preprocess import normalise_intensity

    rng = np.random.default_rng(1)
    v = rng.normal(100, 10, (1, 600, 800)).astype(np.float32)
    m = _disk((600, 800), 300, 420, 12, 20)[None]
    v[0] -= 40 * m[0]
    study = Study("big", [Image(v, Geometry((0.3, 0.2, 1.0)), Role(Modality.US), lesion_mask=m)])
    training = RefinerTraining(scale_range=(1.3, 2.0), jitter=0.15)
    cfg = RefinerConfig()
    (p,) = lesion_planes([study], cfg, (0.5, 99.5), training)
    assert p.plane.shape[0] * p.plane.shape[1] < 600 * 800 / 10  # not the whole image
    assert p.mask.sum() == m.sum()
    full = normalise_intensity(v, (0.5, 99.5))[0]
    rows, cols = np.flatnonzero(m[0].any(1)), np.flatnonzero(m[0].any(0))
    dy, dx = rows[0] - p.bounds[0], cols[0] - p.bounds[2]
    for shift in ((0.15, 0.15), (-0.15, 0.15), (0.15, -0.15), (-0.15, -0.15)):
        b = Box.of_extent(*p.bounds, p.spacing_yx, 2.0, cfg.box_pad, shift)
        moved = Box(b.cy + dy, b.cx + dx, b.hy, b.hx)
        np.testing.assert_allclose(crop(p.plane, b, 64).numpy(), crop(full, moved, 64).numpy(), atol=1e-5)


def test_crop_normalises_like_normalise_intensity_and_takes_any_byte_order():
    from BINDSLib.model.preprocess import normalise_intensity

    plane = np.linspace(-50, 250, 40 * 30, dtype=np.float32).reshape(40, 30)
    box = Box(25.0, 10.0, 20.0, 20.0)  # partly outside the plane
    want = crop(normalise_intensity(plane[None], (0.5, 99.5), (0.0, 200.0))[0], box, 32)
    np.testing.assert_allclose(crop(plane.astype(">f4"), box, 32, (0.0, 200.0)).numpy(), want.numpy(),
                               atol=1e-6)
    assert crop(plane, box, 32, (5.0, 5.0)).abs().max() == 0  # a flat range: zeros


def _train_config(tmp_path, refiner=True, epochs=1):
    folders = tmp_path / "studies"
    for i in range(6):
        write_study_folder(make_case(i, (True, False, None)[i % 3], ("US",)), folders / f"case{i}")
    model = tiny_config().to_json()
    if refiner:
        model["lesion_refiner"] = TINY
    doc = {"model": model, "data": [{"folders": "studies"}],
           "train": {"seed": 3, "batch_size": 2, "validation_fraction": 0.34, "data_workers": 1,
                     "phases": [{"name": "unimodal", "epochs": epochs, "lr": 0.003, "fusion": False}],
                     "refiner": {"epochs": 2, "batch_size": 2}},
           "bundle": {"name": "tiny-refined", "version": "0.0.1"}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return path


def test_binds_train_trains_the_refiner_into_the_bundle_and_resumes_it(tmp_path):
    cfg = _train_config(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    model = DiagnosisModel.from_bundle(run / "bundle", device="cpu")
    assert isinstance(model.network.refiner, LesionRefiner)
    metrics = model.metadata["metrics"]["lesion_refiner"]
    split = {r["study_id"] for r in csv.DictReader(open(run / "validation_cases.csv"))}
    studies = [read_study_folder(tmp_path / "studies" / f"case{i}") for i in range(6)]
    lesions = {s.study_id for s in studies if s.images[0].lesion_mask.any()}
    assert len(lesions) == 4 and len(split) == 2
    assert metrics["n_train"] == len(lesions - split) and metrics["n_validation"] == len(lesions & split)
    assert model.metadata["training"]["refiner"]["epochs"] == 2
    ckpt = run / "checkpoints" / "refiner.pt"
    assert ckpt.is_file()
    stamp = ckpt.stat().st_mtime_ns
    first = {k: v.clone() for k, v in model.network.refiner.state_dict().items()}
    # resuming the finished run reuses the trained refiner: same weights, not trained again
    assert main(["train", str(cfg), "--out", str(run), "--resume", "--bundle", str(tmp_path / "b2")]) == 0
    again = DiagnosisModel.from_bundle(tmp_path / "b2", device="cpu").network.refiner.state_dict()
    assert ckpt.stat().st_mtime_ns == stamp
    assert all(torch.equal(first[k], again[k]) for k in first)
    # the refiner's weights are not those it started from
    fresh = LesionRefiner(RefinerConfig(**TINY)).state_dict()
    assert any(not torch.equal(fresh[k], first[k]) for k in first if first[k].is_floating_point())


def test_a_refiner_added_after_training_is_trained_on_resume(tmp_path):
    cfg = _train_config(tmp_path, refiner=False)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    plain = DiagnosisModel.from_bundle(run / "bundle", device="cpu").network.state_dict()
    doc = json.loads(cfg.read_text())
    doc["model"]["lesion_refiner"] = TINY
    cfg.write_text(json.dumps(doc))
    assert main(["train", str(cfg), "--out", str(run), "--resume", "--bundle", str(tmp_path / "b2")]) == 0
    refined = DiagnosisModel.from_bundle(tmp_path / "b2", device="cpu").network.state_dict()
    assert {k for k in refined if not k.startswith("refiner.")} == set(plain)
    assert all(torch.equal(plain[k], refined[k]) for k in plain)  # the network is the same
    assert any(k.startswith("refiner.") for k in refined)
    # another network than the run's is refused (before the checkpoint is read); without the
    # run's config.json to compare with, the checkpoint's weights that do not fit are named
    doc["model"]["embed_dim"] = 32
    cfg.write_text(json.dumps(doc))
    from BINDSLib.model.train import load_settings, train

    with pytest.raises(InputError, match="this run was started with another model"):
        train(load_settings(cfg), run, resume=True, device="cpu", bundle_path=tmp_path / "b3")
    (run / "config.json").unlink()
    with pytest.raises(InputError, match="does not fit"):
        train(load_settings(cfg), run, resume=True, device="cpu", bundle_path=tmp_path / "b3")


def test_changing_or_removing_the_refiner_still_resumes_the_run(tmp_path):
    cfg = _train_config(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    first = DiagnosisModel.from_bundle(run / "bundle", device="cpu").network.state_dict()
    doc = json.loads(cfg.read_text())
    doc["model"]["lesion_refiner"] = {**TINY, "channels": [8, 16]}  # another refiner
    cfg.write_text(json.dumps(doc))
    assert main(["train", str(cfg), "--out", str(run), "--resume", "--bundle", str(tmp_path / "b2")]) == 0
    second = DiagnosisModel.from_bundle(tmp_path / "b2", device="cpu").network.state_dict()
    assert second["refiner.net.model.0.conv.weight"].shape[0] == 8  # trained again, new shape
    assert all(torch.equal(first[k], second[k]) for k in first if not k.startswith("refiner."))
    del doc["model"]["lesion_refiner"]
    cfg.write_text(json.dumps(doc))
    assert main(["train", str(cfg), "--out", str(run), "--resume", "--bundle", str(tmp_path / "b3")]) == 0
    third = DiagnosisModel.from_bundle(tmp_path / "b3", device="cpu").network
    assert third.refiner is None
    assert all(torch.equal(first[k], v) for k, v in third.state_dict().items())


def test_a_refiner_with_nothing_to_learn_from_is_refused(tmp_path):
    from BINDSLib.model.train import load_settings, train

    cfg = _train_config(tmp_path)
    doc = json.loads(cfg.read_text())
    doc["train"]["refiner"]["epochs"] = 0
    cfg.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="epochs is 0"):
        train(load_settings(cfg), tmp_path / "run", device="cpu")
    doc["train"]["refiner"]["epochs"] = 2
    doc["model"]["lesion_refiner"]["modalities"] = ["MG"]  # the studies are ultrasound only
    cfg.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="no training image of MG"):
        train(load_settings(cfg), tmp_path / "run", device="cpu", overwrite=True)


def test_a_bundle_whose_config_names_a_refiner_needs_its_weights(tmp_path):
    from BINDSLib.bundle import load_bundle, save_bundle

    cfg = _train_config(tmp_path, refiner=False)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    b = load_bundle(run / "bundle", kind="diagnosis")
    binds = dict(b.binds)
    binds["model_config"] = {**binds["model_config"], "lesion_refiner": TINY}
    save_bundle(tmp_path / "bad", b.state_dict, binds, name="bad", version="0.0.1", description="test",
                task="test")
    with pytest.raises(ModelError, match="do not fit"):
        DiagnosisModel.from_bundle(tmp_path / "bad", device="cpu")
