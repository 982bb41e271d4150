"""The network: modality masking, lesion crops, fusion, and the inference API end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from BINDSLib.model.config import COMBINATIONS, SUBTYPES
from BINDSLib.model.crops import crop, lesion_boxes
from BINDSLib.model.data import collate, inputs_item
from BINDSLib.model.inference import DiagnosisModel
from BINDSLib.model.network import DiagnosisNetwork
from BINDSLib.model.preprocess import prepare_study
from BINDSLib.study import Study
from test_model_cases import make_case, tiny_model


@pytest.fixture(scope="module")
def model() -> DiagnosisModel:
    return tiny_model({"operating_point": {"threshold": 0.4}})


def _batch(study, cfg, **kw):
    return collate([inputs_item(prepare_study(study, cfg, **kw))])


def test_absent_modality_input_changes_nothing(model):
    """Changing (even NaN-filling) the inputs of an absent/dropped modality leaves every
    output unchanged: it is masked out, not zero-filled."""
    net, cfg = model.network, model.config
    study = make_case(3, True)
    full = _batch(study, cfg)
    with torch.inference_mode():
        base = net.fuse(net.encode(full), full, keep={"US": torch.tensor([False])})
        # the US input replaced by garbage, US still dropped from the fusion
        changed = {k: v.clone() for k, v in full.items()}
        changed["US_images"].normal_()
        changed["US_images"][0, 0, 0, 0, 0] = float("nan")
        out = net.fuse(net.encode(changed), changed, keep={"US": torch.tensor([False])})
        # the same as a study that has no US at all
        no_us = _batch(study, cfg, modalities=("MG", "MR"))
        ref = net.fuse(net.encode(no_us), no_us)
    for k in ("malignancy_logit", "subtype_logits"):
        assert torch.equal(base[k], out[k])
        assert torch.allclose(base[k], ref[k], atol=1e-6)


def test_absent_slot_is_masked_within_a_batch(model):
    """A study's result does not depend on the other studies or padded slots of the batch."""
    net, cfg = model.network, model.config
    a, b = make_case(1, True, ("MG", "US")), make_case(2, False, ("US",))
    batch = collate([inputs_item(prepare_study(s, cfg)) for s in (a, b)])
    single = _batch(b, cfg)
    with torch.inference_mode():
        both = net(batch)
        alone = net(single)
    assert torch.allclose(both["malignancy_logit"][1], alone["malignancy_logit"][0], atol=1e-5)


def test_every_combination_gives_a_prediction(model):
    study = make_case(4, True)
    pred = model.predict(study, combinations=True)
    assert set(pred.combination_probabilities) == {"+".join(c) for c in COMBINATIONS}
    for combo in COMBINATIONS:
        p = model.predict(study, modalities=combo, saliency="none")
        assert p.modalities == combo
        assert 0.0 <= p.malignancy_probability <= 1.0
        # the masked-fusion shortcut equals a prediction restricted to the combination
        assert p.malignancy_probability == pytest.approx(pred.combination_probabilities["+".join(combo)], abs=1e-5)
    assert sum(pred.subtype_probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert list(pred.subtype_probabilities) == list(SUBTYPES)
    assert sum(pred.contributions.values()) == pytest.approx(1.0)
    assert set(pred.contributions) == {"MG", "US", "MR"}
    # contributions are leave-one-out: the delta of MG is p(all) - p(US+MR)
    assert pred.contribution_deltas["MG"] == pytest.approx(
        pred.malignancy_probability - pred.combination_probabilities["US+MR"], abs=1e-5)


def test_prediction_maps_lie_on_each_image_grid(model):
    study = make_case(5, True, us_frames=3)
    pred = model.predict(study)
    assert set(pred.images) == {im.label for im in study.images}
    for im in study.images:
        out = pred.images[im.label]
        assert out.lesion_probability.shape == im.shape
        assert out.saliency.shape == im.shape
        assert out.lesion_mask.shape == im.shape and out.lesion_mask.dtype == np.uint8
        assert out.geometry == im.geometry
        assert out.lesion_mask_source == "predicted"
        assert 0.0 <= out.saliency.min() and out.saliency.max() <= 1.0
    assert set(pred.timings_s) >= {"preprocess", "encoders", "fusion", "saliency", "total"}
    doc = pred.to_json()
    assert doc["schema"] == "binds.diagnosis_prediction" and doc["threshold"] == 0.4


def test_user_lesion_mask_replaces_the_prediction(model):
    study = make_case(6, True, ("US", "MR"))
    us = study.image("US_L")
    user = np.zeros(us.shape, np.uint8)
    user[0, 5:15, 40:55] = 1  # deliberately not where the lesion is
    pred = model.predict(study, lesion_masks={"US_L": user, "MR_T2": study.image("MR_T2").lesion_mask})
    assert np.array_equal(pred.images["US_L"].lesion_mask, user)
    assert pred.images["US_L"].lesion_mask_source == "user"
    # the MR mask given on T2 is used for the whole MR input and comes back on every sequence
    assert pred.images["MR_T2"].lesion_mask_source == "user"
    dce1 = pred.images["MR_DCE1"]
    assert dce1.lesion_mask_source == "user"
    ref = study.image("MR_DCE1").lesion_mask
    inter = (dce1.lesion_mask & ref).sum()
    assert 2 * inter / (dce1.lesion_mask.sum() + ref.sum()) > 0.7
    # the crop really follows the user's mask: a different mask changes the prediction
    other = np.zeros_like(user)
    other[0, 30:45, 5:20] = 1
    p2 = model.predict(study, lesion_masks={"US_L": other}, modalities=("US",))
    p1 = model.predict(study, lesion_masks={"US_L": user}, modalities=("US",))
    assert p1.malignancy_probability != p2.malignancy_probability


def test_lesion_boxes_and_crop():
    region = torch.zeros(1, 1, 40, 60)
    region[0, 0, 10:20, 30:40] = 1.0  # rows 10-19, cols 30-39
    centre, half = lesion_boxes(region, threshold=0.5, margin=0.0, min_fraction=0.0)
    # x = cols: centre at col 34.5 -> normalised 2 * 35 / 60 - 1
    assert centre[0, 0].item() == pytest.approx(2 * 35 / 60 - 1)
    assert centre[0, 1].item() == pytest.approx(2 * 15 / 40 - 1)
    assert half[0, 0].item() == pytest.approx(10 / 60) and half[0, 1].item() == pytest.approx(10 / 40)
    image = torch.zeros(1, 1, 40, 60)
    image[0, 0, 10:20, 30:40] = torch.arange(10.0)[None, :]  # a ramp across the box's columns
    out = crop(image, centre, half, (10, 10))
    assert torch.allclose(out[0, 0], image[0, 0, 10:20, 30:40], atol=1e-5)
    # an empty map: a box around its maximum, of the minimum size
    empty = torch.zeros(1, 1, 40, 60)
    empty[0, 0, 5, 7] = 0.1
    c2, h2 = lesion_boxes(empty, min_fraction=0.25)
    assert c2[0, 0].item() == pytest.approx(2 * 7.5 / 60 - 1)
    assert h2[0, 0].item() == pytest.approx(h2[0, 1].item() * 40 / 60)  # square in pixels


def test_lesion_boxes_3d():
    region = torch.zeros(2, 1, 8, 16, 16)
    region[0, 0, 2:4, 4:8, 4:8] = 1
    centre, half = lesion_boxes(region, margin=0.0, min_fraction=0.0)
    assert centre.shape == (2, 3)
    assert centre[0, 2].item() == pytest.approx(2 * 3 / 8 - 1)  # z: slices 2-3


def test_channels_last_gives_the_same_prediction(model):
    study = make_case(7, True)
    before = model.predict(study, saliency="none").malignancy_probability
    net = DiagnosisNetwork(model.config)
    net.load_state_dict(model.network.state_dict())
    after = DiagnosisModel(net.use_channels_last(), device="cpu").predict(study, saliency="none")
    assert after.malignancy_probability == pytest.approx(before, abs=1e-5)


@pytest.mark.parametrize("level,stride,width,convs", [(1, 4, 16, 1), (0, 2, 16, 1), (1, 4, 24, 3),
                                                     (2, 8, 16, 1)])
def test_locator_head_resolution_width_and_depth(level, stride, width, convs):
    from BINDSLib.model.config import EncoderConfig
    from BINDSLib.model.encoders import LesionLocator

    loc = LesionLocator(2, 1, EncoderConfig(channels=(4, 8, 8, 8), head_level=level,
                                            head_channels=width, head_convs=convs))
    seen = []
    loc.head.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].shape, out.shape)))
    logits, feats, _ = loc(torch.zeros(1, 1, 32, 48))
    (n, c, *grid), _ = seen[0]
    assert tuple(grid) == (32 // stride, 48 // stride) and c == width  # the head's input
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in loc.head) == convs
    assert logits.shape[2:] == (32, 48) and feats.shape[2:] == (2, 3)
    with pytest.raises(ValueError, match="head_level"):
        EncoderConfig(head_level=3)
    with pytest.raises(ValueError, match="head_channels"):
        EncoderConfig(head_convs=0)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_unet_decoder_merges_every_level_from_coarse_to_fine(level):
    from BINDSLib.model.config import EncoderConfig
    from BINDSLib.model.encoders import LesionLocator

    torch.manual_seed(0)
    loc = LesionLocator(2, 1, EncoderConfig(channels=(4, 8, 8, 8), head_level=level, head_channels=8,
                                            head_decoder="unet"))
    seen = []
    for m in loc.merge:
        m.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape[1:])))
    logits, feats, _ = loc(torch.randn(2, 1, 32, 48))
    finest = 2 ** (level + 1)  # the stride of the finest stage in the head
    assert seen == [(8, 32 // s, 48 // s) for s in (8, 4, 2) if s >= finest]
    assert logits.shape == (2, 1, 32, 48) and feats.shape[2:] == (2, 3)
    logits.square().mean().backward()
    for lat in loc.lateral:  # every stage reaches the lesion map
        assert lat.weight.grad.abs().sum() > 0
    assert LesionLocator(2, 1, EncoderConfig(channels=(4, 8, 8, 8))).merge is None
    with pytest.raises(ValueError, match="head_decoder"):
        EncoderConfig(head_decoder="fpn")


def test_unet_decoder_survives_batch_norm_folding():
    from BINDSLib.model.config import DiagnosisConfig
    from BINDSLib.model.network import DiagnosisNetwork

    torch.manual_seed(2)
    cfg = DiagnosisConfig(locator_2d={"channels": [4, 8, 8, 8], "head_level": 0, "head_channels": 8,
                                      "head_convs": 2, "head_decoder": "unet"})
    net = DiagnosisNetwork(cfg).eval()
    loc = net.branches["US"].locator
    for mod in loc.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        before = loc(x)[0]
        net.fold_batch_norm()
        after = loc(x)[0]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loc.merge.modules())
    assert torch.allclose(before, after, atol=1e-4)


def test_fused_backbone_runs_the_oneDNN_path_only_without_autograd(monkeypatch):
    from BINDSLib.model.config import DiagnosisConfig, EncoderConfig
    from BINDSLib.model.encoders import Backbone
    from BINDSLib.model.network import DiagnosisNetwork

    torch.manual_seed(3)
    net = DiagnosisNetwork(DiagnosisConfig(locator_2d=EncoderConfig(channels=(4, 8, 8, 8)))).eval()
    bb = net.branches["US"].locator.backbone
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        before = bb(x)[-1]
    net.fold_batch_norm()
    assert bb.fused
    calls = []
    monkeypatch.setattr(Backbone, "_forward_fused",
                        lambda self, t, orig=Backbone._forward_fused: calls.append(1) or orig(self, t))
    with torch.no_grad():
        fused = bb(x)[-1]
    assert calls and torch.allclose(fused, before, atol=1e-5)
    from BINDSLib import fusedconv
    if fusedconv._HAVE_OP:  # the oneDNN operator itself ran, not the plain fallback
        assert all(fusedconv.ENABLED[(f, 4)] for f in ("unary", "binary"))
    calls.clear()
    grad_x = x.clone().requires_grad_(True)
    plain = bb(grad_x)[-1]  # autograd (Grad-CAM): the module path, gradients reach the input
    plain.sum().backward()
    assert not calls and torch.allclose(plain.detach(), before, atol=1e-5)
    assert grad_x.grad is not None and grad_x.grad.abs().sum() > 0


@pytest.mark.parametrize("dims,shape,kernel,batch", [
    (3, (19, 23, 17), 3, 1), (3, (20, 16, 14), 7, 2), (2, (37, 29), 7, 3), (2, (8, 9), 3, 1)])
def test_stem_in_slabs_gives_the_whole_stem(dims, shape, kernel, batch, monkeypatch):
    """The slabbed stem (conv + ReLU + max-pool, first spatial axis in pieces) equals the
    whole call for odd and even sizes, both stem kernels and batches; slabs of one pooled
    row are the hardest case (every slab needs padding or halo rows)."""
    from BINDSLib.fusedconv import channels_last
    from BINDSLib.model import encoders

    torch.manual_seed(4)
    conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(3, 5, kernel, stride=2, padding=kernel // 2)
    pool = (torch.nn.MaxPool3d if dims == 3 else torch.nn.MaxPool2d)(3, stride=2, padding=1)
    x = torch.randn(batch, 3, *shape).contiguous(memory_format=channels_last(dims + 2))
    with torch.no_grad():
        whole = pool(torch.relu(conv(x)))

        def conv_relu(t, pad):
            return torch.relu((F.conv3d if dims == 3 else F.conv2d)(t, conv.weight, conv.bias, conv.stride, pad))

        row = encoders._stem_bytes(conv, x) / ((shape[0] + 2 * (kernel // 2) - kernel) // 2 + 1)
        for limit in (1, int(row * 2 * 2.5), 1 << 40):  # one pooled row, a few, all at once
            monkeypatch.setattr(encoders, "STEM_SLAB_BYTES", limit)
            got = encoders._stem_in_slabs(conv_relu, conv, pool, x)
            assert got.shape == whole.shape
            assert torch.allclose(got, whole, atol=1e-6), limit
            assert got.is_contiguous(memory_format=channels_last(dims + 2))


def test_fused_backbone_slabs_a_large_stem_with_the_same_features(monkeypatch):
    """``Backbone`` takes the slabbed stem above ``STEM_SLAB_BYTES`` (fused path): same features."""
    from BINDSLib.model import encoders
    from BINDSLib.model.config import DiagnosisConfig, EncoderConfig

    torch.manual_seed(5)
    cfg = DiagnosisConfig(locator_3d=EncoderConfig(channels=(4, 8, 8, 8), stem_kernel=3, max_pool=True))
    net = DiagnosisNetwork(cfg).eval()
    net.fold_batch_norm()
    bb = net.branches["MR"].locator.backbone
    x = torch.randn(1, 7, 24, 20, 18)
    calls = []
    monkeypatch.setattr(encoders, "_stem_in_slabs",
                        lambda *a, orig=encoders._stem_in_slabs: calls.append(1) or orig(*a))
    with torch.no_grad():
        whole = bb(x)
        assert not calls  # far below the default limit
        monkeypatch.setattr(encoders, "STEM_SLAB_BYTES", 1)
        slabbed = bb(x)
    assert calls == [1]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole, slabbed))


def test_release_images_pops_them_and_changes_nothing(model):
    """``encode(release_images=True)`` (inference) pops each modality's images from the batch
    dict, and the encodings are those of a normal call."""
    net, cfg = model.network, model.config
    batch = _batch(make_case(7, True, ("US", "MR")), cfg)
    with torch.inference_mode():
        ref = net.encode(dict(batch))
        feed = dict(batch)
        got = net.encode(feed, release_images=True)
    assert not any(k.endswith("_images") for k in feed) and "MR_masks" in feed
    for m in ref:
        assert torch.equal(ref[m].lesion_logits, got[m].lesion_logits)
        assert torch.equal(ref[m].tokens, got[m].tokens)
        assert torch.equal(ref[m].boxes[0], got[m].boxes[0])


def test_predict_lets_the_images_go_unless_they_are_read_again(model, monkeypatch):
    """After ``predict`` the cache holds no image batch (Grad-CAM keeps them); a mirrored
    modality (``tta_flip``) is encoded without release, so its flipped pass can read them."""
    study = make_case(8, True, ("US", "MR"))
    released = []
    orig = DiagnosisNetwork.encode
    monkeypatch.setattr(DiagnosisNetwork, "encode",
                        lambda self, batch, cfp=None, release_images=False:
                        released.append((tuple(k for k in batch if k.endswith("_images")), release_images))
                        or orig(self, batch, cfp, release_images))
    cache = model.prediction_cache()
    p = model.predict(study, cache=cache)
    assert {r for _, r in released} == {True}
    assert not any(k.endswith("_images") for w in cache.work.values() for k in w.batch)
    released.clear()
    g = model.predict(study, saliency="gradcam")
    assert {r for _, r in released} == {False}
    assert np.isfinite(g.malignancy_probability) and np.isfinite(p.malignancy_probability)
    released.clear()
    flip = tiny_model(tta_flip=True)
    f = flip.predict(study)
    assert sorted(released) == [(("MR_images",), True), (("US_images",), False)]
    assert np.isfinite(f.malignancy_probability)


def test_head_refine_corrects_the_logits_at_the_input_resolution():
    """``head_refine``: starts as a no-op (zero last layer), then changes the logits at the
    input resolution (finer than the head's level), survives BatchNorm folding, and is
    checked in the config."""
    from BINDSLib.model.config import DiagnosisConfig, EncoderConfig

    torch.manual_seed(6)
    base = dict(channels=(4, 8, 8, 8), head_channels=8, head_decoder="unet")
    plain = DiagnosisNetwork(DiagnosisConfig(locator_2d=EncoderConfig(**base))).eval()
    net = DiagnosisNetwork(DiagnosisConfig(locator_2d=EncoderConfig(**base, head_refine=4))).eval()
    loc = net.branches["US"].locator
    missing = net.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith(("branches.MG.locator.refine", "branches.US.locator.refine"))
                           for k in missing)
    x = torch.randn(2, 1, 64, 48)
    with torch.no_grad():
        assert torch.equal(loc(x)[0], plain.branches["US"].locator(x)[0])  # zero-initialised
        loc.refine[-1].weight.normal_()
        for mod in loc.refine.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
        before = loc(x)[0]
        diff = (before - plain.branches["US"].locator(x)[0]).abs()
        # a correction pixel by pixel, not a smooth up-sampled one: neighbours differ
        assert diff.max() > 1e-3 and (diff[..., 1:] - diff[..., :-1]).abs().max() > 1e-4
        net.fold_batch_norm()
        after = loc(x)[0]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loc.refine.modules())
    assert torch.allclose(before, after, atol=1e-4)
    with pytest.raises(ValueError, match="head_refine"):
        EncoderConfig(head_refine=-1)


def test_collate_share_takes_the_arrays_of_one_study(model):
    prep = prepare_study(make_case(3), model.config)
    item = inputs_item(prep)
    shared, copied = collate([item], share=True), collate([item])
    assert shared.keys() == copied.keys()
    for k in shared:
        assert torch.equal(shared[k], copied[k]), k
    for m in prep.inputs:
        # the same memory as the prepared array: no copy of it
        assert np.shares_memory(shared[f"{m}_images"].numpy(), prep.inputs[m].images)
        assert not np.shares_memory(copied[f"{m}_images"].numpy(), prep.inputs[m].images)
    # two studies are padded into a new batch as before
    two = collate([item, item], share=True)
    assert not np.shares_memory(two["MR_images"].numpy(), prep.inputs["MR"].images)
    assert torch.equal(two["MR_images"][1], copied["MR_images"][0])


def test_finding_logits_pool_cells_and_average_the_largest():
    from BINDSLib.model.network import finding_logits, study_max

    x = torch.full((2, 1, 32, 32), -4.0)
    x[0, 0, :16, :16] = 2.0  # one whole 16-pixel cell at 2
    x[0, 0, 16:24, 16:32] = 6.0  # half of another cell at 6: that cell averages 1
    got = finding_logits(x, cell=16, topk=2)
    assert got[0].item() == pytest.approx((2.0 + 1.0) / 2)
    assert got[1].item() == pytest.approx(-4.0)  # a flat map is its own value
    assert finding_logits(x, cell=16, topk=1)[0].item() == pytest.approx(2.0)
    # k larger than the number of cells, cells larger than the map, 3D maps
    assert finding_logits(x, cell=64, topk=9)[0].item() == pytest.approx(float(x[0].mean()))
    v = torch.zeros((1, 1, 4, 8, 8))
    v[0, 0, 1, 2, 3] = 64.0
    assert finding_logits(v, cell=4, topk=1).item() == pytest.approx(64.0 / (4 * 4 * 4))
    # the study maximum keeps the gradient of the winning row only
    vals = torch.tensor([1.0, 3.0, 2.0, 5.0], requires_grad=True)
    out = study_max(vals, torch.tensor([0, 0, 2, 2]), 3)
    assert out[0].item() == 3.0 and out[2].item() == 5.0 and out[1].item() == float("-inf")
    out[[0, 2]].sum().backward()
    assert vals.grad.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_prediction_finding_probability_is_the_largest_image_finding_logit(model):
    from BINDSLib.model.network import finding_logits

    study = make_case(5, True, ("MG", "US"))
    pred = model.predict(study, saliency="none")
    cfg = model.config
    batch = _batch(study, cfg)
    with torch.inference_mode():
        enc = model.network.encode(batch)
    best = max(float(finding_logits(e.lesion_logits, cfg.finding_cell, cfg.finding_topk).max())
               for e in enc.values())
    assert pred.finding_probability == pytest.approx(1 / (1 + np.exp(-best)), rel=1e-5)
    assert pred.to_json()["finding_probability"] == pred.finding_probability
    # restricted to one modality, only its images count
    us_only = model.predict(study, modalities=("US",), saliency="none")
    us_best = float(finding_logits(enc["US"].lesion_logits, cfg.finding_cell, cfg.finding_topk).max())
    assert us_only.finding_probability == pytest.approx(1 / (1 + np.exp(-us_best)), rel=1e-5)
    # a bundle that calibrated its finding logit divides it by that temperature, adds the bias
    calibrated = tiny_model({"calibration": {"temperature": 1.0, "finding_temperature": 2.5}})
    assert calibrated.finding_temperature == 2.5 and calibrated.finding_bias == 0.0
    assert calibrated.predict(study, saliency="none").finding_probability == pytest.approx(
        1 / (1 + np.exp(-best / 2.5)), rel=1e-5)
    platt = tiny_model({"calibration": {"temperature": 1.0, "finding_temperature": 2.5, "finding_bias": 0.7}})
    got = platt.predict(study, saliency="none")
    assert got.finding_logit == pytest.approx(best, rel=1e-5)
    assert got.finding_probability == pytest.approx(1 / (1 + np.exp(-(best / 2.5 + 0.7))), rel=1e-5)


def test_bilateral_offsets_shift_each_image_by_the_other_breast():
    from BINDSLib.model.network import bilateral_offsets, study_finding_logits

    got = bilateral_offsets(torch.tensor([1.0, float("nan"), -2.0]), weight=0.5, reference=-1.0)
    assert got.tolist() == pytest.approx([-1.0, 0.0, 0.5])  # -0.5 (c + 1); no other breast: 0

    class Enc:  # the two fields study_finding_logits reads
        def __init__(self, values, study):
            self.lesion_logits = torch.tensor(values).view(-1, 1, 1, 1)
            self.index = torch.tensor([[s, 0] for s in study])

    enc = {"MG": Enc([2.0, 1.0, 0.5], [0, 0, 1])}
    plain = study_finding_logits(enc, 2, 16, 1)["MG"]
    assert plain.tolist() == [2.0, 0.5]
    shifted = study_finding_logits(enc, 2, 16, 1, {"MG": torch.tensor([-3.0, 0.0, 1.0])})["MG"]
    assert shifted.tolist() == [1.0, 1.5]  # the study maximum is taken after the shift


def test_prediction_compares_each_mammogram_with_the_other_breast():
    """With ``bilateral_weight`` w, an image's finding logit f becomes f - w (c - r): c the other
    breast's film of the same view (from the study or its comparison images), r the bundle's
    ``finding_reference``; a film without the other breast keeps f."""
    from BINDSLib.model.network import finding_logits

    study = make_case(5, True, ("MG",))  # L_CC, L_MLO (with the lesion), R_CC, R_MLO
    plain = tiny_model()
    cfg = plain.config
    prep = prepare_study(study, cfg)
    with torch.inference_mode():
        enc = plain.network.encode(collate([inputs_item(prep)]))["MG"]
    f = finding_logits(enc.lesion_logits, cfg.finding_cell, cfg.finding_topk).tolist()
    f = {prep.inputs["MG"].sources[int(s)][0].label: v for s, v in zip(enc.index[:, 1].tolist(), f)}
    assert len(f) == 4
    w, r = 0.6, -0.7
    model = tiny_model({"calibration": {"temperature": 1.0, "finding_reference": r}}, bilateral_weight=w)
    assert model.finding_reference == r
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    other = {"L": "R", "R": "L"}
    expected = {k: v - w * (f[f"MG_{other[k[3]]}_{k[5:]}"] - r) for k, v in f.items()}
    pred = model.predict(study, saliency="none")
    assert pred.finding_probability == pytest.approx(sig(max(expected.values())), rel=1e-4)
    assert pred.finding_compared is True and pred.to_json()["finding_compared"] is True
    assert plain.predict(study, saliency="none").finding_compared is None  # no comparison to make
    assert sorted(n for n in pred.notes if "other breast" in n) == [
        f"{k}: finding score compared with the other breast (MG_{other[k[3]]}_{k[5:]}; bilateral_weight 0.6)"
        for k in sorted(f)]
    # one film, the other breast given only for comparison: same view preferred, encoded alone
    images = {im.label: im for im in study.images}
    single = Study("one", images=[images["MG_L_MLO"]], comparison=[images["MG_R_CC"], images["MG_R_MLO"]])
    pred = model.predict(single, saliency="none")
    assert pred.finding_probability == pytest.approx(sig(expected["MG_L_MLO"]), rel=1e-4)
    assert list(pred.images) == ["MG_L_MLO"]  # comparison images are never outlined
    assert pred.finding_compared is True
    assert any("MG_R_MLO (comparison image)" in n and "MG_R_CC" not in n for n in pred.notes)
    # another view only: that one; no other breast at all: the plain logit
    only_cc = Study("cc", images=[images["MG_L_MLO"]], comparison=[images["MG_R_CC"]])
    assert model.predict(only_cc, saliency="none").finding_probability == pytest.approx(
        sig(f["MG_L_MLO"] - w * (f["MG_R_CC"] - r)), rel=1e-4)
    alone = Study("alone", images=[images["MG_L_MLO"], images["MG_L_CC"]])
    pred = model.predict(alone, saliency="none")
    assert pred.finding_probability == pytest.approx(sig(max(f["MG_L_MLO"], f["MG_L_CC"])), rel=1e-4)
    assert not any("score compared with the other breast" in n for n in pred.notes) and pred.finding_compared is False
    assert sorted(n for n in pred.notes if "not compared" in n) == [
        f"{k}: finding score not compared with the other breast (no film of it in the study or its comparison images)"
        for k in ("MG_L_CC", "MG_L_MLO")]
    # the malignancy probability does not depend on the comparison images
    assert model.predict(single, saliency="none").malignancy_probability == pytest.approx(
        model.predict(Study("one", images=[images["MG_L_MLO"]]), saliency="none").malignancy_probability)


def test_validation_logits_are_the_bundles_own_with_the_mirrored_pass():
    """With ``tta_flip`` the logits the calibration and operating points are fitted on
    (``predict_samples``) average the mirrored ultrasound pass as ``predict`` does; without
    the mirror they differ, which is what made the calibration fit other logits."""
    from BINDSLib.model.data import make_sample
    from BINDSLib.model.train import predict_samples

    studies = [make_case(s, s % 2 == 0, ("US", "MR")) for s in range(3)]
    flip = tiny_model(tta_flip=True)
    got = predict_samples(flip.network, [make_sample(st, flip.config) for st in studies], "cpu", batch_size=2)
    want = [flip.predict(st, saliency="none") for st in studies]
    np.testing.assert_allclose(got["logit"], [p.malignancy_logit for p in want], atol=1e-4)
    np.testing.assert_allclose(got["finding"], [p.finding_logit for p in want], atol=1e-4)
    plain = tiny_model()  # the same weights, no mirror
    alone = predict_samples(plain.network, [make_sample(st, plain.config) for st in studies], "cpu", batch_size=2)
    assert np.abs(alone["logit"] - got["logit"]).max() > 1e-3
