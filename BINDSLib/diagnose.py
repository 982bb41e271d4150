"""Two-stage diagnosis of a study and its outputs (what ``binds diagnose`` and Slicer run).

Stage 1 uses ultrasound and/or mammography. When its malignancy probability falls inside the
bundle's uncertainty band (BINDS: 0.02-0.98) and MRI is present, stage 2 (all modalities)
replaces it; ``stage=2`` forces the full path (stage 1, then stage 2 whatever the band),
``stage=1`` never adds MRI. A study with only
MRI goes straight to stage 2.

Output folder of one study::

    report.json            schema binds.report v1 (deterministic)
    results.csv            one row
    timings.json           wall-clock seconds by part (not deterministic, kept apart)
    summary.png            images with lesion outline and saliency, key numbers
    <label>.seg.nrrd       per image: segments "lesion" and "salient_region", image grid
    <label>_saliency.nrrd  per image: continuous saliency in [0, 1], image grid
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import InputError, ModelError
from .fsutil import REPORT_SIGNS, atomic_dir, check_output_dir, json_dumps
from .outputs.report import DiagnosisReport, ImageOutput, StageResult, results_csv, told_apart
from .outputs.segmentation import read_seg_nrrd, write_seg_nrrd
from .study import Modality, Study, pseudonym
from .threads import thread_map
from .validation import check_study

log = logging.getLogger(__name__)

STAGE1_MODALITIES = (Modality.US, Modality.MG)
#: the salient region of an image: where its saliency is at least this share of its maximum ...
SALIENT_FRACTION = 0.5
#: ... when that maximum reaches this (alignment saliency is an absolute cosine with the malignant
#: prototype, 0-1: an image below it everywhere resembles it nowhere, and has no salient region)
SALIENT_FLOOR = 0.1


@dataclass
class DiagnoseOptions:
    stage: str = "auto"  # "auto", "1" or "2"
    device: str = "auto"
    keep_identifiers: bool = False
    overwrite: bool = False
    summary_png: bool = True
    #: the command's input files and folders (paths or a :class:`~BINDSLib.fsutil.Inputs`): an
    #: output folder may neither be nor hold one
    inputs: object = ()


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; a clear error for a missing GPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device} was asked for but no CUDA GPU is available (use --device auto or cpu)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise InputError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N)")
    return device


def load_lesion_masks(study: Study, assignments: Mapping[str, str | os.PathLike]) -> dict[str, np.ndarray]:
    """User lesion masks by image label (or role key) from mask images or edited ``.seg.nrrd``.

    A ``.seg.nrrd`` contributes its segment ``lesion`` (or its only segment); any other image
    file is a mask whose non-zero voxels are lesion, placed by its grid when its format has one
    (``files.read_mask_file``).
    """
    from .io.files import read_mask_file

    out: dict[str, np.ndarray] = {}
    by_key = {im.label: im for im in study.images}
    by_key.update({im.role.key: im for im in study.images if im.role.key not in by_key})
    for key, path in assignments.items():
        im = by_key.get(key)
        if im is None:
            raise InputError(f"no image {key!r} in study {study.study_id} for this lesion mask "
                             f"(images: {', '.join(i.label for i in study.images)})", path)
        if im.label in out:
            raise InputError(f"a second lesion mask for image {im.label} (given as {key!r}): give one per image", path)
        p = Path(path)
        if p.name.endswith(".seg.nrrd"):
            segs = read_seg_nrrd(p, im.geometry, im.shape)
            seg = segs.get("lesion") or (next(iter(segs.values())) if len(segs) == 1 else None)
            if seg is None:
                raise InputError(f"no 'lesion' segment (has {', '.join(segs)})", p)
            out[im.label] = seg.mask
        else:
            turned = im.source.reoriented if im.source is not None else None
            needs_grid = None if not turned else (
                f"{im.label} was stored otherwise than in the standard orientation and is read re-indexed "
                f"({turned}, from its PatientOrientation): a mask without a grid (PNG, JPEG, or a file whose "
                "grid is unset: 1 mm, origin 0) cannot say on which pixels it was drawn; give it with its "
                "grid (NRRD, NIfTI), or as a .seg.nrrd")
            out[im.label] = read_mask_file(p, im.shape, im.geometry, needs_grid=needs_grid)
    return out


def usable_modalities(model, study: Study) -> list[Modality]:
    """The study's modalities that ``model`` reads (a bundle trained on ultrasound alone has
    untrained MG and MR branches: those images are left out)."""
    readable = set(getattr(model, "modalities", None) or (m.value for m in Modality))
    return [m for m in study.modalities() if m.value in readable]


def _stage_modalities(present: list[Modality], stage: int) -> list[Modality]:
    if stage == 1:
        return [m for m in present if m in STAGE1_MODALITIES]
    return present


def _no_progress(done: int, total: int, message: str) -> None:
    return None


def run_stages(model, study: Study, stage: str, band: tuple[float, float], lesion_masks,
               progress=_no_progress):
    """Run stage 1 and, when needed, stage 2. Returns (stage results, predictions).

    ``progress(done, total, message)`` is called before each stage (total 4: read, stage 1,
    stage 2, write)."""
    from .model.inference import in_uncertainty_band

    if not study.modalities():
        raise InputError(f"study {study.study_id} has no images")
    present = usable_modalities(model, study)
    if not present:
        name = getattr(model, "summary", {}).get("name", "the model")
        raise InputError(f"{name} reads {'+'.join(model.modalities)} images; study "
                         f"{study.study_id} has only {', '.join(m.value for m in study.modalities())}")
    has_mr = Modality.MR in present
    has_stage1 = any(m in STAGE1_MODALITIES for m in present)
    if stage == "1" and not has_stage1:
        raise InputError(f"--stage 1 needs ultrasound or mammography; study {study.study_id} has "
                         f"only {', '.join(m.value for m in present)}")
    if stage == "2" and not has_mr:
        raise InputError(f"--stage 2 needs MRI the model reads; study {study.study_id} has "
                         f"{', '.join(m.value for m in present)} (use --stage auto or 1)")
    stages: list[StageResult] = []
    preds = []
    # stage 2 reuses stage 1's mammography / ultrasound work (same results: per-modality encoders)
    reuse = {"cache": model.prediction_cache()} if hasattr(model, "prediction_cache") else {}

    def run(n: int, message: str) -> None:
        progress(n, 4, message)
        mods = [m.value for m in _stage_modalities(present, n)]
        pred = model.predict(study, lesion_masks=lesion_masks, modalities=mods, **reuse)
        stages.append(StageResult(n, mods, float(pred.malignancy_probability),
                                  dict(pred.subtype_probabilities), dict(pred.contributions),
                                  pred.finding_probability))
        preds.append(pred)

    if has_stage1:
        run(1, "stage 1 (ultrasound / mammography)")
    if has_mr and (stage == "2" or not stages or (stage == "auto" and (
            mri_outlined(study, lesion_masks) or in_uncertainty_band(stages[-1].malignancy_probability, band)))):
        run(2, "stage 2 (with MRI)")
    return stages, preds


def mri_outlined(study: Study, lesion_masks) -> bool:
    """Whether the user outlined a lesion on one of the study's MR images (``lesion_masks`` by
    label; an empty mask outlines none): ``--stage auto`` then reads the MRI whatever stage 1 says (the rule of
    :func:`run_stages` and of ``binds evaluate``'s two-stage decision)."""
    return any(study.image(label).modality is Modality.MR and np.asarray(mask).any()
               for label, mask in (lesion_masks or {}).items())


def _lesion_source(label: str, user_masks, source: str) -> str:
    """"user": the image's outline is the user's own; "user_shared": an MR sequence that takes
    the outline given for another one (mapped onto its grid), which a re-assessment in Slicer
    does not pass back as the user's; "predicted" otherwise."""
    if label in user_masks:
        return "user"
    return "user_shared" if source == "user" else "predicted"


def probability_texts(p: float, threshold: float) -> tuple[str, str]:
    """``p`` and ``threshold`` written with as many decimals (3 to 8) as it takes to tell them
    apart (``0.4321`` and ``0.4324``, not ``0.432`` twice)."""
    return told_apart(p, threshold, 3, 8)


def recommendation(p: float, threshold: float) -> tuple[str, str]:
    """``(code, sentence)`` for a malignancy probability at the bundle's threshold. The numbers
    are written with as many decimals as it takes to tell them apart (``0.4321 < 0.4324``, not
    ``0.432 < 0.432``). A probability that is not a number is a :class:`ModelError`."""
    if not math.isfinite(p):
        raise ModelError(f"the model gave no malignancy probability ({p}); no recommendation can be made")
    ps, ts = probability_texts(p, threshold)
    if p >= threshold:
        return "biopsy", f"malignancy probability {ps} >= {ts}: biopsy recommended (research use only)"
    return "follow-up", (f"malignancy probability {ps} < {ts}: short-interval imaging "
                         "follow-up instead of biopsy may be considered (research use only)")


def salient_mask(saliency: np.ndarray) -> np.ndarray:
    """The salient region of an image's saliency map (uint8 0/1): at least
    :data:`SALIENT_FRACTION` of its maximum, none when the maximum is below :data:`SALIENT_FLOOR`.
    Relative, since the alignment saliency of a whole image rarely reaches an absolute 0.5
    (maxima of 0.2-0.6 on the shipped bundles); Grad-CAM maps (0-1 per image) keep their 0.5."""
    peak = float(saliency.max()) if saliency.size else 0.0
    if peak < SALIENT_FLOOR:
        return np.zeros(saliency.shape, np.uint8)
    return (saliency >= SALIENT_FRACTION * peak).view(np.uint8)  # 0 / 1, no second array


def diagnose_study(model, study: Study, out_dir: str | os.PathLike, options: DiagnoseOptions,
                   lesion_mask_files: Mapping[str, str | os.PathLike] | None = None,
                   progress=_no_progress, model_notes: tuple[str, ...] = ()) -> DiagnosisReport:
    """Diagnose one study and write its output folder atomically. Returns the report.

    ``progress(done, total, message)`` reports the steps (read, stage 1, stage 2, write).
    ``model_notes`` go into the report's notes (e.g. why ``--model auto`` chose the bundle)."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir, options.overwrite, options.inputs, REPORT_SIGNS)  # before the work
    t0 = time.perf_counter()
    warnings = check_study(study)
    user_masks = load_lesion_masks(study, lesion_mask_files or {})
    for label, mask in user_masks.items():
        if not mask.any():
            warnings.append(f"the lesion mask given for {label} is empty: no lesion is outlined on that image")
            log.warning("study %s: %s", study.study_id, warnings[-1])
    from .model.inference import in_uncertainty_band

    band = tuple(model.uncertainty_band)
    threshold = float(model.threshold)
    t_read = time.perf_counter() - t0
    stages, preds = run_stages(model, study, options.stage, band, user_masks, progress)
    progress(3, 4, "writing outputs")
    final, pred = stages[-1], preds[-1]
    rec, rec_detail = recommendation(final.malignancy_probability, threshold)
    pid = study.patient_id
    if pid and not options.keep_identifiers and not pid.startswith("anon-"):
        pid = pseudonym(pid)
    notes = list(model_notes) + list(warnings)
    for p in preds:  # what preprocessing left out (e.g. more views than the model takes)
        notes += [n for n in getattr(p, "notes", []) if n not in notes]
    metadata = getattr(model, "metadata", None) or {}
    if final.finding_probability is not None and "finding_temperature" not in (metadata.get("calibration") or {}):
        notes.append("finding probability not calibrated (the bundle has no finding calibration): it ranks "
                     "studies, it is no probability; binds calibrate --fit finding fits one on labelled studies")
    caution = metadata.get("caution")
    if caution:  # a bundle that did not meet its validation targets says so in every report
        notes.append(f"model caution: {caution}")
    readable = {m.value for m in usable_modalities(model, study)}
    unread = [im.label for im in study.images if im.modality.value not in readable]
    if unread:
        notes.append(f"not read by {model.summary.get('name', 'the model')} (trained on "
                     f"{'+'.join(model.modalities)} only): {', '.join(unread)}")
    used_masks = sorted(label for label in user_masks if study.image(label).modality.value in final.modalities)
    if used_masks:
        notes.append("re-assessed with user-edited lesion masks for: " + ", ".join(used_masks))
    if len(used_masks) < len(user_masks):
        notes.append("lesion masks of images not read (not used): "
                     + ", ".join(sorted(set(user_masks) - set(used_masks))))
    p1, both = stages[0].malignancy_probability, len(stages) == 2 and stages[0].stage == 1
    inside = in_uncertainty_band(p1, band)
    where = f"stage 1 probability {p1:.3f} {'inside' if inside else 'outside'} the uncertainty band {band[0]:g}-{band[1]:g}"
    if both and options.stage != "auto":
        notes.append("stage 2 asked for: the MRI was read whatever stage 1 said")
    elif both:  # read for the band, or for the user's MR outline
        why = "" if inside else "; the MRI was read because a lesion was outlined on it"
        notes.append(f"{where}{why}: stage 2 with MRI replaces it")
    elif options.stage == "auto" and "MR" in readable and stages[0].stage == 1:
        notes.append(f"{where}: the MRI was not read (--stage 2 reads it)")
    t1 = time.perf_counter()
    with atomic_dir(out_dir, overwrite=options.overwrite, inputs=options.inputs, signs=REPORT_SIGNS) as tmp:
        from .studyfolder import write_nrrd

        images = []
        used = set(final.modalities)
        # a modality or an image the model did not read is left out (see the notes)
        shown = [im for im in study.images if im.modality.value in used and im.label in pred.lesion_masks]
        # the saliency written (and shown in the summary) is float32 in [0, 1], as the model
        # gives it: clipped for safety in place, where it is the prediction's own float32 array
        # (before, a clipped copy per image was made while the files were written, when the
        # full-size maps are all held: the peak of a diagnosis)
        clipped: dict[int, np.ndarray] = {}
        for label, out in pred.images.items():
            sal = out.saliency
            if id(sal) not in clipped:
                if isinstance(sal, np.ndarray) and sal.dtype == np.float32 and sal.flags.writeable:
                    clipped[id(sal)] = np.clip(sal, 0, 1, out=sal)
                else:
                    clipped[id(sal)] = np.clip(np.asarray(sal, dtype=np.float32), 0, 1)
            out.saliency = clipped[id(sal)]
        del clipped
        # images that share their maps and grid (MR sequences): the files are written once
        # and copied (byte-identical to writing each)
        key = {im.label: (id(pred.lesion_masks[im.label]), id(pred.saliency[im.label]), im.geometry,
                          im.shape, im.role.laterality) for im in shown}
        first: dict = {}
        for im in shown:
            first.setdefault(key[im.label], im)

        def write_maps(im):  # the files of one image
            sal = pred.saliency[im.label]  # clipped above
            salient = salient_mask(sal)
            write_seg_nrrd(tmp / f"{im.label}.seg.nrrd",
                           {"lesion": pred.lesion_masks[im.label], "salient_region": salient},
                           im.geometry, laterality=im.role.laterality)
            write_nrrd(tmp / f"{im.label}_saliency.nrrd", sal, im.geometry)
            return salient

        jobs = [lambda im=im: write_maps(im) for im in first.values()]
        if options.summary_png:  # first: the longest job
            jobs.insert(0, lambda: _write_summary(tmp / "summary.png", study, shown, pred, final,
                                                  threshold, rec, notes, model))
        # the images' files and the summary picture side by side (compression releases the GIL)
        done = thread_map(lambda job: job(), jobs)
        written = dict(zip(first, done[1:] if options.summary_png else done))
        for im in shown:
            label = im.label
            lesion = pred.lesion_masks[label]
            seg_name, sal_name = f"{label}.seg.nrrd", f"{label}_saliency.nrrd"
            salient, source = written[key[label]], first[key[label]]
            if source is not im:
                shutil.copyfile(tmp / f"{source.label}.seg.nrrd", tmp / seg_name)
                shutil.copyfile(tmp / f"{source.label}_saliency.nrrd", tmp / sal_name)
            # a mammogram or an ultrasound image (a cine's maps lie on one frame): its area in
            # mm^2, i.e. the volume of a 1 mm slab; an MR volume: its volume
            voxel_mm3 = float(np.prod(im.geometry.spacing_mm[:2] if im.modality.value in ("MG", "US")
                                      else im.geometry.spacing_mm))
            images.append(ImageOutput(label, im.role.key, im.modality.value, seg_name, sal_name,
                                      _lesion_source(label, user_masks, pred.images[label].lesion_mask_source),
                                      float(lesion.sum()) * voxel_mm3,
                                      float(salient.sum()) * voxel_mm3,
                                      pred.images[label].lesion_probability_max))
        report = DiagnosisReport(
            study_id=study.study_id, patient_id=pid,
            study_date=None if study.study_date is None else study.study_date.isoformat(),
            synthetic=study.synthetic, stage=final.stage, stages=stages,
            malignancy_probability=final.malignancy_probability,
            subtype_probabilities=final.subtype_probabilities, contributions=final.contributions,
            threshold=threshold, uncertainty_band=band, recommendation=rec,
            recommendation_detail=rec_detail, user_lesion_masks=used_masks, images=images,
            model={k: v for k, v in model.summary.items() if k != "path"},
            inputs=[{"label": im.label, "role": im.role.key, "modality": im.modality.value,
                     "shape": list(im.shape), "spacing_mm": list(im.geometry.spacing_mm)}
                    for im in study.images],
            notes=notes)
        doc = report.to_json()
        (tmp / "report.json").write_text(json_dumps(doc), encoding="utf-8")
        (tmp / "results.csv").write_text(results_csv([report.result_row()]), encoding="utf-8")
        timings = {"read_s": t_read, "inference_s": t1 - t0 - t_read, "write_s": time.perf_counter() - t1,
                   "total_s": time.perf_counter() - t0}
        for n, p in enumerate(preds):
            for k, v in p.timings_s.items():
                timings[f"stage{stages[n].stage}_{k}"] = v
        (tmp / "timings.json").write_text(json_dumps(timings), encoding="utf-8")
    progress(4, 4, "done")
    return report


def _write_summary(path: Path, study: Study, shown, pred, final: StageResult, threshold: float,
                   rec: str, notes: list[str], model) -> None:
    """The summary PNG: each image read with its lesion outline and saliency, the key numbers."""
    from .outputs.summary import write_summary_png

    ps, ts = probability_texts(final.malignancy_probability, threshold)
    lines = [f"stage {final.stage}  malignancy probability {ps}  (threshold {ts})  -> {rec}"]
    if final.finding_probability is not None:
        lines.append(f"finding probability (abnormal vs normal) {final.finding_probability:.3f}")
    if final.subtype_probabilities:
        lines.append("subtype if malignant: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}"
                                             for k, v in final.subtype_probabilities.items()))
    if final.contributions:
        lines.append("contributions: " + ", ".join(f"{k} {v:.2f}" for k, v in final.contributions.items()))
    lines += notes
    lines.append(f"model {model.summary.get('name', '?')} {model.summary.get('version', '')} - research use only")
    # saliency drawn from 0.25 up: values outside [0, 1] look as the clipped map written
    panels = [{"label": im.label, "voxels": im.voxels, "lesion": pred.lesion_masks[im.label],
               "saliency": pred.saliency[im.label],
               "aspect": im.geometry.spacing_mm[1] / im.geometry.spacing_mm[0]} for im in shown]
    write_summary_png(path, panels, lines,
                      f"BINDS - study {study.study_id}" + (" (SYNTHETIC)" if study.synthetic else ""))


def is_finished(out_dir: Path) -> bool:
    return (Path(out_dir) / "report.json").is_file()


def remove_stale(out_dir: Path) -> None:
    """Remove temporary folders a killed run left beside ``out_dir``."""
    for p in Path(out_dir).parent.glob(f".{Path(out_dir).name}.*.part"):
        shutil.rmtree(p, ignore_errors=True)
