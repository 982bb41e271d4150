"""The scoring path (folded BatchNorm, fused ReLU/residual, chunked views) gives the network's
outputs, and leaves the bundle's network untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from BINDSLib.risk.config import PRESETS
from BINDSLib.risk.network import InferenceEncoder, RiskNetwork, fuse_for_inference
from BINDSLib.risk.preprocess import prepare_exam
from test_risk_support import make_exam


def _randomise_batchnorm(net: torch.nn.Module) -> None:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("budget_mib", [256.0, 1e-6])  # all views at once; one view per pass
def test_fused_network_matches_the_network_with_missing_views(budget_mib):
    torch.manual_seed(0)
    net = RiskNetwork(PRESETS["tiny"]).eval()
    _randomise_batchnorm(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fused = fuse_for_inference(net)
    fused.encoder.stem_budget_mib = budget_mib
    assert isinstance(fused.encoder, InferenceEncoder) and not isinstance(net.encoder, InferenceEncoder)
    x = torch.rand(3, 4, 1, *PRESETS["tiny"].input_size)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.bool)
    with torch.inference_mode():
        ref, out = net(x, mask), fused(x, mask)
    for a, b in zip(ref, out):
        assert torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_demo_bundle_scores_are_those_of_its_network():
    from BINDSLib.risk.inference import RiskModel

    model = RiskModel.from_bundle("binds-risk-demo", device="cpu")
    prepared = [prepare_exam(make_exam(s), model.config) for s in range(3)]
    x = torch.from_numpy(np.stack([p.images for p in prepared]))
    m = torch.from_numpy(np.stack([p.view_mask for p in prepared]))
    m[1, 3] = False  # one exam with a missing view
    with torch.inference_mode():
        ref = model.network(x, m)
    exam, breast, present = model.predict(x, m)
    ref_breast = model.breast_calibration.apply(ref.breast_logits.numpy().reshape(6, -1)).reshape(3, 2, -1)
    assert np.nanmax(np.abs(breast - ref_breast)) < 1e-5 and present.all()
    ref_exam = np.maximum(model.calibration.apply(ref.exam_logits.numpy()), ref_breast.max(axis=1))  # (both calibrated)
    assert np.abs(exam - ref_exam).max() < 1e-5
