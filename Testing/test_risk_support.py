"""Helpers shared by the risk tests (no tests here): small exams and a random-weight bundle."""

from __future__ import annotations

import datetime as _dt

import numpy as np

from BINDSLib.study import Geometry, Image, Modality, Role, Study

VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))


def make_exam(seed: int, date: _dt.date | None = _dt.date(2020, 1, 1), shape=(80, 60),
              drop=(), study_id: str | None = None, patient_id: str = "woman-1") -> Study:
    """A 4-view MG exam of noise with a bright 'breast' at the chest-wall side; ``drop`` views
    like ``("R", "MLO")`` are left out."""
    rng = np.random.default_rng(seed)
    images = []
    for lat, view in VIEWS:
        if (lat, view) in drop:
            continue
        rows, cols = shape
        c = np.arange(cols)[None, :] / cols
        breast = (c < 0.6).astype(np.float32) * 800
        if lat == "R":  # stored as displayed: right breast with chest wall at the right
            breast = breast[:, ::-1]
        vox = (breast + rng.normal(0, 50, size=shape) + 100).clip(0).astype(np.uint16)
        images.append(Image(vox[None], Geometry((0.1, 0.1, 1.0)), Role(Modality.MG, laterality=lat,
                                                                       view=view)))
    return Study(study_id or f"exam-{seed}", images, patient_id=patient_id, study_date=date,
                 synthetic=True)


def tiny_bundle(path, seed: int = 0, calibration=None):
    """A risk bundle with the ``tiny`` preset and random weights (for fast tests)."""
    import torch

    from BINDSLib.risk.calibration import Calibrator
    from BINDSLib.risk.config import PRESETS
    from BINDSLib.risk.inference import save_risk_bundle
    from BINDSLib.risk.network import RiskNetwork

    torch.manual_seed(seed)
    net = RiskNetwork(PRESETS["tiny"])
    return save_risk_bundle(path, net, calibration or Calibrator("none"), name="risk-tiny-test",
                            description="random weights for tests", training_data="none")
