"""Longitudinal 5-year breast cancer risk from screening mammograms (a Mirai-type model).

Pieces, each in its own small module:

* :mod:`.config` -- :class:`RiskConfig` (network and input settings, presets ``tiny``,
  ``demo``, ``mirai``) and :class:`TrainConfig`.
* :mod:`.preprocess` -- one exam (:class:`~BINDSLib.study.Study`) to a ``(4, 1, H, W)`` tensor
  of the standard views L-CC, L-MLO, R-CC, R-MLO plus a view mask.
* :mod:`.network` -- shared 2D encoder, view/side embeddings, aggregator across views and the
  additive-hazard head (cumulative risk for years 1-5, monotone by construction).
* :mod:`.losses` -- censoring-aware targets and loss.
* :mod:`.calibration` -- per-year Platt or isotonic calibration, stored as numbers.
* :mod:`.metrics` -- C-index, time-dependent AUC and calibration per year (numpy only).
* :mod:`.trajectory` -- slope, change and acceleration of a woman's risk over her exams.
* :mod:`.inference` -- :class:`RiskModel` (``from_bundle``, ``score_exam``).
* :mod:`.report` -- ``report.json`` (schema ``binds.risk_report``), CSV and the PNG plot.
* :mod:`.cohort` -- batched, resumable, sharded scoring of a screening cohort.
* :mod:`.train` -- training on a longitudinal cohort and writing a risk bundle.

Importing this package is light; torch is imported by the modules that need it.
"""

from .config import PRESETS, STANDARD_VIEWS, RiskConfig, TrainConfig

__all__ = ["PRESETS", "STANDARD_VIEWS", "RiskConfig", "TrainConfig"]
