"""Saliency: alignment map values, shape and geometry on the image grid, Grad-CAM option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from BINDSLib.model.inference import DiagnosisModel
from BINDSLib.model.network import DiagnosisNetwork
from BINDSLib.model.saliency import alignment_map, alignment_saliency, gradcam_saliency
from test_model_cases import make_case, tiny_config


def test_alignment_map_is_cosine_with_the_prototype():
    proto = torch.tensor([1.0, 0.0])
    feats = torch.zeros(1, 2, 2, 3)
    feats[0, :, 0, 0] = torch.tensor([3.0, 0.0])   # aligned: 1
    feats[0, :, 0, 1] = torch.tensor([0.0, 2.0])   # orthogonal: 0
    feats[0, :, 1, 2] = torch.tensor([-1.0, 0.0])  # opposite: -1
    m = alignment_map(feats, proto)
    assert m.shape == (1, 1, 2, 3)
    assert m[0, 0, 0, 0] == pytest.approx(1.0) and m[0, 0, 0, 1] == pytest.approx(0.0)
    assert m[0, 0, 1, 2] == pytest.approx(-1.0)
    up = alignment_saliency(feats, proto, (8, 12))
    assert up.shape == (1, 1, 8, 12)
    assert torch.argmax(up).item() == 0  # the aligned corner stays the maximum


def test_saliency_peak_lands_in_the_lesion_on_an_oblique_image(monkeypatch):
    """A saliency peak placed on the model grid at the lesion's physical position comes back
    inside the lesion on the image's own (oblique, anisotropic) grid."""
    import BINDSLib.model.saliency as sal_mod
    from BINDSLib.model.preprocess import prepare_study

    torch.manual_seed(0)
    cfg = tiny_config()
    model = DiagnosisModel(DiagnosisNetwork(cfg), device="cpu")
    study = make_case(0, True, ("US",))
    image = study.image("US_L")
    grid = prepare_study(study, cfg).inputs["US"].grids[0]
    centre = image.geometry.index_to_lps(np.argwhere(image.lesion_mask[0]).mean(0)[::-1].tolist() + [0])
    g = grid.geometry
    ijk = np.linalg.solve(g.direction_matrix * np.array(g.spacing_mm), centre - np.array(g.origin_mm))

    def fake(align_map, prototype, size):
        rr, cc = np.mgrid[:size[0], :size[1]]
        peak = np.exp(-((cc - ijk[0]) ** 2 + (rr - ijk[1]) ** 2) / 4.0)
        return torch.as_tensor(peak, dtype=torch.float32)[None, None].repeat(align_map.shape[0], 1, 1, 1)

    monkeypatch.setattr(sal_mod, "alignment_saliency", fake)
    out = model.predict(study).images["US_L"]
    assert out.saliency.shape == image.shape and out.geometry == image.geometry
    peak = np.unravel_index(np.argmax(out.saliency), image.shape)
    assert image.lesion_mask[peak] == 1
    lesion_c = np.argwhere(image.lesion_mask).mean(0)
    assert np.abs(np.array(peak) - lesion_c).max() <= 1.0


def test_gradcam_option_shape_and_range():
    torch.manual_seed(1)
    net = DiagnosisNetwork(tiny_config())
    net.pathology.prototype_malignant.copy_(torch.randn(net.config.align_dim))
    model = DiagnosisModel(net, device="cpu")
    study = make_case(1, True, ("MG", "MR"))
    pred = model.predict(study, saliency="gradcam")
    for im in study.images:
        s = pred.images[im.label].saliency
        assert s.shape == im.shape and np.isfinite(s).all()
        assert s.min() >= 0.0 and s.max() <= 1.0 + 1e-5
    # the hooks of MONAI's GradCAM stay on a copy, not on the model
    assert not net.branches["MG"].locator.backbone.net.layer4._forward_hooks
    x = torch.rand(2, 1, 64, 48)
    cam = gradcam_saliency(net.branches["MG"], x, net.pathology.prototype_malignant)
    assert cam.shape == (2, 1, 64, 48)


@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("method", ["alignment", "gradcam"])
def test_mammogram_saliency_points_at_the_breast_only(monkeypatch, method, gate):
    """A saliency map that is high everywhere comes back 0 on each mammogram's film label and
    background (outside its own breast and margin), also through the lesion gate, and
    unchanged on the breast; an ultrasound image of the same study, which has no breast region,
    keeps it everywhere. Two films in two slots, the second stored with its chest wall on the
    right (mirrored on the model grid), each masked by its own breast."""
    import BINDSLib.model.saliency as sal_mod
    from BINDSLib.study import Geometry, Image, Modality, Role, Study
    from test_model_preprocess import _film

    def flat(size, n):
        return torch.ones(n, 1, *size)

    if method == "alignment":
        monkeypatch.setattr(sal_mod, "alignment_saliency", lambda a, p, size: flat(size, a.shape[0]))
    else:
        monkeypatch.setattr(sal_mod, "gradcam_saliency", lambda b, x, p: flat(x.shape[2:], x.shape[0]))
    torch.manual_seed(0)
    cfg = tiny_config(mg_max_views=2, saliency_lesion_gate=gate)
    model = DiagnosisModel(DiagnosisNetwork(cfg), device="cpu")
    left, disc = _film()
    # a smaller breast at the right edge (rows 60-140, 50 columns), a label at the top left
    rr, cc = np.mgrid[:200, :160]
    small = ((rr - 100) / 40.0) ** 2 + ((159 - cc) / 50.0) ** 2 <= 1
    right = np.where(small, np.float32(0.5), np.float32(0.0))
    right[8:18, 8:20] = 1.0
    us = make_case(0, True, ("US",)).image("US_L")
    geom = Geometry((0.4, 0.4, 1.0))
    study = Study("films", [Image(left[None] * 1000, geom, Role(Modality.MG, laterality="L", view="MLO")),
                            Image(np.ascontiguousarray(right)[None] * 1000, geom,
                                  Role(Modality.MG, laterality="R", view="CC")), us])
    pred = model.predict(study, saliency=method)
    assert set(pred.images) == {"MG_L_MLO", "MG_R_CC", "US_L"}
    inner = ((rr - 100) / 75.0) ** 2 + (cc / 85.0) ** 2 <= 1
    floor = 0.0 if gate else 0.99  # gated: the lesion probability (> 0) times 1
    s = pred.images["MG_L_MLO"].saliency[0]
    assert s[8:18, 140:152].max() == 0.0  # the film label
    assert s[100, 130:].max() == 0.0 and s[190:, 120:].max() == 0.0  # the background
    assert s[inner].min() > floor and s[disc].min() > floor
    r = pred.images["MG_R_CC"].saliency[0]
    assert r[8:18, 8:20].max() == 0.0 and r[100, :90].max() == 0.0  # its label and background
    assert r[20:45, 130:].max() == 0.0  # where the first film's breast lies: not this film's
    assert r[((rr - 100) / 36.0) ** 2 + ((159 - cc) / 46.0) ** 2 <= 1].min() > floor
    assert pred.images["US_L"].saliency.min() > floor
