"""Training data: labelled studies to cached network inputs, augmentation, batches.

* :func:`study_labels` - malignancy / subtype / pathology targets of a study.
* :func:`make_sample` - a study prepared once (:func:`~.preprocess.prepare_study`, reference
  lesion masks included) and kept in memory as float16.
* :class:`StudyDataset` - a ``torch.utils.data.Dataset`` of samples with MONAI augmentation
  (random affine, flips where anatomy allows, noise, contrast; optionally a finding of another
  film pasted into a normal mammogram, :mod:`.paste`), deterministic per ``(seed, epoch,
  index)`` so runs and resumed runs see the same augmentations.
* :func:`collate` - samples to the batch layout of :class:`~.network.DiagnosisNetwork`.
* :func:`modality_keep` - random modality dropout for the fusion (BINDS: with p=0.5, one or
  two of the available modalities, at least one kept).
* :func:`split_groups` - a stratified split that keeps each group (woman, duplicate group)
  on one side.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from ..study import Diagnosis, Study
from .config import MODALITIES, SUBTYPES, DiagnosisConfig
from .pathology import FEATURE_NAMES, pathology_features
from .paste import paste_lesion, usable_donor
from .preprocess import PreparedStudy, prepare_study

log = logging.getLogger(__name__)

_ARRAYS = ("images", "masks", "mask_given", "view", "side", "channels")


def study_labels(study: Study) -> tuple[float, int]:
    """``(malignant, subtype)``: 1.0/0.0 (NaN unknown; normal counts as 0) and the index into
    :data:`SUBTYPES` (-1 unknown)."""
    diag = study.diagnosis
    if diag is None and study.pathology is not None:
        diag = Diagnosis.MALIGNANT if study.pathology.malignant else Diagnosis.BENIGN
    malignant = math.nan if diag is None else float(diag is Diagnosis.MALIGNANT)
    st = study.pathology.subtype if study.pathology is not None else None
    return malignant, (SUBTYPES.index(st.value) if st is not None else -1)


def study_abnormal(study: Study) -> float:
    """1.0 when the study has a finding (benign or malignant, or a pathology record), 0.0 when
    it is normal, NaN when unknown."""
    if study.diagnosis is None:
        return 1.0 if study.pathology is not None else math.nan
    return float(study.diagnosis is not Diagnosis.NORMAL)


def holdout_ok(study: Study) -> bool:
    """Whether ``study`` may go to a held-out split: not when it belongs to a BUSI duplicate
    group whose frames carry conflicting labels (``label_conflict`` = 1)."""
    attrs = getattr(study, "attributes", None) or {}
    return str(attrs.get("label_conflict", "0")).strip() not in ("1", "true", "True")


def group_of(study: Study) -> str:
    """The split group of a study: BUSI ``dup_group``, else the woman, else the study."""
    attrs = getattr(study, "attributes", None) or {}
    if attrs.get("dup_group"):
        return f"dup:{attrs['dup_group']}"
    return f"patient:{study.patient_id}" if study.patient_id else f"study:{study.study_id}"


@dataclass
class Sample:
    """One training study: its cached inputs and targets."""

    study_id: str
    prepared: PreparedStudy
    malignant: float
    subtype: int
    pathology: np.ndarray | None
    wsi: np.ndarray | None
    group: str
    #: False for studies that must never be held out (BUSI ``label_conflict`` groups: their
    #: near-duplicates carry different labels, so they would make a validation label noisy)
    holdout_ok: bool = True
    #: 1.0 the study has a finding, 0.0 normal, NaN unknown (:func:`study_abnormal`)
    abnormal: float = math.nan
    #: a synthetic study (teaching case, phantom): a bundle trained on one is a synthetic bundle
    synthetic: bool = False


def make_sample(study: Study, config: DiagnosisConfig, wsi: np.ndarray | None = None) -> Sample:
    """Prepare ``study`` for training (inputs float16 in memory, reference masks used)."""
    prepared = prepare_study(study, config, use_reference_masks=True)
    for inp in prepared.inputs.values():
        inp.images = inp.images.astype(np.float16)
        inp.grids, inp.sources = [], []  # not needed for training; saves memory
    malignant, subtype = study_labels(study)
    path = pathology_features(study.pathology) if study.pathology is not None else None
    if wsi is not None and config.wsi_dim and wsi.shape != (config.wsi_dim,):
        log.warning("%s: whole-slide features of shape %s ignored (wsi_dim is %d)",
                    study.study_id, wsi.shape, config.wsi_dim)
        wsi = None
    return Sample(study.study_id, prepared, malignant, subtype, path,
                  wsi if config.wsi_dim else None, group_of(study), holdout_ok(study),
                  study_abnormal(study), bool(study.synthetic))


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def _augmentations(config: DiagnosisConfig):
    """MONAI dictionary transforms per modality (keys ``image`` and ``mask``)."""
    from monai.transforms import (
        Compose, RandAdjustContrastd, RandAffined, RandFlipd, RandGaussianNoised,
        RandScaleIntensityd,
    )

    def intensity():
        return [RandScaleIntensityd(keys="image", factors=0.15, prob=0.3),
                RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.3),
                RandGaussianNoised(keys="image", std=0.02, prob=0.3)]

    def float32(t):
        # RandAffine resamples in float64 by default (and has no dtype argument): 5x slower
        t.rand_affine.resampler.dtype = torch.float32
        return t

    def affine2d(size):
        return float32(RandAffined(keys=("image", "mask"), prob=0.7, rotate_range=(0.2,),
                           scale_range=(0.1, 0.1), translate_range=(6, 6),
                           mode=("bilinear", "nearest"), padding_mode="zeros",
                           spatial_size=size, cache_grid=True))

    # (D, H, W): the rotation about the slice axis turns the slices in their plane (about the
    # last axis it would tilt them across the anisotropic slice spacing: a shear)
    affine3d = float32(RandAffined(keys=("image", "mask"), prob=0.7, rotate_range=(0.2, 0.0, 0.0),
                                   scale_range=(0.05, 0.1, 0.1), translate_range=(1, 3, 3),
                                   mode=("bilinear", "nearest"), padding_mode="zeros",
                                   spatial_size=config.mr_size, cache_grid=True))
    return {
        # mammograms keep their canonical orientation (no flips)
        "MG": Compose([affine2d(config.mg_size), *intensity()]),
        "US": Compose([RandFlipd(keys=("image", "mask"), spatial_axis=1, prob=0.5),
                       affine2d(config.us_size), *intensity()]),
        "MR": Compose([RandFlipd(keys=("image", "mask"), spatial_axis=2, prob=0.5), affine3d,
                       *intensity()]),
    }


def _paste_donors(samples: list[Sample]) -> list[tuple[int, int]]:
    """``(sample, slot)`` of the findings lesion copy-paste may take: the mammograms with a
    non-empty lesion mask (:func:`~.paste.usable_donor`) of a study with a known malignancy
    label. The label is the study's, so the masked films must show one breast (a finding's
    views): a study with findings in both breasts, which may differ, gives none."""
    out = []
    for j, d in enumerate(samples):
        inp = d.prepared.inputs.get("MG")
        if inp is None or not math.isfinite(d.malignant):
            continue
        found = [k for k in range(len(inp.mask_given)) if inp.mask_given[k] and inp.masks[k].any()]
        if len({int(inp.side[k]) for k in found}) != 1:
            continue
        out += [(j, k) for k in found if usable_donor(inp.images[k, 0], inp.masks[k, 0])]
    return out


def paste_recipient(sample: Sample) -> bool:
    """Whether lesion copy-paste may paste into ``sample``: a normal mammography-only study (a
    finding pasted into its film makes it abnormal, which other modalities, normal, would
    contradict)."""
    return sample.abnormal == 0.0 and set(sample.prepared.inputs) == {"MG"}


class StudyDataset(torch.utils.data.Dataset):
    """Samples as network inputs (``dict`` per study), augmented when ``augment``.

    Call :meth:`set_epoch` at the start of each epoch (augmentations depend on it).
    """

    def __init__(self, samples: list[Sample], augment: bool = False, seed: int = 0,
                 config: DiagnosisConfig | None = None, lesion_paste: float = 0.0):
        self.samples = samples
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._aug = _augmentations(config or DiagnosisConfig()) if augment else None
        #: probability that a normal mammogram gets a finding of another film pasted in
        #: (:func:`~.paste.paste_lesion`; augmentation only)
        self.lesion_paste = float(lesion_paste) if augment else 0.0
        self._donors = _paste_donors(samples) if self.lesion_paste > 0 else []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        item: dict = {"malignant": s.malignant, "abnormal": s.abnormal, "subtype": s.subtype,
                      "pathology": s.pathology,
                      "wsi": s.wsi, "index": i}
        pasted = self._paste(i) if self.lesion_paste > 0 else None
        if pasted is not None:
            donor = self.samples[pasted[0]]
            item.update(malignant=donor.malignant, abnormal=1.0, subtype=donor.subtype, pathology=None, wsi=None)
        for m, inp in s.prepared.inputs.items():
            images = inp.images.astype(np.float32)
            masks = inp.masks
            given = inp.mask_given
            if m == "MG" and pasted is not None:
                _, k, image, mask = pasted
                images[k, 0] = image
                masks, given = masks.copy(), given.copy()
                masks[k, 0] = mask
                given[k] = True
            if self._aug is not None:
                images, masks = self._augment(m, images, masks, i)
                if m == "MR":  # absent sequences stay zero, as at inference (no noise, no scaling)
                    images[:, ~np.asarray(inp.channels[0], bool)] = 0.0
            item[m] = {"images": images, "masks": masks, "mask_given": given,
                       "view": inp.view, "side": inp.side, "channels": inp.channels}
        return item

    def _paste(self, i: int) -> tuple[int, int, np.ndarray, np.ndarray] | None:
        """``(donor sample, slot, image, mask)``: a finding pasted into a mammogram of the
        normal sample ``i`` (with probability :attr:`lesion_paste`), or None."""
        s = self.samples[i]
        if not paste_recipient(s):
            return None
        donors = [d for d in self._donors if d[0] != i]
        rng = np.random.default_rng(_seed(self.seed, self.epoch, i, "paste"))
        if not donors or rng.random() >= self.lesion_paste:
            return None
        inp = s.prepared.inputs["MG"]
        slots = [k for k in range(inp.images.shape[0]) if inp.images[k].any()]
        if not slots:
            return None
        k = int(rng.choice(slots))
        j, kd = donors[int(rng.integers(len(donors)))]
        d = self.samples[j].prepared.inputs["MG"]
        out = paste_lesion(inp.images[k, 0], d.images[kd, 0], d.masks[kd, 0], rng)
        return None if out is None else (j, k, *out)

    def _augment(self, modality: str, images: np.ndarray, masks: np.ndarray, index: int):
        from monai.data import get_track_meta, set_track_meta

        t = self._aug[modality]
        images, masks = images.copy(), masks.copy()
        track = get_track_meta()
        set_track_meta(False)  # plain tensors: ~10x faster, no metadata needed here
        try:
            for k in range(images.shape[0]):
                t.set_random_state(seed=_seed(self.seed, self.epoch, index, modality, k))
                out = t({"image": torch.from_numpy(images[k]),
                         "mask": torch.from_numpy(masks[k].astype(np.float32))})
                images[k] = np.asarray(out["image"], dtype=np.float32)
                masks[k] = np.asarray(out["mask"]) > 0.5
        finally:
            set_track_meta(track)
        return images, masks


def inputs_item(prepared: PreparedStudy) -> dict:
    """The dataset item of a prepared study (inference: no labels)."""
    return {m: {k: getattr(inp, k) for k in _ARRAYS} for m, inp in prepared.inputs.items()}


def collate(items: list[dict], wsi_dim: int = 0, share: bool = False) -> dict[str, torch.Tensor]:
    """Items of :class:`StudyDataset` (or :func:`inputs_item`) to a batch.

    Slots are padded to the largest count in the batch; ``{m}_present`` marks real ones. A
    modality absent from every item has no keys. With ``share`` (inference: one study), a
    batch of one takes its float32 image arrays as they are (the tensor shares their memory:
    no copy of the ~100 MB MRI input).
    """
    bsz = len(items)
    batch: dict[str, torch.Tensor] = {}
    for m in MODALITIES:
        have = [it[m] for it in items if m in it]
        if not have:
            continue
        ref = have[0]
        slots = max(h["images"].shape[0] for h in have)
        shp = ref["images"].shape[1:]
        whole = share and bsz == 1 and ref["images"].dtype == np.float32
        images = (torch.from_numpy(ref["images"])[None] if whole
                  else torch.zeros((bsz, slots, *shp), dtype=torch.float32))
        masks = torch.zeros((bsz, slots, 1, *shp[1:]), dtype=torch.float32)
        present = torch.zeros((bsz, slots), dtype=torch.bool)
        given = torch.zeros((bsz, slots), dtype=torch.bool)
        view = torch.zeros((bsz, slots), dtype=torch.long)
        side = torch.zeros((bsz, slots), dtype=torch.long)
        channels = torch.zeros((bsz, slots, ref["channels"].shape[1]), dtype=torch.bool)
        for b, it in enumerate(items):
            if m not in it:
                continue
            d = it[m]
            n = d["images"].shape[0]
            if not whole:
                images[b, :n] = torch.as_tensor(np.asarray(d["images"], dtype=np.float32))
            masks[b, :n] = torch.as_tensor(np.asarray(d["masks"], dtype=np.float32))
            present[b, :n] = True
            given[b, :n] = torch.as_tensor(d["mask_given"])
            view[b, :n] = torch.as_tensor(d["view"])
            side[b, :n] = torch.as_tensor(d["side"])
            channels[b, :n] = torch.as_tensor(d["channels"])
        batch.update({f"{m}_images": images, f"{m}_masks": masks, f"{m}_present": present,
                      f"{m}_mask_given": given, f"{m}_view": view, f"{m}_side": side,
                      f"{m}_channels": channels})
    if items and "malignant" in items[0]:
        batch["malignant"] = torch.tensor([it["malignant"] for it in items], dtype=torch.float32)
        batch["abnormal"] = torch.tensor([it.get("abnormal", math.nan) for it in items], dtype=torch.float32)
        batch["subtype"] = torch.tensor([it["subtype"] for it in items], dtype=torch.long)
        batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
        path = torch.zeros((bsz, len(FEATURE_NAMES)), dtype=torch.float32)
        has = torch.zeros(bsz, dtype=torch.bool)
        for b, it in enumerate(items):
            if it["pathology"] is not None:
                path[b] = torch.as_tensor(it["pathology"])
                has[b] = True
        batch["pathology"], batch["pathology_present"] = path, has
        if wsi_dim:
            wsi = torch.zeros((bsz, wsi_dim), dtype=torch.float32)
            wp = torch.zeros(bsz, dtype=torch.bool)
            for b, it in enumerate(items):
                if it["wsi"] is not None:
                    wsi[b] = torch.as_tensor(it["wsi"], dtype=torch.float32)
                    wp[b] = True
            batch["wsi"], batch["wsi_present"] = wsi, wp
    return batch


def modality_keep(batch: dict, p: float, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Random modality dropout for the fusion.

    For each study with ``n >= 2`` present modalities, with probability ``p`` drop
    ``k`` of them (``k`` uniform in 1..min(2, n - 1)). Returns ``{modality: keep (B,) bool}``.
    """
    mods = [m for m in MODALITIES if f"{m}_present" in batch]
    present = np.stack([batch[f"{m}_present"].any(1).cpu().numpy() for m in mods], 1)
    keep = present.copy()
    for b in range(present.shape[0]):
        have = np.flatnonzero(present[b])
        if len(have) >= 2 and rng.random() < p:
            k = int(rng.integers(1, min(2, len(have) - 1) + 1))
            keep[b, rng.choice(have, size=k, replace=False)] = False
    return {m: torch.as_tensor(keep[:, j]) for j, m in enumerate(mods)}


def split_groups(samples: list[Sample], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices ``(rest, held_out)``: about ``fraction`` of the groups of each label held out.

    Every group (see :func:`group_of`) lands on one side; groups are stratified by their
    worst label (malignant > benign/normal > unknown). A group with any study that may not be
    held out (``holdout_ok`` False: BUSI ``label_conflict`` groups) always stays on the
    training side, and does not count toward the held-out fraction.
    """
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.group, []).append(i)
    rng = np.random.default_rng(seed)
    held: list[int] = []
    by_label: dict[str, list[str]] = {}
    for g, idx in sorted(groups.items()):
        if not all(getattr(samples[i], "holdout_ok", True) for i in idx):
            continue
        labels = [samples[i].malignant for i in idx]
        key = "m" if any(v == 1.0 for v in labels) else ("b" if any(v == 0.0 for v in labels) else "u")
        by_label.setdefault(key, []).append(g)
    for key in sorted(by_label):
        gs = by_label[key]
        order = rng.permutation(len(gs))
        n = int(round(fraction * len(gs)))
        for j in order[:n]:
            held += groups[gs[j]]
    held_set = set(held)
    return [i for i in range(len(samples)) if i not in held_set], sorted(held)


__all__ = ["Sample", "StudyDataset", "collate", "group_of", "holdout_ok", "inputs_item", "make_sample",
           "modality_keep", "split_groups", "study_labels"]
