"""Censoring-aware targets and loss for cumulative risk.

For an exam and each year ``t = 1..T`` the target is "cancer diagnosed within ``t`` years of the
exam". It is *known* when cancer was diagnosed within ``t`` years (target 1) or when the woman
was followed cancer-free for at least ``t`` years (target 0). Otherwise -- followed for fewer than
``t`` years without cancer -- the year is censored: its mask is 0 and it contributes nothing to
the loss (nor to its gradient). Unlike Mirai, years after a diagnosis stay in the loss with
target 1 (they are known: cancer within ``t`` years is true for every later ``t``).
"""

from __future__ import annotations

import numpy as np

#: Grace on follow-up: a woman followed ``t`` years minus this many days counts as followed
#: ``t`` years (annual screening dates drift by days).
FOLLOWUP_GRACE_DAYS = 14
DAYS_PER_YEAR = 365.25


def survival_targets(years_to_cancer: float | None, years_observed: float | None,
                     max_followup: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Targets and mask for one exam.

    Parameters
    ----------
    years_to_cancer : years from the exam to the diagnosis; ``None`` without cancer.
    years_observed : years of follow-up after the exam (to the diagnosis or the last
        cancer-free date); ``None`` when unknown (then only diagnosed years are known).

    Returns
    -------
    targets, mask : float32 arrays ``(max_followup,)``.

    Raises
    ------
    ValueError
        for a diagnosis before the exam (the exam is not a screening exam of a cancer-free
        woman; leave it out of training).
    """
    years = np.arange(1, max_followup + 1, dtype=np.float64)
    grace = FOLLOWUP_GRACE_DAYS / DAYS_PER_YEAR
    if years_to_cancer is not None:
        if years_to_cancer < 0:
            raise ValueError(f"cancer diagnosed {-years_to_cancer:.2f} years before the exam")
        targets = (years_to_cancer <= years).astype(np.float32)
    else:
        targets = np.zeros(max_followup, dtype=np.float32)
    followed = 0.0 if years_observed is None else years_observed
    mask = ((targets > 0) | (followed + grace >= years)).astype(np.float32)
    return targets, mask


def history_targets(history, exam, max_followup: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """:func:`survival_targets` of ``exam`` within its :class:`~BINDSLib.study.ExamHistory`."""
    return survival_targets(history.years_to_cancer(exam), history.years_observed(exam), max_followup)


def censored_bce(logits, targets, mask, pos_weight: float = 1.0):
    """Mean binary cross-entropy over the known (mask = 1) years.

    Parameters
    ----------
    logits, targets, mask : tensors ``(B, T)`` (or any equal shapes).
    pos_weight : weight of positive targets (rare events).

    Returns
    -------
    scalar tensor; 0 (with a graph) when nothing is known.
    """
    import torch
    import torch.nn.functional as F

    pw = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none", pos_weight=pw)
    loss = torch.where(mask > 0, loss, torch.zeros_like(loss))  # masked years: no value, no grad
    return loss.sum() / mask.sum().clamp(min=1.0)


def either_breast_bce(breast_logits, targets, mask, breast_present, pos_weight: float = 1.0):
    """Loss of the per-breast heads when the cancer's side is unknown.

    The exam target is "cancer in either breast", so the per-breast risks are combined as
    ``1 - (1 - p_L)(1 - p_R)`` (independent breasts; a breast without views counts as 0) and
    compared with the exam target, censoring as :func:`censored_bce`.

    Parameters
    ----------
    breast_logits : ``(B, 2, T)``; targets, mask : ``(B, T)``; breast_present : ``(B, 2)``.
    """
    import torch
    import torch.nn.functional as F

    # log(1 - p) = logsigmoid(-z); absent breasts contribute log(1) = 0
    log_not = F.logsigmoid(-breast_logits) * breast_present[..., None].to(breast_logits.dtype)
    log_none = log_not.sum(dim=1)                           # log P(no cancer in either)
    log_any = torch.log((-torch.expm1(log_none)).clamp(min=1e-12))  # log P(cancer in some)
    loss = -(pos_weight * targets * log_any + (1 - targets) * log_none)
    loss = torch.where(mask > 0, loss, torch.zeros_like(loss))
    return loss.sum() / mask.sum().clamp(min=1.0)


def breast_targets(targets, mask, side, breast_present):
    """Per-breast targets and mask ``(B, 2, T)`` where the cancer's side is known.

    Parameters
    ----------
    targets, mask : ``(B, T)`` exam targets and mask.
    side : ``(B,)`` int: 0 left, 1 right, -1 unknown (ignored for exams without a positive year).
    breast_present : ``(B, 2)`` bool.

    Returns
    -------
    targets_b, mask_b, side_known ``(B,)``: the cancer's breast takes the exam targets, the other
    breast 0 for the years before the diagnosis (her follow-up as a cancer-free woman ends
    there: later years of the other breast are censored); a woman without cancer: both 0 as
    far as she was followed. A breast without views is masked. Exams with a positive year and
    an unknown side are masked here (see :func:`either_breast_bce`).
    """
    import torch

    positive = targets.sum(dim=1) > 0
    known = (side >= 0) | ~positive
    onehot = torch.stack([side == 0, side == 1], dim=1).to(targets.dtype)   # (B, 2)
    t_b = targets[:, None, :] * onehot[..., None]
    # the other breast of a diagnosed woman: known only before the diagnosis (targets 0 there)
    followed = onehot[..., None] + (1 - onehot[..., None]) * (1 - targets[:, None, :])
    m_b = (mask[:, None, :] * followed * breast_present[..., None].to(mask.dtype)
           * known[:, None, None].to(mask.dtype))
    return t_b, m_b, known


def breast_loss(breast_logits, targets, mask, breast_present, side, pos_weight: float = 1.0):
    """Loss of the per-breast heads: per-breast BCE where the cancer's side is known, the
    either-breast loss (:func:`either_breast_bce`) for cancers of unknown side.

    Shapes: breast_logits ``(B, 2, T)``, targets/mask ``(B, T)``, breast_present ``(B, 2)``,
    side ``(B,)`` (0 left, 1 right, -1 unknown).
    """
    t_b, m_b, known = breast_targets(targets, mask, side, breast_present)
    loss = censored_bce(breast_logits, t_b, m_b, pos_weight)
    unknown = ~known
    if bool(unknown.any()):
        m_u = mask * unknown[:, None].to(mask.dtype)
        loss = loss + either_breast_bce(breast_logits, targets, m_u, breast_present, pos_weight)
    return loss
