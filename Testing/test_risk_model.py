"""Risk network, preprocessing, calibration and bundle: behaviour that must hold for any weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from BINDSLib.errors import InputError
from BINDSLib.risk.calibration import Calibrator
from BINDSLib.risk.config import PRESETS, RiskConfig, load_config_file, preset
from BINDSLib.risk.network import AdditiveHazard, RiskNetwork
from BINDSLib.risk.preprocess import canonical_orientation, normalise_intensity, prepare_exam
from test_risk_support import make_exam, tiny_bundle

TINY = PRESETS["tiny"]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 3.0), input_scale=st.floats(0.01, 100.0),
       aggregator=st.sampled_from(["transformer", "mean"]))
@example(seed=12654, scale=1.9581991249536317, input_scale=9.0, aggregator="mean")  # two equal logits
def test_cumulative_risk_is_monotone_for_random_weights_and_inputs(seed, scale, input_scale, aggregator):
    torch.manual_seed(seed)
    cfg = RiskConfig(**{**TINY.to_json(), "aggregator": aggregator})
    net = RiskNetwork(cfg).eval()
    with torch.no_grad():  # random, large weights: monotonicity must not depend on training
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * (scale if p.ndim > 1 else 1.0))
    x = torch.randn(3, 4, 1, *cfg.input_size) * input_scale
    mask = torch.rand(3, 4) > 0.4
    mask[:, 0] |= ~mask.any(dim=1)  # at least one view per exam
    with torch.no_grad():
        out = net(x, mask)
    for logits in (out.exam_logits, out.breast_logits[:, 0], out.breast_logits[:, 1]):
        assert torch.isfinite(logits).all()
        assert (torch.diff(logits, dim=-1) >= 0).all()  # softplus may underflow to +0
        # the risks as inference reports them (not torch.sigmoid: its vectorised and scalar
        # paths can round two equal logits one ulp apart, depending on their position)
        probs = Calibrator("none").apply(logits.numpy())
        assert (np.diff(probs, axis=-1) >= 0).all()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-8, 8), min_size=5, max_size=5),
       st.lists(st.tuples(st.floats(0.05, 5), st.floats(-5, 5)), min_size=5, max_size=5))
def test_calibrated_risk_stays_non_decreasing_in_year(logits, ab):
    z = np.sort(np.asarray(logits))[None]
    cal = Calibrator("platt", [{"year": k + 1, "a": a, "b": b} for k, (a, b) in enumerate(ab)])
    p = cal.apply(z)
    assert np.all(np.diff(p, axis=-1) >= 0)
    assert np.all((p > 0) & (p < 1))


def test_additive_hazard_is_base_plus_cumulative_softplus():
    head = AdditiveHazard(3, 5)
    h = torch.randn(2, 3)
    expected = head.base_hazard_fc(h) + torch.cumsum(torch.nn.functional.softplus(head.hazard_fc(h)), -1)
    assert torch.allclose(head(h), expected)


def test_masked_view_content_does_not_change_the_output():
    torch.manual_seed(0)
    net = RiskNetwork(TINY).eval()
    x = torch.rand(2, 4, 1, *TINY.input_size)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    y = x.clone()
    y[0, 3] = torch.randn_like(y[0, 3]) * 100
    y[1, 1] = 7.0
    with torch.no_grad():
        a, b = net(x, mask), net(y, mask)
    assert torch.allclose(a.exam_logits, b.exam_logits, atol=1e-6)
    assert torch.allclose(a.breast_logits, b.breast_logits, atol=1e-6)


def test_exam_without_any_view_is_refused():
    net = RiskNetwork(TINY).eval()
    with pytest.raises(ValueError, match="at least one present view"):
        net(torch.zeros(1, 4, 1, *TINY.input_size), torch.zeros(1, 4, dtype=torch.bool))


def test_prepare_exam_orients_every_breast_chest_wall_left_and_normalises():
    study = make_exam(3)  # right breast stored with its chest wall at the right
    prep = prepare_exam(study, TINY)
    assert prep.images.shape == (4, 1, *TINY.input_size) and prep.images.dtype == np.float32
    assert prep.view_mask.all() and prep.warnings == []
    third = TINY.input_size[1] // 3
    for v in range(4):
        img = prep.images[v, 0]
        assert img[:, :third].mean() > img[:, -third:].mean() + 0.3
        assert 0.0 <= img.min() and img.max() <= 1.0


def test_a_view_stored_mirrored_is_flipped_back():
    left_view = np.zeros((10, 12))
    left_view[:, 8:] = 1.0  # chest wall at the right although it is a left breast
    out = canonical_orientation(left_view, "L")
    assert out[:, :4].mean() == 1.0 and out[:, 8:].mean() == 0.0
    assert np.array_equal(canonical_orientation(out, "L"), out)


def test_normalise_intensity_maps_percentiles_and_handles_constant_images():
    x = np.arange(1000, dtype=np.float32).reshape(20, 50)
    y = normalise_intensity(x, (0.0, 100.0))
    assert y.min() == 0.0 and y.max() == 1.0
    assert np.all(normalise_intensity(np.full((4, 4), 5.0), (1, 99)) == 0)


def test_missing_views_are_masked_with_a_warning(tmp_path):
    from BINDSLib.risk.inference import RiskModel

    model = RiskModel.from_bundle(tiny_bundle(tmp_path / "b"), device="cpu")
    risk = model.score_exam(make_exam(4, drop=[("R", "CC"), ("R", "MLO")]))
    assert risk.breast_risk["R"] is None and risk.breast_risk["L"] is not None
    assert risk.views_present == ("L-CC", "L-MLO")
    assert any("missing view(s) R-CC, R-MLO" in w for w in risk.warnings)
    assert len(risk.cumulative_risk) == 5 and all(np.diff(risk.cumulative_risk) >= 0)
    with pytest.raises(InputError, match="no standard mammography view"):
        model.score_exam(make_exam(5, drop=[("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]))
    # a blank or tiny view has nothing to read: scored as missing, not as an image
    exam = make_exam(6)
    blank, tiny = exam.images[2], exam.images[3]  # R-CC, R-MLO
    blank.voxels = np.zeros_like(blank.voxels)
    tiny.voxels = tiny.voxels[:, :6, :5].copy()
    risk = model.score_exam(exam)
    assert risk.views_present == ("L-CC", "L-MLO") and risk.breast_risk["R"] is None
    assert any(f"{blank.label} is constant: left out" in w for w in risk.warnings)
    assert any(f"{tiny.label} is 6 x 5 pixels: left out" in w for w in risk.warnings)


def test_bundle_round_trip_gives_the_network_outputs_and_pseudonymises(tmp_path):
    from BINDSLib.bundle import load_bundle
    from BINDSLib.risk.inference import RiskModel

    path = tiny_bundle(tmp_path / "b", seed=3)
    meta = load_bundle(path).binds
    assert meta["kind"] == "risk" and meta["thresholds"]["supplemental_mri_5y"] == 0.017
    assert meta["input_size"] == {"rows": 64, "cols": 48}
    model = RiskModel.from_bundle(path, device="cpu")
    study = make_exam(6)
    prep = prepare_exam(study, model.config)
    with torch.no_grad():
        ref = torch.sigmoid(model.network(torch.from_numpy(prep.images[None]),
                                          torch.from_numpy(prep.view_mask[None])).exam_logits)
    risk = model.score_exam(study)
    assert np.allclose(risk.cumulative_risk, ref[0].numpy(), atol=1e-6)
    assert risk.exam_id.startswith("anon-") and "exam-6" not in risk.exam_id
    assert model.score_exam(study, keep_identifiers=True).exam_id == "exam-6"


def test_config_presets_json_round_trip_and_validation(tmp_path):
    for name, cfg in PRESETS.items():
        assert RiskConfig.from_json(cfg.to_json()) == cfg
    assert preset("mirai").input_size == (2048, 1664) and preset("mirai").encoder == "resnet18"
    with pytest.raises(ValueError, match="unknown risk preset"):
        preset("nope")
    with pytest.raises(ValueError, match="encoder"):
        RiskConfig(encoder="vit")
    f = tmp_path / "c.json"
    f.write_text('{"model": "tiny", "train": {"epochs": 2}}')
    model, train = load_config_file(f)
    assert model == TINY and train.epochs == 2


def test_shipped_risk_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("risk-*.json"))
    assert {f.stem for f in files} >= {"risk-tiny", "risk-demo", "risk-mirai"}
    for f in files:
        model, _ = load_config_file(f)
        assert model == PRESETS[f.stem.removeprefix("risk-")]


def test_heads_stay_float32_under_bf16_autocast():
    torch.manual_seed(0)
    net = RiskNetwork(TINY).eval()
    x, m = torch.rand(2, 4, 1, *TINY.input_size), torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x, m)
    with torch.no_grad():
        full = net(x, m)
    assert low.exam_logits.dtype == torch.float32
    assert (torch.diff(low.exam_logits, dim=-1) >= 0).all()
    assert torch.allclose(low.exam_logits, full.exam_logits, atol=0.1)


def test_an_exam_risk_is_never_below_a_breast_risk(tmp_path):
    """Cancer in either breast is at least as likely as in one: separate heads and calibrations
    that disagree are reconciled upwards when both are calibrated."""
    from BINDSLib.risk.inference import RiskModel

    net = RiskNetwork(TINY)
    low = Calibrator("platt", [{"year": y, "a": 1.0, "b": -4.0} for y in range(1, 6)])
    high = Calibrator("platt", [{"year": y, "a": 1.0, "b": 4.0} for y in range(1, 6)])
    prep = prepare_exam(make_exam(2, drop=[("R", "CC"), ("R", "MLO")]), TINY)  # no right breast
    args = (prep.images[None], prep.view_mask[None])
    exam, breast, present = RiskModel(net, low, high).predict(*args)
    assert present.tolist() == [[True, False]] and np.isnan(breast[0, 1]).all()
    np.testing.assert_allclose(exam[0], breast[0, 0])  # raised to the left breast's risk
    alone, raw, _ = RiskModel(net, low, Calibrator("none")).predict(*args)  # other scales: left as they are
    assert (alone[0] < raw[0, 0]).all() and np.all(np.diff(alone[0]) >= 0)
    assert np.allclose(alone[0], RiskModel(net, low, low).predict(*args)[0])  # a lower breast risk changes nothing
