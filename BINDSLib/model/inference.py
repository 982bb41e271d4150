"""Inference API of the diagnosis model (what ``binds diagnose`` and Slicer call).

>>> model = DiagnosisModel.from_bundle("binds-diagnosis-demo")        # doctest: +SKIP
>>> pred = model.predict(study)                                       # doctest: +SKIP
>>> pred.malignancy_probability, pred.subtype_probabilities           # doctest: +SKIP
>>> pred.images["MG_L_CC"].saliency.shape == study.image("MG_L_CC").shape  # doctest: +SKIP

Every per-image map of a :class:`Prediction` lies on that image's own grid (same shape and
geometry as the input image), so it overlays exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError
from ..study import Geometry, Study
from ..threads import thread_map
from .config import MODALITIES, SUBTYPES, DiagnosisConfig

log = logging.getLogger(__name__)

BUNDLE_KIND = "diagnosis"
DEFAULT_BUNDLE = "binds-diagnosis-demo"
PREDICTION_SCHEMA = "binds.diagnosis_prediction"
PREDICTION_SCHEMA_VERSION = 1
#: Default uncertainty band of the stage-1 malignancy probability that calls for stage 2 (MRI).
DEFAULT_UNCERTAINTY_BAND = (0.02, 0.98)


def in_uncertainty_band(probability: float, band: tuple[float, float]) -> bool:
    """Whether stage 1's ``probability`` is uncertain: strictly inside ``band`` (stage 2, with the
    MRI, is then read; the rule of ``binds diagnose --stage auto`` and ``binds evaluate``)."""
    lo, hi = band
    return lo < probability < hi


def _check_calibration(calibration) -> None:
    """``ValueError`` for a bundle calibration inference cannot use: temperatures must be finite
    and positive (0, a negative or an infinite one would saturate or invert every probability),
    the finding bias and reference finite numbers."""
    import math

    if not isinstance(calibration, dict):
        raise ValueError(f"calibration must be an object, not {calibration!r}")
    for key, positive in (("temperature", True), ("finding_temperature", True), ("finding_bias", False),
                          ("finding_reference", False)):
        if key not in calibration:
            continue
        value = calibration[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (positive and not value > 0):
            raise ValueError(f"calibration.{key} must be a finite{' positive' if positive else ''} number, "
                             f"not {value!r}")


def check_uncertainty_band(value) -> tuple[float, float]:
    """``(low, high)`` of a stage-1 uncertainty band given as two probabilities with
    ``0 <= low <= high <= 1``; ``ValueError`` otherwise (an inverted band would turn stage 2 off
    without a word)."""
    import math

    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"uncertainty_band must be two probabilities [low, high], not {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high <= 1.0):
        raise ValueError(f"uncertainty_band must be [low, high] with 0 <= low <= high <= 1, not {value!r}")
    return low, high


@dataclass
class ImageOutput:
    """Per-image outputs, each array ``(depth, rows, cols)`` on the image's own grid.

    lesion_probability : float32 in [0, 1], the model's lesion map; mapped to the image grid
        when first read (a study's full-size maps are not all held while the MRI is encoded:
        ``binds diagnose`` writes only ``lesion_probability_max``, the mask and the saliency).
    lesion_probability_max : its maximum.
    saliency : float32 in [0, 1]; alignment saliency ``max(0, cos)`` of the projected features
        with the malignant pathology prototype (absolute, comparable across images), or
        Grad-CAM of the same score (min-max normalised per image).
    lesion_mask : uint8, the lesion mask used for the lesion-focused crop: the user's mask
        when one was given (``lesion_mask_source == "user"``), else the predicted lesion
        drawn from ``lesion_probability`` (``lesion_mask_mode``, source ``"predicted"``).
        With a ``lesion_refiner``, ``lesion_probability`` is the refiner's map (scaled to the
        locator's peak) in a square around the locator's lesion and the locator's elsewhere
        (:mod:`~.refiner`).
    """

    label: str
    modality: str
    geometry: Geometry
    saliency: np.ndarray
    lesion_mask: np.ndarray
    lesion_mask_source: str
    lesion_probability_max: float
    #: the map, or a :class:`LazyArray` giving it
    lesion_probability_source: "np.ndarray | LazyArray" = field(repr=False)

    @property
    def lesion_probability(self) -> np.ndarray:
        src = self.lesion_probability_source
        return src.get() if isinstance(src, LazyArray) else src

    def to_json(self) -> dict:
        return {"label": self.label, "modality": self.modality, "shape": list(self.lesion_mask.shape),
                "lesion_mask_source": self.lesion_mask_source,
                "lesion_voxels": int(self.lesion_mask.sum()),
                "lesion_probability_max": float(self.lesion_probability_max),
                "saliency_max": float(self.saliency.max())}


class LazyArray:
    """An array computed on the first :meth:`get` and kept (images of one grid share one;
    threads reading it at once compute it once)."""

    def __init__(self, compute):
        self._compute, self._value, self._lock = compute, None, threading.Lock()

    def get(self) -> np.ndarray:
        with self._lock:
            if self._value is None:
                self._value, self._compute = self._compute(), None
            return self._value


@dataclass
class Prediction:
    """Diagnosis of one study (JSON form: :meth:`to_json`, schema ``binds.diagnosis_prediction`` v1).

    Attributes
    ----------
    malignancy_probability : calibrated probability that the lesion is malignant.
    malignancy_logit : the network's raw logit (before calibration).
    subtype_probabilities : molecular subtype -> probability (meaningful for malignant lesions).
    modalities : modalities used. modality_probabilities : each modality's own (auxiliary head)
        calibrated malignancy probability.
    contributions : modality -> share of the leave-one-modality-out effect: ``|p - p_without_m|``
        normalised to sum 1 over the used modalities (1.0 for a single modality; equal shares
        when no modality changes anything). contribution_deltas : the signed ``p - p_without_m``
        (empty for a single modality).
    images : per-image outputs by image label (:class:`ImageOutput`). Images on one grid
        (the MR sequences of a study, usually) share their map arrays: treat them as read-only.
    combination_probabilities : ``"MG+US"`` -> calibrated probability using only those
        modalities (filled when asked for; empty otherwise).
    threshold : the bundle's operating threshold; uncertainty_band : (low, high) of stage 1.
    timings_s : seconds by part (preprocess, encoders, fusion, saliency, mapping, total).
    notes : images ignored and similar remarks. model : the bundle summary (name, version, hash).
    finding_probability : probability that the study shows a finding at all (benign or
        malignant vs normal): the sigmoid of the largest image-level finding logit of the used
        modalities (:func:`~.network.finding_logits`; a mammogram's compared with the other
        breast when ``bilateral_weight`` > 0), divided by the bundle's
        ``calibration.finding_temperature`` and shifted by its ``finding_bias`` when its
        training or ``binds calibrate`` fitted them, else plain (None only for a Prediction
        built elsewhere). The score for "abnormal vs normal"; the
        malignancy probability answers "malignant or not".
    finding_logit : that finding logit before the calibration (``binds calibrate`` refits the
        temperature and bias from it).
    finding_compared : with ``bilateral_weight`` > 0 and mammograms read, whether every one of
        them was compared with the other breast (False: at least one had no film of the other
        breast in the study or its comparison images and was scored alone); None otherwise.
    """

    study_id: str
    malignancy_probability: float
    malignancy_logit: float
    subtype_probabilities: dict[str, float]
    modalities: tuple[str, ...]
    modality_probabilities: dict[str, float]
    contributions: dict[str, float]
    contribution_deltas: dict[str, float]
    images: dict[str, ImageOutput]
    combination_probabilities: dict[str, float]
    threshold: float
    uncertainty_band: tuple[float, float]
    timings_s: dict[str, float]
    notes: list[str] = field(default_factory=list)
    model: dict = field(default_factory=dict)
    finding_probability: float | None = None
    finding_logit: float | None = None
    finding_compared: bool | None = None

    @property
    def lesion_probability(self) -> dict[str, np.ndarray]:
        """Lesion probability map by image label (image grid)."""
        return {k: v.lesion_probability for k, v in self.images.items()}

    @property
    def saliency(self) -> dict[str, np.ndarray]:
        """Saliency map by image label (image grid)."""
        return {k: v.saliency for k, v in self.images.items()}

    @property
    def lesion_masks(self) -> dict[str, np.ndarray]:
        """The lesion mask used by image label (image grid, uint8)."""
        return {k: v.lesion_mask for k, v in self.images.items()}

    @property
    def uncertain(self) -> bool:
        """Whether the probability lies inside the uncertainty band (stage 2 advised)."""
        return in_uncertainty_band(self.malignancy_probability, self.uncertainty_band)

    def to_json(self) -> dict:
        """The JSON form (no arrays; those are written as images by the caller)."""
        return {
            "schema": PREDICTION_SCHEMA, "schema_version": PREDICTION_SCHEMA_VERSION,
            "study_id": self.study_id,
            "malignancy_probability": self.malignancy_probability,
            "malignancy_logit": self.malignancy_logit,
            "finding_probability": self.finding_probability,
            "finding_logit": self.finding_logit,
            "finding_compared": self.finding_compared,
            "subtype_probabilities": self.subtype_probabilities,
            "modalities": list(self.modalities),
            "modality_probabilities": self.modality_probabilities,
            "contributions": self.contributions,
            "contribution_deltas": self.contribution_deltas,
            "combination_probabilities": self.combination_probabilities,
            "threshold": self.threshold, "uncertainty_band": list(self.uncertainty_band),
            "uncertain": self.uncertain,
            "images": {k: v.to_json() for k, v in self.images.items()},
            "timings_s": self.timings_s, "notes": list(self.notes), "model": self.model,
        }


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class DiagnosisModel:
    """A diagnosis network with its calibration and operating point, ready to predict.

    Parameters
    ----------
    network : a :class:`~.network.DiagnosisNetwork` (weights loaded).
    metadata : the bundle's ``binds`` section (calibration, operating points, ...), or ``{}``.
    device : ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.
    summary : name/version/hash of the bundle, recorded in predictions.
    """

    def __init__(self, network, metadata: dict | None = None, device: str | None = None,
                 summary: dict | None = None):
        import torch

        self.device = torch.device(device or default_device())
        self.network = network.to(self.device).eval()
        self.network.use_channels_last(two_d=self.device.type == "cuda" or self.network.config.channels_last_2d,
                                       three_d=True)
        self.config: DiagnosisConfig = network.config
        self.metadata = dict(metadata or {})
        self.summary = dict(summary or {})
        self.bundle = None  #: the loaded :class:`~BINDSLib.bundle.Bundle` (from_bundle)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, path_or_name: str = DEFAULT_BUNDLE, device: str | None = None) -> "DiagnosisModel":
        """Load a verified bundle (SHA-256 + ``weights_only``) and rebuild its network.

        Raises :class:`~BINDSLib.errors.ModelError` when the bundle is missing, tampered with,
        not a diagnosis bundle, or does not match the network its config describes. The
        network's BatchNorms are folded into their convolutions
        (:meth:`~.network.DiagnosisNetwork.fold_batch_norm`): for inference, not training.
        """
        from ..bundle import load_bundle, module_from_state
        from .network import DiagnosisNetwork

        bundle = load_bundle(path_or_name, kind=BUNDLE_KIND)
        try:
            config = DiagnosisConfig.from_json(bundle.binds["model_config"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"invalid model_config in the bundle metadata: {e}", bundle.path) from None
        try:  # what every diagnosis reads: refused here, not as an internal error later
            check_uncertainty_band(bundle.binds.get("uncertainty_band", DEFAULT_UNCERTAINTY_BAND))
            threshold = float(bundle.binds.get("operating_point", {}).get("threshold", 0.5))
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"operating_point.threshold must be a probability, not {threshold!r}")
            _check_calibration(bundle.binds.get("calibration", {}))
        except (AttributeError, TypeError, ValueError) as e:
            raise ModelError(f"invalid bundle metadata: {e}", bundle.path) from None
        # the network takes the loaded tensors, and nothing else holds them: folding and the
        # channels-last layouts below replace them by copies, and the weights are never held twice
        state, bundle.state_dict = bundle.state_dict, {}
        try:
            network = module_from_state(lambda: DiagnosisNetwork(config), state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0][:300]
            raise ModelError(f"weights do not fit the network of this BINDS version ({first})",
                             bundle.path) from None
        finally:
            del state
        network.fold_batch_norm()  # inference only: same outputs, one pass less per feature map
        model = cls(network, bundle.binds, device, bundle.summary())
        model.bundle = bundle
        return model

    # -- calibration -----------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        return float(self.metadata.get("calibration", {}).get("temperature", 1.0))

    @property
    def finding_temperature(self) -> float:
        """Temperature of the finding logit (1.0 unless the bundle trained and calibrated it)."""
        return float(self.metadata.get("calibration", {}).get("finding_temperature", 1.0))

    @property
    def finding_bias(self) -> float:
        """Added to the finding logit after the temperature (``calibration.finding_bias``, fitted
        by ``binds train`` and ``binds calibrate``; 0.0 when absent, as in older bundles)."""
        return float(self.metadata.get("calibration", {}).get("finding_bias", 0.0))

    @property
    def finding_reference(self) -> float:
        """The finding logit of a typical unremarkable breast (``calibration.finding_reference``,
        0.0 when absent): the level the bilateral comparison measures the other breast from."""
        return float(self.metadata.get("calibration", {}).get("finding_reference", 0.0))

    @property
    def threshold(self) -> float:
        """The default operating threshold on the calibrated probability."""
        return float(self.metadata.get("operating_point", {}).get("threshold", 0.5))

    @property
    def uncertainty_band(self) -> tuple[float, float]:
        lo, hi = self.metadata.get("uncertainty_band", DEFAULT_UNCERTAINTY_BAND)
        return float(lo), float(hi)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the bundle was trained on (``binds.modalities``); its other branches
        are untrained, so :meth:`predict` never uses them."""
        return modality_names(self.metadata.get("modalities") or MODALITIES)

    def prediction_cache(self) -> "PredictionCache":
        """A new :class:`PredictionCache` for :meth:`predict` calls on one study."""
        return PredictionCache()

    @property
    def predicts_subtype(self) -> bool:
        """False for a bundle trained without subtype labels (e.g. BUSI, mini-MIAS): its subtype
        head is untrained, so predictions carry no subtype probabilities."""
        return bool(self.metadata.get("subtype_trained", True))

    def probability(self, logit) -> np.ndarray:
        """Calibrated probability of raw logits (temperature scaling)."""
        z = np.asarray(logit, dtype=np.float64) / self.temperature
        return 1.0 / (1.0 + np.exp(-z))

    # -- prediction ------------------------------------------------------------------------
    def predict(self, study: Study, lesion_masks: dict[str, np.ndarray] | None = None,
                modalities=None, saliency: str = "alignment", combinations: bool = False,
                cache: "PredictionCache | None" = None) -> Prediction:
        """Diagnose one study.

        Parameters
        ----------
        study : any combination of MG, US and MR images.
        lesion_masks : user lesion masks by image label (on each image's grid); they replace
            the predicted lesion for the lesion-focused crop.
        modalities : restrict to these modalities (e.g. ``("MG", "US")`` for stage 1); never
            more than the bundle's own :attr:`modalities`.
        saliency : ``"alignment"`` (default), ``"gradcam"`` or ``"none"``.
        combinations : also give the probability of every non-empty subset of the used
            modalities (``combination_probabilities``; e.g. the stage-1 ``"MG+US"`` value from
            the same call). Exact: encoders are per modality, the fusion masks the others.
        cache : a :class:`PredictionCache` shared by calls on the same study (same ``study``
            and ``lesion_masks`` objects, same ``saliency``): each modality is prepared,
            encoded and mapped back once, later calls reuse it (stage 2 of ``binds diagnose``
            adds only the MRI to stage 1's mammography and ultrasound). Same results as
            separate calls: encoders are per modality.

        Raises
        ------
        InputError
            when the study has none of the requested modalities or a mask does not fit.
        """
        import torch

        from .network import study_finding_logits
        from .preprocess import PreparedStudy, to_image_grid
        from .saliency import METHODS, alignment_saliency, gradcam_saliency, on_support

        if saliency not in (*METHODS, "none"):
            raise ValueError(f"saliency must be one of {METHODS + ('none',)}, not {saliency!r}")
        net = self.network
        timings: dict[str, float] = {}
        t_start = t = time.perf_counter()

        def lap(name):
            nonlocal t
            now = time.perf_counter()
            timings[name] = round(now - t, 4)
            t = now

        allowed = self.modalities if modalities is None else tuple(
            m for m in modality_names(modalities) if m in self.modalities)
        if not allowed or not any(im.modality.value in allowed for im in study.images):
            from ..errors import InputError

            have = "+".join(sorted({im.modality.value for im in study.images})) or "no images"
            raise InputError(f"model {self.summary.get('name', '?')} reads "
                             f"{'+'.join(self.modalities)} images; study {study.study_id} has {have}"
                             + (f" (asked for {'+'.join(modality_names(modalities))})" if modalities else ""))
        cache = PredictionCache() if cache is None else cache
        work = cache.prepare(self, study, lesion_masks, allowed, saliency)
        fresh = [m for m, w in work.items() if w.images is None]  # not done by an earlier call
        prepared = PreparedStudy(study.study_id, {m: w.prepared.inputs[m] for m, w in work.items()},
                                 [n for w in work.values() for n in w.prepared.notes],
                                 {k: v for w in work.values() for k, v in w.prepared.mask_source.items()},
                                 {k: v for w in work.values() for k, v in w.prepared.mask_from.items()})
        # only Grad-CAM reads the images after encoding
        batch = {k: v for w in work.values() for k, v in w.batch.items()
                 if saliency == "gradcam" or not k.endswith("_images")}
        lap("preprocess")
        with torch.inference_mode(), self._autocast():
            for m in fresh:
                w = work[m]
                if w.encoding is None:
                    feed = w.batch
                    if saliency != "gradcam":  # the cache lets the images go
                        w.batch = {k: v for k, v in w.batch.items() if not k.endswith("_images")}
                    # unless read again (mirrored, Grad-CAM), the branch pops the images from
                    # `feed` (now their only holder) and releases them once it has cropped them
                    mirrored = self.config.tta_flip and m in TTA_FLIP_MODALITIES
                    w.encoding = net.encode(feed, release_images=not mirrored and saliency != "gradcam")[m]
                    if self.config.tta_flip:
                        w.encoding_flip = flip_encodings(net, {m: w.encoding}, feed)[m]
                    del feed
            # shallow copies: merge_flipped replaces fields, the cache keeps the encoder outputs
            enc = {m: dataclasses.replace(w.encoding) for m, w in work.items()}
            enc_flip = None
            if self.config.tta_flip:
                enc_flip = {m: enc[m] if w.encoding_flip is None or w.encoding_flip is w.encoding
                            else dataclasses.replace(w.encoding_flip) for m, w in work.items()}
            lap("encoders")

            def fuse(keeps):
                o = fuse_variants(net, enc, batch, keeps)
                if enc_flip is None:
                    return o
                f = fuse_variants(net, enc_flip, batch, keeps)
                return {"malignancy_logit": (o["malignancy_logit"] + f["malignancy_logit"]) / 2,
                        "subtype_logits": (o["subtype_logits"] + f["subtype_logits"]) / 2}

            used = tuple(enc)
            # one batched fusion: all modalities, leave-one-modality-out, subsets
            leave_one_out = [tuple(x for x in used if x != m) for m in used] if len(used) > 1 else []
            subsets = [c for r in range(1, len(used) + 1) for c in itertools.combinations(used, r)] \
                if combinations else []
            out = fuse([used, *leave_one_out, *subsets])
            logits = out["malignancy_logit"].float().cpu().numpy().astype(np.float64)
            logit = float(logits[0])
            p = float(self.probability(logit))
            deltas: dict[str, float] = {m: p - float(self.probability(float(logits[1 + i])))
                                        for i, m in enumerate(used) if leave_one_out}
            combos = {"+".join(c): float(self.probability(float(logits[1 + len(leave_one_out) + i])))
                      for i, c in enumerate(subsets)}
            subtype = torch.softmax(out["subtype_logits"][0].float(), 0).cpu().numpy()
            if enc_flip is not None:
                merge_flipped(enc, enc_flip)
            aux = {m: float(self.probability(float(e.aux_logit[0]))) for m, e in enc.items()}
            cfg = self.config
            offsets, bilateral_notes, compared = self._bilateral_offsets(study, work, enc, cache)
            finding = max(float(v[0]) for v in
                          study_finding_logits(enc, 1, cfg.finding_cell, cfg.finding_topk, offsets).values())
            lap("fusion")
            proto = net.pathology.prototype_malignant
            sal = {}
            for m, e in ((m, enc[m]) for m in fresh):
                size = e.lesion_logits.shape[2:]
                if saliency == "alignment":
                    sal[m] = alignment_saliency(e.align_map.float(), proto.float(), size).clamp_min(0)
                elif saliency == "none":
                    sal[m] = torch.zeros_like(e.lesion_logits, dtype=torch.float32)
        if saliency == "gradcam":
            for m, e in ((m, enc[m]) for m in fresh):
                x = batch[f"{m}_images"][e.index[:, 0], e.index[:, 1]]
                sal[m] = gradcam_saliency(net.branches[m], x, net.pathology.prototype_malignant)
        if self.config.saliency_lesion_gate and saliency != "none":
            for m, e in ((m, enc[m]) for m in fresh):
                lesion = torch.sigmoid(e.lesion_logits.detach().float())
                sal[m] = lesion_gated_saliency(sal[m].float(), lesion)
        if saliency != "none":  # a mammogram's saliency points at its breast only
            for m in (m for m in fresh if work[m].breast is not None):
                sal[m] = on_support(sal[m], work[m].breast, enc[m].index[:, 1])
        lap("saliency")
        for m in fresh:
            work[m].images = self._map_back(prepared, {m: enc[m]}, sal, lesion_masks or {}, to_image_grid,
                                            study)
        images = {label: o for w in work.values() for label, o in w.images.items()}
        lap("mapping")
        timings["total"] = round(time.perf_counter() - t_start, 4)
        total = sum(abs(v) for v in deltas.values())
        contributions = ({m: abs(v) / total for m, v in deltas.items()} if total > 1e-12
                         else {m: 1.0 / len(used) for m in used})
        return Prediction(
            study_id=study.study_id, malignancy_probability=p, malignancy_logit=logit,
            subtype_probabilities=({s: float(v) for s, v in zip(SUBTYPES, subtype)}
                                   if self.predicts_subtype else {}),
            modalities=used, modality_probabilities=aux, contributions=contributions,
            contribution_deltas=deltas,
            images=images, combination_probabilities=combos, threshold=self.threshold, uncertainty_band=self.uncertainty_band,
            timings_s=timings, notes=list(prepared.notes) + bilateral_notes, model=self.summary,
            # sigmoid without overflow
            finding_probability=0.5 * (1.0 + math.tanh((finding / self.finding_temperature
                                                        + self.finding_bias) / 2.0)),
            finding_logit=finding, finding_compared=compared)

    def _bilateral_offsets(self, study: Study, work: dict, enc: dict,
                           cache: "PredictionCache") -> tuple[dict, list[str], bool | None]:
        """The bilateral comparison of the mammograms' finding logits
        (``DiagnosisConfig.bilateral_weight``): per encoded mammogram the shift of its finding
        logit (:func:`~.network.bilateral_offsets`), a note naming the films compared, and
        whether every mammogram was compared (``Prediction.finding_compared``; None without a
        comparison to make)."""
        import torch

        from .network import bilateral_offsets, finding_logits

        weight, cfg = float(self.config.bilateral_weight), self.config
        if weight <= 0 or "MG" not in enc:
            return {}, [], None
        e = enc["MG"]
        own = finding_logits(e.lesion_logits, cfg.finding_cell, cfg.finding_topk).float().cpu().tolist()
        sources = work["MG"].prepared.inputs["MG"].sources
        labels = [sources[int(slot)][0].label for slot in e.index[:, 1].tolist()]
        encoded = dict(zip(labels, own))
        contra, notes = [], []
        for label in labels:
            chosen = other_breast(study, study.image(label))
            if not chosen:
                contra.append(math.nan)
                notes.append(f"{label}: finding score not compared with the other breast (no film of it in "
                             "the study or its comparison images)")
                continue
            values = [encoded[o.label] if not c and o.label in encoded else self._alone_logit(o, cache)
                      for o, c in chosen]
            contra.append(sum(values) / len(values))
            names = ", ".join(o.label + (" (comparison image)" if c else "" if o.label in encoded
                                         else " (read for this comparison only)") for o, c in chosen)
            notes.append(f"{label}: finding score compared with the other breast ({names}; "
                         f"bilateral_weight {weight:g})")
        return ({"MG": bilateral_offsets(torch.tensor(contra), weight, self.finding_reference)}, notes,
                all(not math.isnan(c) for c in contra))

    def mg_suspicion(self, study: Study, cache: "PredictionCache | None" = None) -> dict[str, float]:
        """Each mammogram's finding logit, encoded alone, compared with the other breast when
        ``bilateral_weight`` > 0 (``f - w (c - r)``): how ``mg_select: "finding"`` ranks the
        films of a study that has more than the bundle's slots."""
        import torch

        from ..study import Modality
        from .network import bilateral_offsets

        cache = PredictionCache() if cache is None else cache
        weight = float(self.config.bilateral_weight)
        out = {}
        for im in study.of(Modality.MG):
            f = self._alone_logit(im, cache)
            chosen = other_breast(study, im) if weight > 0 else []
            if chosen:
                c = sum(self._alone_logit(o, cache) for o, _ in chosen) / len(chosen)
                f += float(bilateral_offsets(torch.tensor([c], dtype=torch.float64), weight,
                                             self.finding_reference)[0])
            out[im.label] = f
        return out

    def _alone_logit(self, image, cache: "PredictionCache") -> float:
        """The finding logit of ``image`` encoded alone (a film the prediction's slots left
        out, or a comparison image), kept in ``cache`` for later calls on the same study."""
        import torch

        from ..study import Study
        from .data import collate, inputs_item
        from .network import finding_logits
        from .preprocess import prepare_study

        key = id(image)
        if key not in cache.alone_logits:
            m, cfg = image.modality.value, self.config
            prep = prepare_study(Study("alone", images=[image]), cfg, modalities=(m,))
            batch = {k: v.to(self.device) for k, v in collate([inputs_item(prep)], share=True).items()}
            with torch.inference_mode(), self._autocast():
                enc = self.network.encode(batch)
                if cfg.tta_flip:
                    merge_flipped(enc, flip_encodings(self.network, enc, batch))
                cache.alone_logits[key] = float(
                    finding_logits(enc[m].lesion_logits, cfg.finding_cell, cfg.finding_topk)[0])
        return cache.alone_logits[key]

    def _autocast(self):
        import contextlib

        import torch

        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def _map_back(self, prepared, enc, sal, user_masks: dict, to_image_grid, study) -> dict[str, ImageOutput]:
        import torch

        from .preprocess import mask_on_grid

        thr = self.config.lesion_threshold
        refiner = self.network.refiner
        jobs = []
        for m, e in enc.items():
            probs = torch.sigmoid(e.lesion_logits.float()).cpu().numpy()
            sals = sal[m].float().cpu().numpy()
            jobs += [(m, probs[n, 0], sals[n, 0], slot) for n, (_, slot) in enumerate(e.index.cpu().numpy())]

        def one(job) -> list[ImageOutput]:  # one image slot (the slots side by side)
            m, prob, sal_map, slot = job
            inp = prepared.inputs[m]
            grid = inp.grids[slot]
            # MR sequences on one grid get one resampling and share the arrays
            mapped: dict = {}
            outs = []
            for src in inp.sources[slot]:
                key = (src.shape, src.geometry, src.frame)
                if key not in mapped:
                    def lesion_map(src=src, refinement=None) -> np.ndarray:
                        lp = to_image_grid(prob, grid, src)  # a new float32 array: clipped in place
                        np.clip(lp, 0.0, 1.0, out=lp)
                        if refinement is not None:
                            refinement.apply(lp[src.frame or 0])
                        return lp

                    lp = lesion_map()  # for the mask; mapped again if it is read (same values)
                    refinement = None
                    if refiner is not None and m in refiner.config.modalities:
                        refinement = self._refine(refiner, study.image(src.label), src, lp, thr)
                        if refinement is not None:
                            refinement.apply(lp[src.frame or 0])
                    mapped[key] = (LazyArray(lambda src=src, r=refinement: lesion_map(src, r)), float(lp.max()),
                                   to_image_grid(sal_map, grid, src),
                                   predicted_lesion_mask(lp, thr, self.config.lesion_mask_mode))
                    del lp
                lp, lp_max, sm, predicted = mapped[key]
                if src.label in user_masks:
                    mask = (np.asarray(user_masks[src.label]).reshape(src.shape) > 0).astype(np.uint8)
                    source = "user"
                elif prepared.mask_source.get(src.label) == "user":  # MR: the outline of another sequence
                    donor = next(s for s in inp.sources[slot] if s.label == prepared.mask_from[src.label])
                    mask = mask_on_grid(user_masks[donor.label], donor, src)
                    source = "user"
                else:
                    mask = predicted
                    source = "predicted"
                outs.append(ImageOutput(src.label, m, src.geometry, sm, mask, source, lp_max, lp))
            return outs

        return {o.label: o for outs in thread_map(one, jobs) for o in outs}

    def _refine(self, refiner, image, src, lesion_probability: np.ndarray, threshold: float):
        """The lesion refiner's map (:class:`~.refiner.Refinement`) of the frame of ``image``
        used by the network, around the locator's lesion there; ``None`` when there is none."""
        from .preprocess import intensity_range
        from .refiner import refine

        f = src.frame or 0
        plane = image.voxels[f]
        coarse = predicted_lesion_mask(lesion_probability[f:f + 1], threshold, self.config.lesion_mask_mode)[0]
        if not coarse.any():
            return None
        value_range = intensity_range(plane[None], self.config.intensity_percentiles)
        sx, sy = image.geometry.spacing_mm[:2]
        return refine(refiner, plane, coarse.astype(bool), lesion_probability[f], (sy, sx), value_range,
                      threshold, self.device)


def other_breast(study: Study, image) -> list[tuple]:
    """The films of the other breast to compare mammogram ``image`` with, as ``(film,
    is_comparison_image)``: the study's and its comparison images' mammograms of the other
    laterality, those of ``image``'s view when there are any; none when a laterality is
    unknown."""
    from ..study import Modality
    from .network import other_breast_films

    pool = [(im, c) for ims, c in ((study.images, False), (study.comparison, True))
            for im in ims if im.modality is Modality.MG]
    keys = [(o.role.laterality, o.role.view) for o, _ in pool]
    return [pool[i] for i in other_breast_films(image.role.laterality, image.role.view, keys)]


@dataclass
class _ModalityWork:
    """What :meth:`DiagnosisModel.predict` computed for one modality of one study."""

    prepared: object  # PreparedStudy of this modality alone
    batch: dict  # its batch tensors (on the model's device)
    encoding: object = None  # ModalityEncoding, as the encoder gave it
    encoding_flip: object = None  # tta_flip: the mirrored encoding (or the same object)
    images: dict | None = None  # label -> ImageOutput, on the image grids
    breast: object = None  # MG: where the saliency may point, per slot (preprocess.breast_support)


class PredictionCache:
    """Per-modality work of :meth:`DiagnosisModel.predict` on one study, reused by later
    calls: prepared inputs, encoder outputs and the maps on the image grids.

    It serves one model, one study, one ``lesion_masks`` object and one saliency method; a
    call with any other clears it. Images of a reused modality are the same
    :class:`ImageOutput` objects in both predictions.
    """

    def __init__(self):
        self._owner: tuple = ()
        self.work: dict[str, _ModalityWork] = {}
        #: id(image) -> finding logit of the image encoded alone (``mg_select``, bilateral)
        self.alone_logits: dict[int, float] = {}

    def prepare(self, model, study: Study, lesion_masks, modalities, saliency) -> dict[str, _ModalityWork]:
        """The work of ``modalities`` in network order, preparing the ones not yet done."""
        import torch

        from ..errors import InputError
        from .data import collate, inputs_item
        from .preprocess import breast_support, prepare_study, select_mr

        owner = (model, study, lesion_masks, saliency)
        if len(self._owner) != 4 or not all(a is b or (i == 3 and a == b)
                                            for i, (a, b) in enumerate(zip(self._owner, owner))):
            self._owner, self.work, self.alone_logits = owner, {}, {}
        for m in modalities:
            if m in self.work:
                continue
            has = bool(select_mr(study)[0]) if m == "MR" else any(
                im.modality.value == m for im in study.images)
            if not has:
                continue
            cfg = model.config
            suspicion = None
            if m == "MG" and cfg.mg_select == "finding" and len(study.of("MG")) > cfg.mg_max_views:
                suspicion = model.mg_suspicion(study, self)
            prep = prepare_study(study, cfg, lesion_masks=lesion_masks, modalities=(m,), mg_suspicion=suspicion)
            if suspicion is not None:
                prep.notes.append("mammograms ranked by finding score" + (
                    " compared with the other breast" if cfg.bilateral_weight > 0 else "") + ": "
                    + ", ".join(f"{k} {v:.2f}" for k, v in sorted(suspicion.items(), key=lambda kv: -kv[1])))
            batch = {k: v.to(model.device) for k, v in collate([inputs_item(prep)], share=True).items()}
            breast = breast_support(prep.inputs[m].images) if m == "MG" and saliency != "none" else None
            prep.inputs[m].images = None  # the batch holds them (the MRI input is ~100 MB)
            fmt = model.network.branches[m].memory_format
            if fmt is not torch.contiguous_format:  # the encoder's layout now: no copy of it later
                images = batch[f"{m}_images"]
                batch[f"{m}_images"] = images.flatten(0, 1).contiguous(memory_format=fmt).unflatten(
                    0, images.shape[:2])
                del images
            self.work[m] = _ModalityWork(prep, batch, breast=breast)
        work = {m: self.work[m] for m in MODALITIES if m in modalities and m in self.work}
        if not work:  # the usual error
            prepare_study(study, model.config, lesion_masks=lesion_masks, modalities=modalities)
            raise InputError(f"study {study.study_id} has none of the modalities {', '.join(modalities)}")
        return work


def fuse_variants(net, enc: dict, batch: dict, keeps: list[tuple[str, ...]]) -> dict:
    """``net.fuse`` of one study under several modality selections in one batched call.

    Variant ``k`` keeps the modalities ``keeps[k]`` (the others are masked out of the fusion,
    as ``keep`` of :meth:`~.network.DiagnosisNetwork.fuse` does). Returns
    ``malignancy_logit (K,)`` and ``subtype_logits (K, S)``; the same values as ``K`` separate
    calls up to float rounding (the studies of a batch do not interact).
    """
    import torch

    k = len(keeps)
    benc, bbatch = {}, {}
    for m, e in enc.items():
        n = e.index.shape[0]
        index = e.index.repeat(k, 1)
        index[:, 0] = torch.arange(k, device=index.device).repeat_interleave(n)
        benc[m] = dataclasses.replace(e, index=index, tokens=e.tokens.repeat(k, 1),
                                      aux_logit=e.aux_logit.expand(k),
                                      aux_present=e.aux_present.expand(k))
        bbatch[f"{m}_present"] = batch[f"{m}_present"].expand(k, -1)
    keep = {m: torch.tensor([m in kept for kept in keeps], dtype=torch.bool, device=e.index.device)
            for m, e in enc.items()}
    return net.fuse(benc, bbatch, keep)


#: Modalities mirrored left-right by the ``tta_flip`` test-time augmentation (mammograms keep
#: their canonical orientation, MRI is left alone).
TTA_FLIP_MODALITIES = ("US",)


def flip_encodings(net, enc: dict, batch: dict, crop_from_prediction=None) -> dict:
    """Encodings with the :data:`TTA_FLIP_MODALITIES` re-encoded from left-right mirrored
    images (and masks); the other modalities are shared with ``enc``. ``crop_from_prediction``
    as for :meth:`~.network.BindsNet.encode` (validation during training: never the reference
    masks)."""
    flipped = dict(enc)
    bsz = net.batch_size(batch)
    for m in TTA_FLIP_MODALITIES:
        if m not in enc:
            continue
        fb = dict(batch)
        fb[f"{m}_images"] = batch[f"{m}_images"].flip(-1)
        fb[f"{m}_masks"] = batch[f"{m}_masks"].flip(-1)
        flipped[m] = net.branches[m](fb, bsz, crop_from_prediction)
    return flipped


def merge_flipped(enc: dict, enc_flip: dict) -> None:
    """Average, in place, the lesion logits, projected feature maps and auxiliary logits of
    ``enc`` with those of the mirrored encodings (mapped back to the unflipped grid)."""
    for m in TTA_FLIP_MODALITIES:
        if m not in enc or enc_flip.get(m) is enc.get(m):
            continue
        e, f = enc[m], enc_flip[m]
        e.lesion_logits = (e.lesion_logits + f.lesion_logits.flip(-1)) / 2
        e.align_map = (e.align_map + f.align_map.flip(-1)) / 2
        e.aux_logit = (e.aux_logit + f.aux_logit) / 2


def predicted_lesion_mask(probability: np.ndarray, threshold: float, mode: str = "threshold") -> np.ndarray:
    """The predicted lesion mask (uint8) of a lesion probability map (see
    ``DiagnosisConfig.lesion_mask_mode``)."""
    if mode != "peak_component":
        return (probability >= threshold).view(np.uint8)  # 0 / 1, no second array
    peak = float(probability.max()) if probability.size else 0.0
    thr = min(threshold, max(0.5 * peak, 0.2))
    if peak < thr:
        return np.zeros(probability.shape, np.uint8)
    import SimpleITK as sitk

    sel = (probability >= thr).astype(np.uint8)
    squeeze = sel.ndim == 3 and sel.shape[0] == 1
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(sel[0] if squeeze else sel)))
    if squeeze:
        labels = labels[None]
    at = np.unravel_index(int(np.argmax(probability)), probability.shape)
    return (labels == labels[at]).astype(np.uint8)


def lesion_gated_saliency(saliency, lesion_probability):
    """``saliency_lesion_gate``: ``lesion_probability * (0.5 + 0.5 * saliency)`` (both in
    [0, 1]): the lesion the model found, weighted up to 2x where its features align with
    malignant pathology. With a flat (all-zero) saliency it is half the lesion probability."""
    return lesion_probability * (0.5 + 0.5 * saliency.clamp(0.0, 1.0))


def modality_names(modalities) -> tuple[str, ...]:
    """Normalise a modality list (``"MG,US"``, ``["mg", "us"]``) to the network's order."""
    if modalities is None:
        return MODALITIES
    if isinstance(modalities, str):
        modalities = modalities.split(",")
    wanted = {str(getattr(m, "value", m)).strip().upper() for m in modalities}
    return tuple(m for m in MODALITIES if m in wanted)
