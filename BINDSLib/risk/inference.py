"""Scoring exams with a risk bundle.

>>> model = RiskModel.from_bundle("binds-risk-demo")        # doctest: +SKIP
>>> risk = model.score_exam(study)                            # doctest: +SKIP
>>> risk.cumulative_risk      # years 1..5, calibrated        # doctest: +SKIP

A risk bundle (kind ``"risk"``) carries in ``metadata.json`` -> ``binds``: ``config`` (a
:class:`~BINDSLib.risk.config.RiskConfig`), ``calibration`` (exam risk, per year),
``breast_calibration`` (optional), ``input_size``, ``views``, ``years`` and ``thresholds``
(``supplemental_mri_5y``: 0.017, ``rise_2y``).
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ModelError
from ..study import Study, public_id
from .calibration import Calibrator
from .config import NCCN_MRI_THRESHOLD_5Y, STANDARD_VIEWS, RiskConfig
from .preprocess import PreparedExam, prepare_exam
from .trajectory import DEFAULT_RISE_THRESHOLD

log = logging.getLogger(__name__)

DEFAULT_BUNDLE = "binds-risk-demo"
BUNDLE_KIND = "risk"


@dataclass(frozen=True)
class ExamRisk:
    """Risk of one exam.

    Attributes
    ----------
    exam_id : the study ID, pseudonymised unless identifiers are kept.
    exam_date : date of the exam.
    cumulative_risk : calibrated probability of a diagnosis within 1..T years (non-decreasing;
        never below a breast's risk when both are calibrated).
    breast_risk : ``{"L": (...), "R": (...)}`` per-breast cumulative risk, ``None`` for a breast
        without any view.
    views_present : e.g. ``("L-CC", "L-MLO", "R-CC", "R-MLO")``.
    warnings : missing views, ignored images.
    """

    exam_id: str
    exam_date: _dt.date | None
    cumulative_risk: tuple[float, ...]
    breast_risk: dict
    views_present: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    def risk(self, year: int) -> float:
        """Cumulative risk within ``year`` years."""
        return self.cumulative_risk[year - 1]

    def to_json(self) -> dict:
        return {
            "exam_id": self.exam_id,
            "exam_date": None if self.exam_date is None else self.exam_date.isoformat(),
            "cumulative_risk": {str(k + 1): round(v, 6) for k, v in enumerate(self.cumulative_risk)},
            "breast_risk": {side: None if r is None else
                            {str(k + 1): round(v, 6) for k, v in enumerate(r)}
                            for side, r in self.breast_risk.items()},
            "views_present": list(self.views_present),
            "warnings": list(self.warnings),
        }


def exam_identifier(study: Study, keep_identifiers: bool = False) -> str:
    return public_id(str(study.study_id), keep_identifiers)


def resolve_device(device: str | None = "auto"):
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ..."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    return dev


class RiskModel:
    """A risk network with its calibration, ready to score exams.

    Parameters
    ----------
    network : :class:`~BINDSLib.risk.network.RiskNetwork` (weights loaded).
    calibration : per-year calibration of the exam risk.
    breast_calibration : per-year calibration of the per-breast risk (identity if ``None``).
    bundle_summary : name, version, hash of the bundle (recorded in reports).
    thresholds : ``supplemental_mri_5y`` and ``rise_2y``.
    device : ``"auto"``, ``"cpu"``, ``"cuda"`` ... or a ``torch.device``.

    :meth:`predict` runs ``scoring_network`` (:func:`~BINDSLib.risk.network.fuse_for_inference`:
    BatchNorm folded into the encoder's convolutions, fused ReLU/residual, views chunked on the
    CPU), built once here; ``network`` keeps the bundle's modules and weights. Build a new
    ``RiskModel`` after changing ``network``'s weights.
    """

    def __init__(self, network, calibration: Calibrator, breast_calibration: Calibrator | None = None,
                 bundle_summary: dict | None = None, thresholds: dict | None = None, device="cpu"):
        import torch

        from .network import fuse_for_inference

        self.device = resolve_device(device) if isinstance(device, (str, type(None))) else device
        self.network = network.to(self.device).eval()
        if self.device.type == "cuda":
            self.network = self.network.to(memory_format=torch.channels_last)
        # what predict() runs: BatchNorm folded, ReLU/residual fused, views chunked on the CPU;
        # self.network (the bundle's weights) is left as it is
        self.scoring_network = fuse_for_inference(self.network)
        self.config: RiskConfig = network.config
        self.calibration = calibration
        self.breast_calibration = breast_calibration or Calibrator("none")
        self.bundle_summary = bundle_summary or {}
        self.thresholds = {"supplemental_mri_5y": NCCN_MRI_THRESHOLD_5Y,
                           "rise_2y": DEFAULT_RISE_THRESHOLD, **(thresholds or {})}

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, name_or_path: str | Path = DEFAULT_BUNDLE, device: str | None = "auto") -> "RiskModel":
        """Load a verified risk bundle (SHA-256 checked, ``weights_only`` unpickling)."""
        from ..bundle import load_bundle, module_from_state
        from .network import RiskNetwork

        bundle = load_bundle(name_or_path, kind=BUNDLE_KIND)
        meta = bundle.binds
        try:
            config = RiskConfig.from_json(meta["config"])
            calibration = Calibrator.from_json(meta.get("calibration")).check(config.max_followup)
            breast_cal = Calibrator.from_json(meta.get("breast_calibration")).check(config.max_followup)
            thresholds = meta.get("thresholds") or {}
            if not isinstance(thresholds, dict):
                raise ValueError(f"thresholds must be an object, not {thresholds!r}")
            for key, value in thresholds.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                    raise ValueError(f"thresholds.{key} must be a risk from 0 to 1 (as --threshold), not {value!r}")
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise ModelError(f"invalid risk bundle metadata: {e}", bundle.path) from None
        # the network takes the loaded tensors (the scoring network's fused copies are its own)
        state, bundle.state_dict = bundle.state_dict, {}
        try:
            network = module_from_state(lambda: RiskNetwork(config), state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0][:200]
            raise ModelError(f"weights do not fit the bundle's risk config ({first})", bundle.path) from None
        return cls(network, calibration, breast_cal, bundle.summary(), thresholds, device)

    # -- scoring ----------------------------------------------------------------------------
    def predict(self, images, view_mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrated cumulative risks of a batch.

        Parameters
        ----------
        images : ``(B, 4, 1, H, W)`` float (numpy or tensor); view_mask : ``(B, 4)`` bool.

        Returns
        -------
        exam ``(B, T)``, breast ``(B, 2, T)`` (NaN for a breast without views), and
        breast_present ``(B, 2)``.
        """
        import torch

        x = torch.as_tensor(images)
        m = torch.as_tensor(view_mask, dtype=torch.bool)
        cuda = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=cuda)
        m = m.to(self.device, non_blocking=cuda)
        with torch.inference_mode(), torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                                                    enabled=cuda):
            out = self.scoring_network(x.float(), m)
        exam = self.calibration.apply(out.exam_logits.float().cpu().numpy())
        b, s, t = out.breast_logits.shape
        breast = self.breast_calibration.apply(
            out.breast_logits.float().cpu().numpy().reshape(b * s, t)).reshape(b, s, t)
        present = out.breast_present.cpu().numpy()
        breast = np.where(present[..., None], breast, np.nan)
        exam = at_least_each_breast(exam, breast, present, self.calibration, self.breast_calibration)
        return exam, breast, present

    def score_prepared(self, prepared: Sequence[PreparedExam], exam_ids: Sequence[str],
                       exam_dates: Sequence[_dt.date | None]) -> list[ExamRisk]:
        """Score already prepared exams (one forward pass)."""
        if not prepared:
            return []
        images = np.stack([p.images for p in prepared])
        masks = np.stack([p.view_mask for p in prepared])
        exam, breast, present = self.predict(images, masks)
        out = []
        for i, p in enumerate(prepared):
            breast_risk = {lat: tuple(float(v) for v in breast[i, s]) if present[i, s] else None
                           for s, lat in enumerate(("L", "R"))}
            out.append(ExamRisk(exam_ids[i], exam_dates[i], tuple(float(v) for v in exam[i]),
                                breast_risk, p.views_present, tuple(p.warnings)))
        return out

    def score_exam(self, study: Study, keep_identifiers: bool = False) -> ExamRisk:
        """Risk of one exam (missing views are masked, with a warning in the result and log)."""
        prepared = prepare_exam(study, self.config)
        for w in prepared.warnings:
            log.warning("exam %s: %s", exam_identifier(study, keep_identifiers), w)
        return self.score_prepared([prepared], [exam_identifier(study, keep_identifiers)],
                                   [study.study_date])[0]

    def score_exams(self, studies: Sequence[Study], keep_identifiers: bool = False,
                    batch_size: int = 8) -> list[ExamRisk]:
        """Risk of several exams, in the given order."""
        out: list[ExamRisk] = []
        for k in range(0, len(studies), batch_size):
            chunk = studies[k:k + batch_size]
            prepared = []
            for s in chunk:  # each exam named as in the outputs (a pseudonym by default)
                p = prepare_exam(s, self.config, name=exam_identifier(s, keep_identifiers))
                for w in p.warnings:
                    log.warning("exam %s: %s", exam_identifier(s, keep_identifiers), w)
                prepared.append(p)
            out += self.score_prepared(prepared, [exam_identifier(s, keep_identifiers) for s in chunk],
                                       [s.study_date for s in chunk])
        return out


def at_least_each_breast(exam: np.ndarray, breast: np.ndarray, present: np.ndarray,
                         calibration: Calibrator, breast_calibration: Calibrator) -> np.ndarray:
    """Calibrated exam risks ``(B, T)`` raised to the higher breast risk ``(B, 2, T)`` (breasts
    ``present`` ``(B, 2)``): cancer in either breast is at least as likely as in one of them.
    The heads and their calibrations are separate and may disagree; only when both are
    calibrated are they on one scale (otherwise ``exam`` is returned as it is)."""
    if calibration.method == "none" or breast_calibration.method == "none":
        return exam
    return np.maximum(exam, np.where(np.asarray(present, bool)[..., None], breast, 0.0).max(axis=1))


def save_risk_bundle(path: str | Path, network, calibration: Calibrator, *,
                     breast_calibration: Calibrator | None = None, name: str = DEFAULT_BUNDLE,
                     version: str = "0.1.0", description: str = "", reproduce: str = "",
                     metrics: dict | None = None, training_data: str = "",
                     thresholds: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``network`` + calibration as a verified risk bundle (:func:`BINDSLib.bundle.save_bundle`)."""
    from ..bundle import save_bundle

    config: RiskConfig = network.config
    binds = {
        "kind": BUNDLE_KIND,
        "config": config.to_json(),
        "input_size": {"rows": config.input_size[0], "cols": config.input_size[1]},
        "modalities": ["MG"],
        "views": [f"{lat}-{v}" for lat, v in STANDARD_VIEWS],
        "roles": [f"MG_{lat}_{v}" for lat, v in STANDARD_VIEWS],
        "years": list(config.years),
        "outputs": "cumulative probability of breast cancer diagnosis within 1..T years of the "
                   "exam, for the exam and per breast",
        "calibration": calibration.to_json(),
        "breast_calibration": (breast_calibration or Calibrator("none")).to_json(),
        "thresholds": {"supplemental_mri_5y": NCCN_MRI_THRESHOLD_5Y, "rise_2y": DEFAULT_RISE_THRESHOLD,
                       **(thresholds or {})},
        "training_data": training_data,
        "intended_use": "Research use only; not for clinical use.",
    }
    state = {k: v for k, v in network.state_dict().items()}
    return save_bundle(path, state, binds, name=name, version=version,
                       description=description or "Longitudinal 5-year breast cancer risk (Mirai-type).",
                       task="5-year breast cancer risk from a 4-view screening mammogram",
                       reproduce=reproduce, metrics=metrics, overwrite=overwrite)


