"""Settings of the risk model and of its training, with named presets.

A :class:`RiskConfig` travels inside every risk bundle (``metadata.json`` -> ``binds`` ->
``config``), so a bundle rebuilds exactly the network it was trained with. JSON files under
``configs/risk-*.json`` hold ``{"model": RiskConfig, "train": TrainConfig}``.

Input size
----------
``input_size`` is ``(rows, cols)`` of each view after resizing (portrait, chest wall at the
left). The ``mirai`` preset uses Mirai's 2048 x 1664 (rows x cols; "1664 x 2048" as width x
height), for "For Presentation" images; the shipped demo bundle uses 256 x 192 so that it
trains and runs on a laptop CPU. Scoring always uses the size stored in the bundle.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

#: Index order of the four standard views in every tensor: (laterality, view).
STANDARD_VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
#: NCCN (2026) threshold on the 5-year risk above which supplemental MRI is considered.
NCCN_MRI_THRESHOLD_5Y = 0.017
#: The horizon (years) of the risk that the threshold, the trajectory and the plots are on,
#: whatever the bundle's ``max_followup`` (which must reach it).
FLAG_HORIZON_YEARS = 5


class _JsonFields:
    """``to_json`` / ``from_json`` of a frozen config dataclass (tuples as JSON lists; unknown
    fields are an error naming them)."""

    _kind = "config"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict):
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls._kind} config fields {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class RiskConfig(_JsonFields):
    """Network and input settings of a risk model.

    Attributes
    ----------
    input_size : (rows, cols) of each view fed to the encoder.
    encoder : ``"resnet18"`` (MONAI ResNet-18, 2D, ImageNet-style stride-2 stem, 512 features)
        or ``"tiny"`` (a MONAI ResNet with one basic block per stage and
        ``encoder_channels`` widths; for CPU demos and tests).
    encoder_channels : stage widths of the ``tiny`` encoder (feature size = last width).
    hidden_dim : width of the per-view tokens after projection.
    aggregator : ``"transformer"`` (self-attention across the present views, Mirai) or
        ``"mean"`` (masked mean of the view tokens).
    num_layers, num_heads : transformer aggregator depth and heads.
    dropout : dropout before the hazard heads (training only).
    max_followup : number of yearly horizons (5: years 1-5).
    intensity_percentiles : (low, high) percentiles of each view mapped to 0 and 1.
    view_dropout : probability of masking each present view during training (robustness to
        missing views; at least one view is always kept).
    """

    _kind = "risk"

    input_size: tuple[int, int] = (256, 192)
    encoder: str = "tiny"
    encoder_channels: tuple[int, ...] = (8, 16, 32, 64)
    hidden_dim: int = 64
    aggregator: str = "transformer"
    num_layers: int = 1
    num_heads: int = 4
    dropout: float = 0.1
    max_followup: int = 5
    intensity_percentiles: tuple[float, float] = (0.5, 99.5)
    view_dropout: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "encoder_channels", tuple(int(v) for v in self.encoder_channels))
        object.__setattr__(self, "intensity_percentiles",
                           tuple(float(v) for v in self.intensity_percentiles))
        if len(self.input_size) != 2 or min(self.input_size) < 32:
            raise ValueError(f"input_size must be (rows, cols), each >= 32; got {self.input_size}")
        if self.encoder not in ("resnet18", "tiny"):
            raise ValueError(f"encoder must be 'resnet18' or 'tiny', not {self.encoder!r}")
        if self.aggregator not in ("transformer", "mean"):
            raise ValueError(f"aggregator must be 'transformer' or 'mean', not {self.aggregator!r}")
        if self.encoder == "tiny" and len(self.encoder_channels) != 4:
            raise ValueError("encoder_channels needs 4 stage widths")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} must be divisible by num_heads {self.num_heads}")
        if not 1 <= self.max_followup <= 10:
            raise ValueError("max_followup must be 1..10 years")
        lo, hi = self.intensity_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"intensity_percentiles must satisfy 0 <= low < high <= 100, got {lo, hi}")
        if not 0 <= self.view_dropout < 1 or not 0 <= self.dropout < 1:
            raise ValueError("dropout probabilities must be in [0, 1)")

    @property
    def years(self) -> tuple[int, ...]:
        """The horizons, ``(1, ..., max_followup)``."""
        return tuple(range(1, self.max_followup + 1))


@dataclass(frozen=True)
class TrainConfig(_JsonFields):
    """Training settings (see :mod:`BINDSLib.risk.train`).

    The cohort is synthetic (``BINDSLib.synthetic.make_cohort``) unless a folder of exam
    histories is given on the command line. Women are split train/validation/test by
    ``split`` fractions; calibration is fitted on validation, metrics reported on test.
    """

    _kind = "train"

    n_women: int = 600
    seed: int = 0
    epochs: int = 8
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    calibration: str = "platt"
    breast_loss_weight: float = 0.5
    pos_weight: float = 1.0
    synthetic_size: str = "demo"
    augment: bool = True

    def __post_init__(self):
        def whole(name, low):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"train.{name} must be a whole number >= {low}, not {v!r}")

        def number(name, low, strict):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or (v <= low if strict else v < low):
                raise ValueError(f"train.{name} must be a number {'>' if strict else '>='} {low}, not {v!r}")

        for name, low in (("n_women", 1), ("seed", 0), ("epochs", 1), ("batch_size", 1)):
            whole(name, low)
        for name, low, strict in (("learning_rate", 0, True), ("weight_decay", 0, False),
                                  ("breast_loss_weight", 0, False), ("pos_weight", 0, True)):
            number(name, low, strict)
        if not isinstance(self.augment, bool):
            raise ValueError(f"train.augment must be true or false, not {self.augment!r}")
        object.__setattr__(self, "split", tuple(float(v) for v in self.split))
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6 or min(self.split) <= 0:
            raise ValueError(f"split must be 3 positive fractions summing to 1, got {self.split}")
        if self.calibration not in ("platt", "isotonic", "none"):
            raise ValueError("calibration must be 'platt', 'isotonic' or 'none'")


#: Named model presets.
PRESETS: dict[str, RiskConfig] = {
    # for unit tests: runs in milliseconds
    "tiny": RiskConfig(input_size=(64, 48), encoder="tiny", encoder_channels=(4, 8, 8, 16),
                       hidden_dim=16, aggregator="transformer", num_layers=1, num_heads=2),
    # the shipped demo bundle: trains in minutes on a CPU
    "demo": RiskConfig(),
    # the published design: Mirai input size, ResNet-18, transformer across views
    "mirai": RiskConfig(input_size=(2048, 1664), encoder="resnet18", hidden_dim=512,
                        aggregator="transformer", num_layers=1, num_heads=8, dropout=0.2),
}


def preset(name: str) -> RiskConfig:
    """The :data:`PRESETS` entry ``name`` (a :class:`ValueError` names the choices)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown risk preset {name!r}; choose one of {sorted(PRESETS)}") from None


def load_config_file(path: str | Path) -> tuple[RiskConfig, TrainConfig]:
    """Read ``configs/risk-*.json``: ``{"model": {...} or "preset name", "train": {...}}``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))  # (a byte-order mark is allowed)
        model = doc.get("model", "demo")
        model_cfg = preset(model) if isinstance(model, str) else RiskConfig.from_json(model)
        train_cfg = TrainConfig.from_json(doc.get("train", {}))
    except FileNotFoundError:
        raise InputError("config file not found", path) from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError, AttributeError) as e:
        raise InputError(f"invalid risk config: {e}", path) from None
    return model_cfg, train_cfg
