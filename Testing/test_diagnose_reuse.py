"""Diagnosis latency work (issue #9): stage 2 reuses stage 1's mammography / ultrasound work,
the fusion variants run batched, BatchNorm folding, shared maps of one grid - each giving the
results of the plain computation (up to float rounding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from BINDSLib.diagnose import run_stages
from BINDSLib.model.data import collate, inputs_item
from BINDSLib.model.encoders import Backbone
from BINDSLib.model.inference import DiagnosisModel, PredictionCache, fuse_variants
from BINDSLib.model.network import DiagnosisNetwork
from BINDSLib.model.preprocess import prepare_study
from BINDSLib.outputs.segmentation import _extent
from test_model_cases import make_case, tiny_model


@pytest.fixture(scope="module")
def model() -> DiagnosisModel:
    return tiny_model()


class _Counter:
    """Counts the forward calls of each modality branch."""

    def __init__(self, net):
        self.calls = {m: 0 for m in net.branches}
        self.handles = [b.register_forward_hook(self._hook(m)) for m, b in net.branches.items()]

    def _hook(self, m):
        def hook(*_):
            self.calls[m] += 1
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _same_images(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k].lesion_mask, b[k].lesion_mask)
        assert np.abs(a[k].saliency - b[k].saliency).max() <= 1e-5
        assert np.abs(a[k].lesion_probability - b[k].lesion_probability).max() <= 1e-5


def test_stage_two_reuses_stage_one_and_matches_separate_predictions(model):
    study = make_case(4, True)
    sep1 = model.predict(study, modalities=("MG", "US"))
    sep2 = model.predict(study)
    count = _Counter(model.network)
    try:
        stages, preds = run_stages(model, study, "2", (0.02, 0.98), {})
    finally:
        count.close()
    # each branch ran once: stage 2 encoded only the MRI
    assert count.calls == {"MG": 1, "US": 1, "MR": 1}
    assert stages[0].malignancy_probability == pytest.approx(sep1.malignancy_probability, abs=1e-5)
    assert stages[1].malignancy_probability == pytest.approx(sep2.malignancy_probability, abs=1e-5)
    for got, ref in ((stages[0], sep1), (stages[1], sep2)):
        for k, v in ref.contributions.items():
            assert got.contributions[k] == pytest.approx(v, abs=1e-5)
        for k, v in ref.subtype_probabilities.items():
            assert got.subtype_probabilities[k] == pytest.approx(v, abs=1e-5)
    _same_images(preds[0].images, sep1.images)
    _same_images(preds[1].images, sep2.images)
    assert preds[1].notes == sep2.notes
    # the stage-1 images are the same objects in stage 2
    mg = next(k for k in preds[0].images if k.startswith("MG"))
    assert preds[1].images[mg] is preds[0].images[mg]


def test_confident_stage_one_never_touches_the_mri(model):
    study = make_case(4, True)
    count = _Counter(model.network)
    try:
        stages, _ = run_stages(model, study, "auto", (-1.0, -0.5), {})  # nothing is uncertain
    finally:
        count.close()
    assert [s.stage for s in stages] == [1]
    assert count.calls["MR"] == 0


def test_cache_is_cleared_for_another_study_or_masks(model):
    a, b = make_case(4, True, ("US",)), make_case(5, False, ("US",))
    cache = PredictionCache()
    pa = model.predict(a, cache=cache)
    pb = model.predict(b, cache=cache)
    assert pb.malignancy_probability == pytest.approx(model.predict(b).malignancy_probability, abs=1e-6)
    us = a.image("US_L")
    user = np.zeros(us.shape, np.uint8)
    user[0, 5:15, 40:55] = 1
    pu = model.predict(a, lesion_masks={"US_L": user}, cache=cache)
    assert pu.images["US_L"].lesion_mask_source == "user"
    assert pu.malignancy_probability == pytest.approx(
        model.predict(a, lesion_masks={"US_L": user}).malignancy_probability, abs=1e-6)
    assert pa.images["US_L"].lesion_mask_source == "predicted"


def test_batched_fusion_variants_equal_separate_calls(model):
    net = model.network
    study = make_case(3, True)
    batch = collate([inputs_item(prepare_study(study, model.config))])
    with torch.inference_mode():
        enc = net.encode(batch)
        keeps = [("MG", "US", "MR"), ("US", "MR"), ("MG",), ("MR",)]
        out = fuse_variants(net, enc, batch, keeps)
        for k, kept in enumerate(keeps):
            keep = {m: torch.tensor([m in kept]) for m in enc}
            ref = net.fuse(enc, batch, keep)
            assert torch.allclose(out["malignancy_logit"][k], ref["malignancy_logit"][0], atol=1e-5)
            assert torch.allclose(out["subtype_logits"][k], ref["subtype_logits"][0], atol=1e-5)


def test_fold_batch_norm_keeps_the_outputs(model):
    cfg = model.config
    torch.manual_seed(1)
    net = DiagnosisNetwork(cfg).eval()
    for mod in net.modules():  # non-trivial statistics
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    study = make_case(6, True)
    before = DiagnosisModel(net, device="cpu").predict(study)
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.branches.modules())
    assert n_bn > 0
    net.fold_batch_norm()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.branches.modules())
    backbones = [m for m in net.branches.modules() if isinstance(m, Backbone)]
    assert len(backbones) == 6 and all(b.fused for b in backbones)
    after = DiagnosisModel(net, device="cpu").predict(study)
    assert after.malignancy_probability == pytest.approx(before.malignancy_probability, abs=1e-5)
    for k in before.images:
        assert np.abs(after.images[k].lesion_probability - before.images[k].lesion_probability).max() <= 1e-4


def test_mr_sequences_on_one_grid_share_their_maps(model):
    study = make_case(4, True, ("MR",))
    pred = model.predict(study)
    labels = [im.label for im in study.images]
    grids = {}
    for lab in labels:
        im = study.image(lab)
        grids.setdefault((im.shape, im.geometry), []).append(lab)
    for same in grids.values():
        first = pred.images[same[0]]
        for lab in same[1:]:
            assert pred.images[lab].saliency is first.saliency
            assert pred.images[lab].lesion_probability is first.lesion_probability


def test_extent_matches_nonzero():
    rng = np.random.default_rng(0)
    for shape in ((1, 20, 30), (5, 7, 9)):
        m = (rng.random(shape) > 0.97).astype(np.uint8)
        k, j, i = np.nonzero(m)
        assert _extent(m) == f"{i.min()} {i.max()} {j.min()} {j.max()} {k.min()} {k.max()}"
    assert _extent(np.zeros((2, 3, 4), np.uint8)) == "0 -1 0 -1 0 -1"


def test_lesion_probability_maps_are_mapped_when_read_and_match_the_masks(model, tmp_path):
    """The full-size lesion maps are not held through the diagnosis (memory): the report and
    the files need only their maximum and the masks; reading the map gives the same values
    the mask was drawn from, once per grid."""
    from BINDSLib.diagnose import DiagnoseOptions, diagnose_study
    from BINDSLib.model.inference import LazyArray, predicted_lesion_mask

    study = make_case(6, True)
    diagnose_study(model, study, tmp_path / "out", DiagnoseOptions(stage="2", device="cpu", summary_png=False))
    pred = model.predict(study)
    for out in pred.images.values():
        src = out.lesion_probability_source
        assert isinstance(src, LazyArray) and src._value is None  # not mapped yet
    for label, out in pred.images.items():
        lp = out.lesion_probability
        assert lp.dtype == np.float32 and lp.shape == study.image(label).shape
        assert float(lp.max()) == out.lesion_probability_max
        if out.lesion_mask_source == "predicted":
            expected = predicted_lesion_mask(lp, model.config.lesion_threshold, model.config.lesion_mask_mode)
            assert np.array_equal(out.lesion_mask, expected)
        assert out.lesion_probability is lp  # kept once mapped
    groups: dict = {}  # MR sequences on one grid share one map
    for o in pred.images.values():
        if o.modality == "MR":
            groups.setdefault((o.geometry, o.lesion_mask.shape), []).append(o)
    assert any(len(g) > 1 for g in groups.values())
    for g in groups.values():
        assert all(o.lesion_probability is g[0].lesion_probability for o in g)


def test_lazy_array_is_computed_once_whatever_the_threads():
    import threading
    import time

    from BINDSLib.model.inference import LazyArray

    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.05)
        return np.arange(3)

    lazy = LazyArray(compute)
    got = []
    ts = [threading.Thread(target=lambda: got.append(lazy.get())) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert calls == [1] and len(got) == 4 and all(g is got[0] for g in got)
