"""Censoring: targets per year, and censored years contributing nothing to the loss."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from BINDSLib.risk.config import PRESETS
from BINDSLib.risk.losses import censored_bce, either_breast_bce, history_targets, survival_targets
from BINDSLib.risk.network import RiskNetwork
from BINDSLib.study import ExamHistory
from test_risk_support import make_exam


@pytest.mark.parametrize("ytc, observed, targets, mask", [
    (None, 3.0, [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]),    # followed 3 years: years 4-5 censored
    (None, 7.0, [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]),
    (None, 0.5, [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]),
    (2.5, 2.5, [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]),     # later years are known positives
    (0.0, 0.0, [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]),     # found at this screening
    (6.0, 6.0, [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]),     # cancer after the horizon
    (None, 4.0 - 10 / 365.25, [0] * 5, [1, 1, 1, 1, 0]),  # within the grace of 4 years
    (None, None, [0] * 5, [0] * 5),
])
def test_survival_targets(ytc, observed, targets, mask):
    y, m = survival_targets(ytc, observed)
    assert y.tolist() == targets and m.tolist() == mask


def test_cancer_before_the_exam_is_refused():
    with pytest.raises(ValueError, match="before the exam"):
        survival_targets(-0.5, 0.0)


def test_history_targets_from_dates():
    exams = [make_exam(1, dt.date(2015, 3, 1), study_id="a"), make_exam(2, dt.date(2016, 3, 1), study_id="b")]
    h = ExamHistory("w", exams, cancer_date=None, followup_end=dt.date(2018, 3, 1))
    assert history_targets(h, exams[0])[1].tolist() == [1, 1, 1, 0, 0]
    assert history_targets(h, exams[1])[1].tolist() == [1, 1, 0, 0, 0]
    h2 = ExamHistory("w", exams, cancer_date=dt.date(2017, 6, 1), followup_end=dt.date(2017, 6, 1))
    y, m = history_targets(h2, exams[0])
    assert y.tolist() == [0, 0, 1, 1, 1] and m.tolist() == [1] * 5


def test_censored_years_change_neither_loss_nor_gradient():
    torch.manual_seed(0)
    y = torch.tensor([[0, 0, 0, 0, 0], [0, 1, 1, 1, 1.]])
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1.]])
    z = torch.randn(2, 5, requires_grad=True)
    loss = censored_bce(z, y, m)
    loss.backward()
    assert torch.all(z.grad[0, 3:] == 0) and torch.all(z.grad[0, :3] != 0)
    z2 = z.detach().clone()
    z2[0, 3:] = torch.tensor([50.0, -80.0])  # anything at censored years
    assert torch.allclose(censored_bce(z2, y, m), loss)
    # equals the mean BCE over the 8 known entries
    known = torch.nn.functional.binary_cross_entropy_with_logits(z[m > 0], y[m > 0])
    assert torch.allclose(loss, known)


def test_censored_years_do_not_train_their_hazard_increments():
    """Years 4-5 unknown for every exam: the additive-hazard weights of years 4-5 get no gradient."""
    torch.manual_seed(1)
    net = RiskNetwork(PRESETS["tiny"])
    x = torch.rand(3, 4, 1, *PRESETS["tiny"].input_size)
    vm = torch.ones(3, 4, dtype=torch.bool)
    y = torch.tensor([[0, 0, 0, 0, 0], [0, 1, 1, 1, 1], [0, 0, 1, 1, 1.]])
    m = torch.tensor([[1, 1, 1, 0, 0]] * 3, dtype=torch.float32)
    out = net(x, vm)
    (censored_bce(out.exam_logits, y, m) + either_breast_bce(out.breast_logits, y, m, out.breast_present)).backward()
    for head in (net.exam_head, *net.breast_heads):
        g = head.hazard_fc.weight.grad
        assert torch.all(g[3:] == 0) and torch.any(g[:3] != 0)


def test_either_breast_loss_combines_breasts_as_independent():
    zl, zr = torch.tensor([[-1.0, 0.5]]), torch.tensor([[-2.0, -0.5]])
    bl = torch.stack([zl, zr], dim=1)
    y, m = torch.tensor([[0.0, 1.0]]), torch.ones(1, 2)
    p = 1 - (1 - torch.sigmoid(zl)) * (1 - torch.sigmoid(zr))
    expected = torch.nn.functional.binary_cross_entropy(p, y)
    got = either_breast_bce(bl, y, m, torch.tensor([[True, True]]))
    assert torch.allclose(got, expected, atol=1e-6)
    # a breast without views counts as risk 0
    only_left = either_breast_bce(bl, y, m, torch.tensor([[True, False]]))
    assert torch.allclose(only_left, torch.nn.functional.binary_cross_entropy(torch.sigmoid(zl), y), atol=1e-6)


def test_nothing_known_gives_zero_loss():
    z = torch.randn(2, 5, requires_grad=True)
    loss = censored_bce(z, torch.zeros(2, 5), torch.zeros(2, 5))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert np.all(z.grad.numpy() == 0)


def test_breast_targets_follow_the_side_of_the_cancer():
    from BINDSLib.risk.losses import breast_loss, breast_targets

    y = torch.tensor([[0, 1, 1, 1, 1.], [0, 0, 0, 0, 0], [0, 0, 1, 1, 1]])
    m = torch.tensor([[1, 1, 1, 1, 1.], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    side = torch.tensor([1, -1, -1])           # right; no cancer; cancer of unknown side
    present = torch.tensor([[True, True], [True, False], [True, True]])
    t_b, m_b, known = breast_targets(y, m, side, present)
    assert t_b[0, 0].tolist() == [0] * 5 and t_b[0, 1].tolist() == [0, 1, 1, 1, 1]
    # the other (left) breast: cancer-free only as far as she was followed, up to the diagnosis
    assert m_b[0, 0].tolist() == [1, 0, 0, 0, 0] and m_b[0, 1].tolist() == [1] * 5
    assert m_b[1, 0].tolist() == [1, 1, 0, 0, 0] and m_b[1, 1].tolist() == [0] * 5  # no right views
    assert known.tolist() == [True, True, False] and m_b[2].sum() == 0
    z = torch.randn(3, 2, 5)
    expected = censored_bce(z, t_b, m_b) + either_breast_bce(z, y, m * torch.tensor([[0.], [0], [1]]), present)
    assert torch.allclose(breast_loss(z, y, m, present, side), expected)
