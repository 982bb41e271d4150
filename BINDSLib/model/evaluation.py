"""Evaluation of a diagnosis model on labelled studies (``binds evaluate``).

Writes to the output folder:

* ``metrics.json`` (schema ``binds.diagnosis_evaluation`` v2): ``n`` and class counts; ``auc``
  (malignant vs benign) with ``auc_ci95`` (stratified bootstrap); with normal cases also
  ``auc_malignant_vs_rest``, ``auc_abnormal`` with ``auc_abnormal_ci95`` (abnormal - benign or
  malignant - vs normal, by the finding probability: the model's answer to "is there a
  finding?"), ``auc_abnormal_malignancy`` (the same by the malignancy probability; version 1
  called this ``auc_abnormal``) and ``auc_abnormal_lesion_score`` (by the highest lesion
  probability); ``ece_finding`` and ``brier_finding`` of the finding probability against
  "abnormal", with ``brier_finding_base_rate`` (the Brier score of always saying the rate) -
  the finding-probability figures leave out studies without one, counted in
  ``n_auc_abnormal_left_out``; with a bundle that compares each mammogram with the other
  breast, ``n_finding_compared`` and ``n_finding_not_compared`` (studies with a mammogram
  that had no film of the other breast, scored alone); ``sensitivity``, ``specificity`` and
  ``threshold`` at the bundle's operating point (malignant vs all other labelled cases);
  ``ece``; ``subtype_macro_auc`` when subtype labels exist; ``lesion_dice`` when reference
  masks exist, with ``lesion_dice_ci95`` (bootstrap over images); ``pointing_game`` (share of lesion images whose saliency maximum lies in the lesion
  mask or finding circle) with ``pointing_game_ci95`` (Wilson score interval; both intervals
  treat the images as independent, as they are with one image per study);
  ``biopsy_reduction``; ``auc_by_combination`` with ``--combinations``; ``by_finding`` when
  the studies carry finding types (mini-MIAS's CIRC, SPIC, CALC, ...;
  ``Finding.abnormality``): per type ``n``, with normal studies its studies' ``auc_abnormal``
  (with CI) against all normal ones, and their ``pointing_game`` (see :func:`_by_finding`).
  With ``given_masks`` the reference lesion masks are passed as user masks (lesions localised
  by a reader); ``lesion_dice`` is then left out.
* ``predictions.csv`` - one row per study, with its raw ``malignancy_logit`` and
  ``finding_logit``, ``finding_compared`` (1/0: every mammogram compared with the other
  breast or not; blank when the bundle makes no comparison), its finding types
  (``findings``, ``;``-separated), its ``lesion_dice`` and ``pointing_hit`` (mean over its
  images with a reference lesion; blank without one), and per finding type ``pointing_hit_<type>`` (the same against that type's findings).
* ``roc.png``, ``reliability.png`` (see :mod:`.plots`).

Biopsy reduction: the benign and malignant lesions are split (stratified, seeded) into a
calibration and a test half; the threshold keeping sensitivity >= the target (default 0.98)
on the calibration half is applied to the test half, where the share of benign lesions below
it would be spared biopsy. The CI resamples both halves (the threshold varies too).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import InputError
from ..fsutil import atomic_dir, json_dumps
from ..study import Study
from .config import COMBINATIONS, MODALITIES, SUBTYPES
from .data import study_abnormal, study_labels
from .metrics import finite_json

log = logging.getLogger(__name__)

SCHEMA = "binds.diagnosis_evaluation"
SCHEMA_VERSION = 2


def _circles(image, findings) -> np.ndarray | None:
    """The image-shaped mask of the ``findings``' circles that have coordinates; None if none."""
    circles = [f for f in findings if f.center_col is not None and f.center_row is not None and f.radius_px]
    if not circles:
        return None
    _, rows, cols = image.shape
    rr, cc = np.ogrid[:rows, :cols]
    m = np.zeros((rows, cols), bool)
    for f in circles:
        m |= (rr - f.center_row) ** 2 + (cc - f.center_col) ** 2 <= f.radius_px ** 2
    return np.broadcast_to(m[None], image.shape) if m.any() else None


def _lesion_reference(image) -> np.ndarray | None:
    """The reference lesion of an image: its mask, else its finding circles; None if none."""
    if image.lesion_mask is not None and image.lesion_mask.any():
        return image.lesion_mask
    return _circles(image, image.findings)


def _type_references(image, reference: np.ndarray) -> dict[str, np.ndarray]:
    """Per finding type of the image, the reference its pointing game is scored against: the
    image's whole ``reference`` when the image has findings of that one type only, else the
    circles of that type's findings (a type without a circle on an image with other types is
    left out: its place is unknown)."""
    types = sorted({f.abnormality for f in image.findings if f.abnormality})
    if len(types) == 1:
        return {types[0]: reference}
    refs = {t: _circles(image, [f for f in image.findings if f.abnormality == t]) for t in types}
    return {t: r for t, r in refs.items() if r is not None}


def reference_masks(study: Study) -> dict[str, np.ndarray]:
    """The study's own non-empty lesion masks by image label (to pass as ``lesion_masks``)."""
    return {im.label: im.lesion_mask for im in study.images
            if im.lesion_mask is not None and im.lesion_mask.any()}


def finding_types(study: Study) -> str:
    """The study's finding types (``Finding.abnormality``, e.g. mini-MIAS's CIRC, CALC),
    sorted and joined by ``;``; empty when it has none."""
    return ";".join(sorted({f.abnormality for im in study.images for f in im.findings if f.abnormality}))


def predict_dataset(model, studies: Iterable[Study], combinations: bool = False,
                    saliency: str = "alignment", given_masks: bool = False,
                    skipped: list | None = None) -> tuple[list[dict], list[float], list[bool]]:
    """Predict every study; returns ``(rows, dice values, pointing hits)``.

    Studies with no image of a modality the model reads (e.g. MG-only studies for an
    ultrasound bundle) are left out, their IDs appended to ``skipped`` when given.

    ``given_masks``: the reference lesion masks are passed as user masks (the lesion is
    localised by a reader, as when masks are drawn or edited in Slicer); no Dice then.
    """
    rows, dices, hits = [], [], []
    from .metrics import dice, pointing_hit

    t0 = time.perf_counter()
    readable = set(getattr(model, "modalities", MODALITIES))
    seen: set[str] = set()
    for n, study in enumerate(studies, 1):
        if study.study_id in seen:  # it would be counted twice (e.g. two study folders with one ID)
            raise InputError(f"study ID {study.study_id!r} occurs twice in the data; give each study its own ID")
        seen.add(study.study_id)
        if not any(im.modality.value in readable for im in study.images):
            log.warning("study %s: no %s image for this model; left out", study.study_id, "/".join(sorted(readable)))
            if skipped is not None:
                skipped.append(study.study_id)
            continue
        malignant, subtype = study_labels(study)
        masks = reference_masks(study) if given_masks else None
        reuse = {"cache": model.prediction_cache()} if hasattr(model, "prediction_cache") else {}
        pred = model.predict(study, lesion_masks=masks, saliency=saliency, combinations=combinations, **reuse)
        staged = _staged_decision(model, study, pred, masks, saliency, reuse)
        lesion_score = max(o.lesion_probability_max for o in pred.images.values())
        row = {"study_id": study.study_id,
               "diagnosis": study.diagnosis.value if study.diagnosis else "",
               "malignant": malignant, "abnormal": study_abnormal(study),
               "findings": finding_types(study),
               "subtype": SUBTYPES[subtype] if subtype >= 0 else "",
               "malignancy_probability": pred.malignancy_probability,
               "finding_probability": pred.finding_probability,
               "malignancy_logit": pred.malignancy_logit, "finding_logit": pred.finding_logit,
               "finding_compared": "" if pred.finding_compared is None else int(pred.finding_compared),
               "predicted_malignant": int(pred.malignancy_probability >= model.threshold)
               if math.isfinite(pred.malignancy_probability) else "",
               **staged,
               "lesion_score": lesion_score, "modalities": "+".join(pred.modalities)}
        row.update({f"p_{k}": v for k, v in pred.subtype_probabilities.items()})
        row.update({f"contribution_{k}": v for k, v in pred.contributions.items()})
        row.update({f"p_combo_{k}": v for k, v in pred.combination_probabilities.items()})
        rows.append(row)
        study_dice, study_hits, type_hits = [], [], {}
        # the MR sequences of one grid share one predicted lesion map and one saliency map:
        # each counts once (given masks are copies per sequence; the saliency is still shared)
        seen_masks, seen_maps = set(), set()
        for label, out in pred.images.items():
            image = study.image(label)
            ref = _lesion_reference(image)
            if ref is None:
                continue
            if image.lesion_mask is not None and not given_masks and id(out.lesion_mask) not in seen_masks:
                seen_masks.add(id(out.lesion_mask))
                study_dice.append(dice(out.lesion_mask, ref))
            if saliency != "none" and id(out.saliency) not in seen_maps:
                seen_maps.add(id(out.saliency))
                study_hits.append(pointing_hit(out.saliency, ref))
                for t, tref in _type_references(image, ref).items():
                    type_hits.setdefault(t, []).append(pointing_hit(out.saliency, tref))
        dices += study_dice
        hits += study_hits
        # per study (mean over its images with a reference lesion; blank without one), and per
        # finding type of the study (the by-finding pointing game)
        row["lesion_dice"] = float(np.mean(study_dice)) if study_dice else math.nan
        row["pointing_hit"] = float(np.mean(study_hits)) if study_hits else math.nan
        if saliency != "none":  # a type with no reference of its own here has no hit (NaN)
            row.update({f"pointing_hit_{t}": float(np.mean(type_hits[t])) if t in type_hits else math.nan
                        for t in filter(None, row["findings"].split(";"))})
        if n % 50 == 0:
            log.info("evaluated %d studies (%.1f s/study)", n, (time.perf_counter() - t0) / n)
    return rows, dices, hits


def _staged_decision(model, study: Study, pred, masks, saliency: str, reuse: dict) -> dict:
    """The decision ``binds diagnose --stage auto`` makes for ``study``: stage 1 (mammography and
    ultrasound), then stage 2 with the MRI only when stage 1's probability lies inside the
    bundle's uncertainty band or a lesion is given on the MRI (``masks``: ``--given-masks``).
    ``pred`` is the prediction from every modality (stage 2's)."""
    from ..diagnose import _stage_modalities, mri_outlined, usable_modalities
    from ..study import Modality
    from .inference import DEFAULT_UNCERTAINTY_BAND, in_uncertainty_band

    present = usable_modalities(model, study)
    first = _stage_modalities(present, 1)
    p_all = float(pred.malignancy_probability)
    z1 = math.nan  # stage 1's own logit: only where there are two stages
    if first and Modality.MR in present:
        one = model.predict(study, lesion_masks=masks, modalities=[m.value for m in first],
                            saliency=saliency, **reuse)
        p1, z1 = float(one.malignancy_probability), float(one.malignancy_logit)
        second = mri_outlined(study, masks) or in_uncertainty_band(
            p1, getattr(model, "uncertainty_band", DEFAULT_UNCERTAINTY_BAND))
    else:  # one stage only: stage 1 without MRI, or stage 2 for an MRI-only study
        p1, second = (p_all if first else math.nan), not first
    p = p_all if second else p1
    return {"stage1_probability": p1, "stage1_logit": z1, "stage2_used": int(second),
            "decision_probability": p, "decision": int(p >= model.threshold) if math.isfinite(p) else ""}


def compute_metrics(rows: list[dict], threshold: float, target_sensitivity: float = 0.98,
                    n_bootstrap: int = 1000, seed: int = 0, dices=(), hits=(),
                    combinations: bool = False) -> dict:
    """The metrics of ``metrics.json`` from prediction rows (see module docstring)."""
    from .metrics import auc, bootstrap_ci, ece, macro_auc, sensitivity_specificity, wilson_ci

    p = np.array([r["malignancy_probability"] for r in rows], dtype=float)
    y = np.array([r["malignant"] for r in rows], dtype=float)
    # a study's labels as training reads them: a pathology record without a diagnosis is a lesion
    ab = np.array([r.get("abnormal", math.nan) for r in rows], dtype=float)
    unscored = ~np.isfinite(p)  # (a failed prediction: left out of the figures, and counted)
    labelled = np.isfinite(y) & ~unscored
    lesion = labelled & (ab == 1)
    m: dict = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "n": len(rows),
               "n_malignant": int((y == 1).sum()), "n_benign": int(((y == 0) & (ab == 1)).sum()),
               "n_normal": int((ab == 0).sum()), "n_unlabelled": int((~np.isfinite(y)).sum())}
    if unscored.any():
        m["n_no_probability"] = int(unscored.sum())
    yl, pl = y[lesion].astype(int), p[lesion]
    m["auc"] = auc(pl, yl)
    m["auc_ci95"] = list(bootstrap_ci(auc, pl, yl, n=n_bootstrap, seed=seed, stratify=yl))
    if m["n_normal"]:
        ya, pa = y[labelled].astype(int), p[labelled]
        m["auc_malignant_vs_rest"] = auc(pa, ya)
        abnormal = ab[labelled].astype(int)
        pf = np.array([r.get("finding_probability", math.nan) for r in rows], dtype=float)[labelled]
        ok = np.isfinite(pf)  # a study without a finding probability is left out, and counted
        m["auc_abnormal"] = auc(pf[ok], abnormal[ok])
        m["auc_abnormal_ci95"] = list(bootstrap_ci(auc, pf[ok], abnormal[ok], n=n_bootstrap, seed=seed,
                                                   stratify=abnormal[ok]))
        if not ok.all():
            m["n_auc_abnormal_left_out"] = int((~ok).sum())
        m["auc_abnormal_malignancy"] = auc(pa, abnormal)
        m["auc_abnormal_malignancy_ci95"] = list(bootstrap_ci(auc, pa, abnormal, n=n_bootstrap, seed=seed,
                                                              stratify=abnormal))
        ls = np.array([r["lesion_score"] for r in rows], dtype=float)[labelled]
        m["auc_abnormal_lesion_score"] = auc(ls[np.isfinite(ls)], abnormal[np.isfinite(ls)])
        if ok.any():  # how well the finding probability matches the finding rate
            rate = float(abnormal[ok].mean())
            m["ece_finding"] = ece(pf[ok], abnormal[ok])
            m["brier_finding"] = float(np.mean((pf[ok] - abnormal[ok]) ** 2))
            m["brier_finding_base_rate"] = rate * (1 - rate)
    compared = [r.get("finding_compared", "") for r in rows]
    if any(v in (0, 1) for v in compared):  # a bundle comparing each mammogram with the other breast
        m["n_finding_compared"] = sum(1 for v in compared if v == 1)
        m["n_finding_not_compared"] = sum(1 for v in compared if v == 0)
    by = _by_finding(rows, labelled, n_bootstrap, seed)
    if by:
        m["by_finding"] = by
    sens, spec = sensitivity_specificity(p[labelled], y[labelled].astype(int), threshold)
    m.update({"threshold": threshold, "sensitivity": sens, "specificity": spec,
              "ece": ece(p[labelled], y[labelled])})
    if all("decision_probability" in r for r in rows):  # the two-stage decision, as diagnose makes it
        pd = np.array([r["decision_probability"] for r in rows], dtype=float)
        ok = np.isfinite(y) & np.isfinite(pd) & ~unscored  # (a failed prediction: left out here too)
        s2 = np.array([r["stage2_used"] for r in rows], dtype=int)
        d_sens, d_spec = sensitivity_specificity(pd[ok], y[ok].astype(int), threshold)
        m["staged"] = {"sensitivity": d_sens, "specificity": d_spec, "n_stage2": int(s2[ok].sum()),
                       "stage2_share": float(s2[ok].mean()) if ok.any() else None}
    st = np.array([SUBTYPES.index(r["subtype"]) if r["subtype"] else -1 for r in rows])
    has_probs = all(f"p_{s}" in r for r in rows for s in SUBTYPES)  # not when the bundle has no subtype head
    if has_probs:
        probs = np.array([[r[f"p_{s}"] for s in SUBTYPES] for r in rows], dtype=float)
        sel = (st >= 0) & ~unscored & np.isfinite(probs).all(1)
        if sel.sum() >= 2 and len(np.unique(st[sel])) >= 2:
            m["subtype_macro_auc"] = macro_auc(probs[sel], st[sel], len(SUBTYPES))
            m["n_subtype"] = int(sel.sum())
    if len(dices):
        m["lesion_dice"] = float(np.mean(dices))
        m["lesion_dice_ci95"] = list(bootstrap_ci(np.mean, np.asarray(dices, float), n=n_bootstrap, seed=seed))
        m["n_lesion_dice"] = len(dices)
    if len(hits):
        m["pointing_game"] = float(np.mean(hits))
        m["pointing_game_ci95"] = list(wilson_ci(int(np.sum(hits)), len(hits)))
        m["n_pointing_game"] = len(hits)
    m["biopsy_reduction"] = biopsy_analysis(pl, yl, target_sensitivity, n_bootstrap, seed)
    if combinations:
        by = {}
        for combo in COMBINATIONS:
            key = "+".join(combo)
            vals = np.array([r.get(f"p_combo_{key}", math.nan) for r in rows], dtype=float)
            ok = lesion & np.isfinite(vals)
            by[key] = {"n": int(ok.sum()), "auc": auc(vals[ok], y[ok].astype(int))}
            if ok.sum() and len(np.unique(y[ok])) == 2:
                by[key]["auc_ci95"] = list(bootstrap_ci(auc, vals[ok], y[ok].astype(int), n=n_bootstrap,
                                                        seed=seed, stratify=y[ok].astype(int)))
        m["auc_by_combination"] = by
    return finite_json(m)


def _by_finding(rows: list[dict], labelled: np.ndarray, n_bootstrap: int, seed: int) -> dict:
    """Per finding type (the rows' ``findings``) of the labelled abnormal studies: ``n``; with
    normal studies, ``auc_abnormal`` (with CI) of the type's studies against every normal one
    by the finding probability (non-finite probabilities left out); and the type's
    ``pointing_game``, the mean of its studies' ``pointing_hit_<type>`` (the saliency maximum
    in that type's circles, see :func:`_type_references`), with a Wilson interval when every
    study's hit is 0 or 1. Empty without types."""
    from .metrics import auc, bootstrap_ci, wilson_ci

    lab = [r for r, ok in zip(rows, labelled) if ok]
    normal = np.array([r.get("abnormal") == 0 for r in lab], bool)
    pf = np.array([r.get("finding_probability", math.nan) for r in lab], dtype=float)
    types = [set(filter(None, str(r.get("findings") or "").split(";"))) for r in lab]
    by = {}
    for t in sorted(set().union(*types)):
        has = np.array([t in ts and r.get("abnormal") == 1 for ts, r in zip(types, lab)], bool)
        if not has.any():
            continue
        entry: dict = {"n": int(has.sum())}
        keep = (has | normal) & np.isfinite(pf)
        if (keep & normal).any() and (keep & has).any():
            y = has[keep].astype(int)
            entry["auc_abnormal"] = auc(pf[keep], y)
            entry["auc_abnormal_ci95"] = list(bootstrap_ci(auc, pf[keep], y, n=n_bootstrap, seed=seed, stratify=y))
        hits = np.array([r.get(f"pointing_hit_{t}", math.nan) for r, h in zip(lab, has) if h], float)
        hits = hits[np.isfinite(hits)]
        if hits.size:
            entry.update(pointing_game=float(hits.mean()), n_pointing_game=int(hits.size))
            if np.isin(hits, (0.0, 1.0)).all():  # a proportion of studies
                entry["pointing_game_ci95"] = list(wilson_ci(int(hits.sum()), int(hits.size)))
        by[t] = entry
    return by


def biopsy_analysis(scores, labels, target: float = 0.98, n_bootstrap: int = 1000,
                    seed: int = 0, calibration_fraction: float = 0.5) -> dict:
    """Biopsy reduction at sensitivity >= ``target`` with a calibration/test split and CI."""
    from .metrics import biopsy_reduction

    s, y = np.asarray(scores, float), np.asarray(labels, int)
    if len(np.unique(y)) < 2 or min((y == 0).sum(), (y == 1).sum()) < 2:
        return {"target_sensitivity": target, "note": "needs at least 2 benign and 2 malignant lesions"}
    rng = np.random.default_rng(seed)
    cal = np.zeros(len(y), bool)
    for v in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == v))
        cal[idx[: max(1, int(round(calibration_fraction * len(idx))))]] = True
    res = biopsy_reduction(s[cal], y[cal], s[~cal], y[~cal], target)
    values = []
    ci_idx = [np.flatnonzero(cal & (y == v)) for v in (0, 1)] + [np.flatnonzero(~cal & (y == v)) for v in (0, 1)]
    for _ in range(n_bootstrap):
        pick = [rng.choice(ix, len(ix)) for ix in ci_idx]
        c, t = np.concatenate(pick[:2]), np.concatenate(pick[2:])
        values.append(biopsy_reduction(s[c], y[c], s[t], y[t], target)["spared_fraction"])
    values = [v for v in values if np.isfinite(v)]
    res.update({"target_sensitivity": target, "n_calibration": int(cal.sum()),
                "n_test": int((~cal).sum()),
                "spared_fraction_ci95": [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]
                if values else [None, None]})
    return res


def write_predictions_csv(path: Path, rows: list[dict]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else
                            ("" if isinstance(v, float) else v)) for k, v in r.items()})


def evaluate(model, studies: Iterable[Study], out_dir: str | os.PathLike, *,
             target_sensitivity: float = 0.98, n_bootstrap: int = 1000, seed: int = 0,
             combinations: bool = False, saliency: str = "alignment", overwrite: bool = False,
             given_masks: bool = False, extra: dict | None = None) -> dict:
    """Evaluate ``model`` (a :class:`~.inference.DiagnosisModel`) on labelled ``studies``.

    Writes ``out_dir`` atomically (see module docstring) and returns the metrics.
    """
    from .metrics import reliability_bins, roc_points
    from .plots import reliability_png, roc_png

    t0 = time.perf_counter()
    left_out: list[str] = []
    rows, dices, hits = predict_dataset(model, studies, combinations, saliency, given_masks, left_out)
    if not rows:  # named by where they came from (binds evaluate's source), and why
        source = (extra or {}).get("data")
        cases = (extra or {}).get("cases")
        why = (f"; {len(left_out)} had no image {model.summary.get('name', 'the model')} reads"
               if left_out else " (the data hold no study, or --cases lists none of them)")
        raise InputError(f"no studies to evaluate{why}", f"{source} (cases {cases})" if cases else source)
    metrics = compute_metrics(rows, model.threshold, target_sensitivity, n_bootstrap, seed,
                              dices, hits, combinations)
    metrics["model"] = model.summary
    metrics["lesion_masks"] = "reference masks given" if given_masks else "predicted"
    metrics["n_left_out_unreadable"] = len(left_out)  # studies without a modality the model reads
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    metrics.update(extra or {})
    p = np.array([r["malignancy_probability"] for r in rows])
    y = np.array([r["malignant"] for r in rows], float)
    lesion = np.array([r.get("abnormal") == 1 for r in rows]) & np.isfinite(y) & np.isfinite(p.astype(float))
    with atomic_dir(out_dir, overwrite=overwrite, signs=("metrics.json",)) as tmp:
        (tmp / "metrics.json").write_text(json_dumps(metrics), encoding="utf-8")
        write_predictions_csv(tmp / "predictions.csv", rows)
        curves = {}
        if len(np.unique(y[lesion])) == 2:
            fpr, tpr, _ = roc_points(p[lesion], y[lesion].astype(int))
            curves[f"malignant vs benign (AUC {metrics['auc']:.3f})"] = (fpr, tpr)
        if combinations:
            for key in metrics.get("auc_by_combination", {}):
                vals = np.array([r.get(f"p_combo_{key}", math.nan) for r in rows], float)
                ok = lesion & np.isfinite(vals)
                if len(np.unique(y[ok])) == 2:
                    fpr, tpr, _ = roc_points(vals[ok], y[ok].astype(int))
                    curves[key] = (fpr, tpr)
        roc_png(tmp / "roc.png", curves, "ROC: malignancy")
        ok = np.isfinite(y) & np.isfinite(p.astype(float))
        reliability_png(tmp / "reliability.png", reliability_bins(p[ok], y[ok]),
                        f"Reliability (ECE {metrics.get('ece') or float('nan'):.3f})")
    return metrics
