"""Training of the diagnosis network (``binds train CONFIG``).

The config (JSON, or YAML when PyYAML is installed) names the data, the model, the losses
and the schedule; see docs/MODEL.md and ``configs/diagnosis-demo.json``::

    {"model": {"preset": "demo"},
     "data": [{"synthetic": {"n": 600, "seed": 1}}],     # or {"dataset": DIR},
                                                         # {"folders": DIR}, {"manifest": CSV}
     "train": {"seed": 0, "batch_size": 8, "validation_fraction": 0.2,
               "phases": [{"name": "unimodal", "epochs": 4, "lr": 0.002, "fusion": false},
                          {"name": "multimodal", "epochs": 10, "lr": 0.001, "fusion": true}],
               "alignment": "cosine3", "loss_weights": {"alignment": 0.1}},
     "bundle": {"name": "binds-diagnosis-demo", "version": "1.0.0", "description": "..."}}

Run folder: ``config.json`` (the settings used), ``metrics.csv`` (one row per epoch),
``checkpoints/last.pt`` (resume with ``--resume``), ``train.log``, ``tensorboard/`` when
TensorBoard is installed, and at the end the bundle (``bundle/`` unless ``--bundle`` says).

Phases: per-modality first (encoders, localisers, auxiliary per-modality heads, alignment;
the fusion is not trained), then multimodal (everything, with random modality dropout in the
fusion), as BINDS trains. ``"average_epochs": N`` averages the weights of the last N epochs
(stochastic weight averaging; the running mean is kept in the checkpoint, so a resumed run
averages the same epochs) and re-estimates the BatchNorm statistics with one pass over the
training images; the bundle holds the averaged network, ``checkpoints/last.pt`` the last
epoch's. After the last epoch the temperature and the operating points are fitted on the
validation split and stored in the bundle.

Distributed: run under ``torchrun`` (``WORLD_SIZE > 1``) for DistributedDataParallel over
GPUs and nodes with no code change (NCCL on CUDA, Gloo on CPU); only rank 0 writes. On CUDA,
mixed precision (bf16 where supported, else fp16 with loss scaling) and channels-last (on
CPU channels-last only for the 3D MRI branch, where it makes oneDNN ~10x faster).
Deterministic on CPU for a given seed and number of threads (``OMP_NUM_THREADS``: another count
sums in another order, and the runs drift apart), including a resumed run.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, OutputError, raise_if_terminated
from ..fsutil import atomic_write_json, atomic_write_text, json_dumps, output_lock
from ..threads import ctrl_c_deferred, ignore_ctrl_c
from .config import (
    COMBINATIONS, MG_VIEW_CODES, MODALITIES, MR_CHANNELS, SIDES, SUBTYPES, DiagnosisConfig, preset,
)
from .inference import DEFAULT_UNCERTAINTY_BAND
from .losses import ALIGNMENTS, LossWeights
from .refiner import RefinerTraining

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    """A training phase: ``fusion`` False trains the per-modality parts only."""

    name: str
    epochs: int
    lr: float
    fusion: bool = True


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run needs (parsed from the config file, see module docstring)."""

    model: DiagnosisConfig
    data: tuple[dict, ...]
    base_dir: Path = Path(".")
    seed: int = 0
    validation_fraction: float = 0.2
    batch_size: int = 8
    num_workers: int = 0
    data_workers: int = 2
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    warmup_epochs: float = 0.5
    phases: tuple[Phase, ...] = (Phase("unimodal", 2, 2e-3, False), Phase("multimodal", 4, 1e-3, True))
    modality_dropout: float = 0.5
    crop_from_prediction: float = 0.5
    lesion_paste: float = 0.0
    alignment: str = "cosine3"
    alignment_temperature: float = 0.1
    loss_weights: LossWeights = LossWeights()
    pos_weight: float = 1.0
    segmentation_loss: str = "dicece"
    target_sensitivity: float = 0.98
    uncertainty_band: tuple[float, float] | str = DEFAULT_UNCERTAINTY_BAND  # or "fit": on the validation split
    amp: bool = True
    channels_last: bool = True
    flush_denormal: bool = False
    average_epochs: int = 0
    refiner: RefinerTraining = RefinerTraining()
    pretrained: dict = field(default_factory=dict)
    bundle: dict = field(default_factory=dict)
    document: dict = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def phase_of(self, epoch: int) -> tuple[Phase, int]:
        """The phase of global ``epoch`` and the epoch's index within it."""
        for p in self.phases:
            if epoch < p.epochs:
                return p, epoch
            epoch -= p.epochs
        raise IndexError("epoch beyond the schedule")


_TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainSettings)} - {"model", "data", "base_dir",
                                                                     "bundle", "document"}


_TRAIN_TYPES = {f.name: f.type for f in dataclasses.fields(TrainSettings) if f.type in ("int", "float", "bool", "str")}
#: (setting, (lower bound, inclusive), upper bound or None)
_TRAIN_RANGES = (("batch_size", (1, True), None), ("num_workers", (0, True), None),
                 ("data_workers", (0, True), None), ("weight_decay", (0.0, True), None),
                 ("grad_clip", (0.0, True), None), ("warmup_epochs", (0.0, True), None),
                 ("modality_dropout", (0.0, True), 1.0), ("crop_from_prediction", (0.0, True), 1.0),
                 ("lesion_paste", (0.0, True), 1.0),
                 ("alignment_temperature", (0.0, False), None), ("pos_weight", (0.0, False), None),
                 ("target_sensitivity", (0.0, False), 1.0), ("seed", (0, True), None))
_BUNDLE_KEYS = {"name", "version", "description", "caution"}
_SOURCE_KINDS = ("synthetic", "dataset", "folders", "manifest")


def _check_type(where: str, value, kind: str | None) -> None:
    """``ValueError`` naming the setting when ``value`` is not of the JSON ``kind`` (int, float,
    bool, str; None: not checked here). A whole number is a float too; true/false is neither."""
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str)}.get(kind)
    if ok is not None and not ok(value):
        want = {"int": "a whole number", "float": "a finite number", "bool": "true or false", "str": "a text"}[kind]
        raise ValueError(f"{where} must be {want}, not {value!r}")


def _check_source(src: dict) -> None:
    """``ValueError`` naming what is wrong with one ``data`` source of a config."""
    kinds = [k for k in _SOURCE_KINDS if k in src]
    if len(kinds) != 1:
        raise ValueError(f"data source {src} must have exactly one of synthetic, dataset, folders, manifest")
    unknown = set(src) - {kinds[0], "limit"}
    if unknown:
        raise ValueError(f"data source {src}: unknown key(s) {sorted(unknown)} (a source has its kind and "
                         "optionally limit)")
    if "limit" in src:
        _check_type("data limit", src["limit"], "int")
        if src["limit"] < 1:
            raise ValueError(f"data source {src}: limit must be at least 1")
    if kinds[0] == "synthetic":
        import inspect

        from ..synthetic import make_study

        opts = src["synthetic"]
        if not isinstance(opts, dict):
            raise ValueError(f'data source {src}: synthetic takes options, e.g. {{"n": 600, "seed": 1}}')
        known = {"n", "seed"} | set(inspect.signature(make_study).parameters) - {"study_id"}
        if set(opts) - known:
            raise ValueError(f"data source {src}: unknown synthetic option(s) {sorted(set(opts) - known)}; "
                             f"known: {sorted(known)}")
        for key in ("n", "seed"):
            if key in opts:
                _check_type(f"synthetic {key}", opts[key], "int")
        if opts.get("n", 1) < 1:
            raise ValueError(f"data source {src}: n must be at least 1")
        if "modalities" in opts:  # as make_study takes them (one name or a list, any case)
            from ..synthetic.cases import _check_modalities

            try:
                _check_modalities(opts["modalities"])
            except TypeError:  # (not a name or a list of names)
                raise ValueError(f'data source {src}: modalities must be a list among "MG", "US", "MR", '
                                 f"not {opts['modalities']!r}") from None
            except ValueError as e:
                raise ValueError(f"data source {src}: {e}") from None
    elif not isinstance(src[kinds[0]], str):
        raise ValueError(f"data source {src}: {kinds[0]} must be a path")


def parse_settings(doc: dict, base_dir: Path = Path(".")) -> TrainSettings:
    """:class:`TrainSettings` from a config document; ``ValueError`` names what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("the config must be a JSON/YAML object")
    unknown = set(doc) - {"model", "data", "train", "bundle", "description"}
    if unknown:
        raise ValueError(f"unknown top-level keys {sorted(unknown)} (use model, data, train, bundle)")
    mdoc = doc.get("model", {"preset": "demo"})
    model = DiagnosisConfig.from_json(mdoc) if isinstance(mdoc, dict) else preset(str(mdoc))
    data = doc.get("data")
    if isinstance(data, dict):
        data = [data]
    if not data or not all(isinstance(d, dict) and len(d) >= 1 for d in data):
        raise ValueError('"data" must name at least one source, e.g. {"synthetic": {"n": 600}}, '
                         '{"dataset": "path"}, {"folders": "path"} or {"manifest": "file.csv"}')
    for d in data:
        _check_source(d)
    bundle = doc.get("bundle", {})
    if not isinstance(bundle, dict) or set(bundle) - _BUNDLE_KEYS \
            or not all(isinstance(v, str) for v in bundle.values()):
        raise ValueError(f"bundle must be an object of texts with the keys {sorted(_BUNDLE_KEYS)}, not {bundle!r}")
    t = doc.get("train", {})
    if not isinstance(t, dict):
        raise ValueError("train must be an object of settings")
    t = dict(t)
    bad = set(t) - _TRAIN_KEYS
    if bad:
        raise ValueError(f"unknown train settings {sorted(bad)}; known: {sorted(_TRAIN_KEYS)}")
    for key, value in t.items():
        _check_type(f"train.{key}", value, _TRAIN_TYPES.get(key))
    if "phases" in t:
        if not isinstance(t["phases"], list) or not all(isinstance(p, dict) for p in t["phases"]):
            raise ValueError('train.phases must be a list of objects, e.g. [{"name": "unimodal", "epochs": 2, '
                             '"lr": 0.002, "fusion": false}]')
        phases = []
        for n, ph in enumerate(t["phases"]):
            unknown = set(ph) - {"name", "epochs", "lr", "fusion"}
            if unknown or not {"name", "epochs", "lr"} <= set(ph):
                raise ValueError(f"train.phases[{n}] needs name, epochs and lr (and may have fusion), not {sorted(ph)}")
            for key, kind in (("name", "str"), ("epochs", "int"), ("lr", "float"), ("fusion", "bool")):
                if key in ph:
                    _check_type(f"train.phases[{n}].{key}", ph[key], kind)
            if ph["lr"] <= 0:
                raise ValueError(f"train.phases[{n}].lr must be above 0, not {ph['lr']!r}")
            phases.append(Phase(**ph))
        t["phases"] = tuple(phases)
    if "loss_weights" in t:
        t["loss_weights"] = LossWeights.from_json(t["loss_weights"])
    if "uncertainty_band" in t and t["uncertainty_band"] != "fit":
        from .inference import check_uncertainty_band

        try:
            t["uncertainty_band"] = check_uncertainty_band(t["uncertainty_band"])
        except ValueError as e:
            raise ValueError(f"train.{e} (or \"fit\": fitted on the validation split)") from None
    if "refiner" in t:
        if not isinstance(t["refiner"], dict):
            raise ValueError('train.refiner must be an object, e.g. {"epochs": 60}')
        t["refiner"] = RefinerTraining(**t["refiner"])
    s = TrainSettings(model=model, data=tuple(data), base_dir=Path(base_dir), bundle=dict(bundle),
                      document=doc, **t)
    for key, low, high in _TRAIN_RANGES:
        value = getattr(s, key)
        if not (low[0] <= value if low[1] else low[0] < value) or (high is not None and value > high):
            raise ValueError(f"train.{key} must be {'at least' if low[1] else 'above'} {low[0]}"
                             f"{'' if high is None else f' and at most {high}'}, not {value!r}")
    if s.alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}")
    from .losses import SEGMENTATION_LOSSES

    if s.segmentation_loss not in SEGMENTATION_LOSSES:
        raise ValueError(f"train.segmentation_loss must be one of {SEGMENTATION_LOSSES}, not {s.segmentation_loss!r}")
    if not s.phases or any(p.epochs < 0 for p in s.phases) or s.epochs < 1:
        raise ValueError("phases need at least one epoch in all")
    if not 0 <= s.average_epochs <= s.epochs:
        raise ValueError(f"average_epochs must be between 0 and the {s.epochs} epochs of the phases")
    if not 0.0 <= s.validation_fraction < 1.0:
        raise ValueError("validation_fraction must be in [0, 1)")
    if not isinstance(s.pretrained, dict):
        raise ValueError('train.pretrained must be an object, e.g. {"MG": "imagenet"}')
    for m, source in s.pretrained.items():
        if m not in ("MG", "US") or not isinstance(source, str):
            raise ValueError(f'pretrained maps "MG" or "US" to "imagenet" or a weights file, not {m!r}: {source!r}')
        if source != "imagenet" and not (s.base_dir / source).is_file():  # before any data is read
            raise ValueError(f"pretrained {m}: weights file {s.base_dir / source} not found")
        locator = s.model.locator_for(m)
        if locator.arch != "efficientnet_lite0":
            raise ValueError(f"pretrained {m}: its locator must have arch 'efficientnet_lite0' (the "
                             f"weights that can be loaded), not {locator.arch!r}")
    return s


def pretrained_sources(settings: TrainSettings) -> dict[str, str]:
    """``settings.pretrained`` with file paths resolved against the config's folder."""
    return {m: src if src == "imagenet" else str(settings.base_dir / src)
            for m, src in settings.pretrained.items()}


def load_pretrained(net, settings: TrainSettings) -> dict[str, dict]:
    """Start each locator named in ``settings.pretrained`` from its weights (see
    :func:`~BINDSLib.model.efficientnet.load_imagenet_weights`); returns what the bundle
    records of them."""
    from .efficientnet import IMAGENET_PACKAGE, load_imagenet_weights

    record = {}
    for m, source in pretrained_sources(settings).items():
        digest = load_imagenet_weights(net.branches[m].locator.backbone, source)
        record[m] = {"encoder": f"{m} lesion locator", "architecture": "EfficientNet-Lite0",
                     "weights": "ImageNet" if source == "imagenet" else Path(source).name,
                     "sha256": digest}
        if source == "imagenet":
            record[m].update({"package": f"{IMAGENET_PACKAGE}==0.1.0", "license": "Apache-2.0"})
        log.info("%s locator starts from %s (SHA-256 %s)", m, record[m]["weights"], digest)
    return record


def load_settings(path: str | os.PathLike) -> TrainSettings:
    """Read a training config file (``.json``; ``.yaml``/``.yml`` with PyYAML installed)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("config file not found", path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # (a byte-order mark is allowed)
    except UnicodeDecodeError as e:
        raise InputError(f"the config is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8",
                         path) from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise InputError("YAML configs need PyYAML (pip install pyyaml); or use JSON", path) from None
            try:
                doc = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ValueError(f"not valid YAML: {e}") from None
        else:
            doc = json.loads(text)
        return parse_settings(doc, path.parent)
    except (json.JSONDecodeError, ValueError, TypeError, RecursionError, ZeroDivisionError) as e:
        raise InputError(f"invalid training config: {e}", path) from None


# -- data --------------------------------------------------------------------------------

def _wsi_of(study, folder: Path | None) -> np.ndarray | None:
    rel = study.pathology.wsi_features if study.pathology is not None else None
    if not rel or folder is None:
        return None
    p = folder / rel
    try:
        return np.load(p, allow_pickle=False).astype(np.float32).ravel()
    except (OSError, ValueError) as e:
        log.warning("%s: cannot read whole-slide features %s (%s); ignored", study.study_id, p, e)
        return None


def _study_folders(src: dict, base_dir: Path) -> list[Path]:
    if "folders" in src:
        root = base_dir / src["folders"]
        if not root.is_dir():
            raise InputError("study folders directory not found", root)
        return [d for d in sorted(root.iterdir()) if (d / "study.json").is_file()]
    manifest = base_dir / src["manifest"]
    try:
        with open(manifest, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise InputError(f"cannot read manifest: {e}", manifest) from None
    if rows and "path" not in rows[0]:
        raise InputError("manifest needs a 'path' column of study folders", manifest)
    return [manifest.parent / r["path"] for r in rows]


def _tasks(sources, base_dir: Path) -> list[tuple]:
    """One picklable task per study: ("synthetic", seed, options) / ("folder", path) /
    ("dataset", root, index)."""
    tasks: list[tuple] = []
    for src in sources:
        limit = int(src["limit"]) if src.get("limit") else None
        if "synthetic" in src:
            from ..synthetic.fields import derive_seed

            opts = dict(src["synthetic"])
            n, seed = int(opts.pop("n", 100)), int(opts.pop("seed", 0))
            tasks += [("synthetic", derive_seed(seed, i), opts) for i in range(min(n, limit or n))]
        elif "dataset" in src:
            tasks.append(("dataset", base_dir / src["dataset"], limit))
        else:
            tasks += [("folder", d) for d in _study_folders(src, base_dir)[:limit]]
    return tasks


def _task_studies(task: tuple, config: DiagnosisConfig):
    """``(study, whole-slide features or None)`` of one task (a dataset task: all its studies,
    read one at a time)."""
    kind = task[0]
    if kind == "synthetic":
        from ..synthetic import make_study

        return [(make_study(task[1], **task[2]), None)]
    if kind == "folder":
        from ..studyfolder import read_study_folder

        st = read_study_folder(task[1])
        return [(st, _wsi_of(st, task[1]) if config.wsi_dim else None)]
    import itertools

    from ..io.datasets import iter_dataset

    return ((st, None) for st in itertools.islice(iter_dataset(task[1]), task[2]))


def _run_task(task: tuple, config: DiagnosisConfig) -> list:
    """Samples of one task (a dataset task yields all its studies)."""
    from .data import make_sample

    out = []
    for st, wsi in _task_studies(task, config):
        try:
            out.append(make_sample(st, config, wsi))
        except InputError as e:
            log.warning("study %s skipped: %s", st.study_id, e)
    return out


def load_samples(sources, config: DiagnosisConfig, base_dir: Path = Path("."), workers: int = 1) -> list:
    """Training samples (:class:`~.data.Sample`) of the data sources, prepared once.

    Sources: ``{"synthetic": {"n", "seed", ...make_study options}}`` (generated in memory;
    case ``i`` is ``make_study(derive_seed(seed, i), ...)``); ``{"dataset": DIR}`` (BUSI,
    mini-MIAS or a folder of study folders, detected); ``{"folders": DIR}`` (every study
    folder in DIR); ``{"manifest": CSV}`` (a ``path`` column of study folders). Each may have
    ``"limit": n``. Relative paths are relative to ``base_dir`` (the config's folder).
    ``workers > 1`` generates/prepares in parallel processes (same result).
    """
    tasks = _tasks(sources, base_dir)
    if workers > 1 and len(tasks) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
            chunks = list(ex.map(functools.partial(_run_task, config=config), tasks, chunksize=4))
    else:
        chunks = [_run_task(t, config) for t in tasks]
    first: dict[str, tuple] = {}
    for task, chunk in zip(tasks, chunks):
        for s in chunk:
            if s.study_id in first:  # a study read twice could fall on both sides of the split
                raise InputError(f"study ID {s.study_id!r} occurs more than once in the training data "
                                 f"({_task_source(first[s.study_id])}; {_task_source(task)}): each "
                                 "study needs its own ID (a data source listed twice?)")
            first[s.study_id] = task
    samples = [s for c in chunks for s in c]
    if not samples:
        raise InputError("the data sources hold no usable studies")
    return samples


def _task_source(task: tuple) -> str:
    """Where the studies of a :func:`_tasks` task come from, for messages."""
    if task[0] == "synthetic":
        return f"synthetic case of seed {task[1]}"
    return f"{'dataset' if task[0] == 'dataset' else 'study folder'} {task[1]}"


# -- distributed / device ----------------------------------------------------------------

@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    device: object = None
    distributed: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str | None = None) -> Runtime:
    """Device and (under torchrun, ``WORLD_SIZE > 1``) the process group."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local)
        dev = torch.device(f"cuda:{local}" if cuda else "cpu")
        return Runtime(dist.get_rank(), dist.get_world_size(), dev, True)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Runtime(0, 1, dev, False)


def _seed(*parts) -> int:
    import zlib

    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


class _Progress:
    """tqdm when installed and stderr is a terminal, else a log line every ~20 % of an epoch."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.n = total, desc, 0
        self.bar = None
        self.next_log = max(1, total // 5)
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr)
            except ImportError:
                pass

    def update(self, loss: float) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}")
            self.bar.update(1)
        elif self.n >= self.next_log or self.n == self.total:
            log.info("%s: step %d/%d loss %.4f", self.desc, self.n, self.total, loss)
            self.next_log += max(1, self.total // 5)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- evaluation on the validation split --------------------------------------------------

def predict_samples(network, samples, device, batch_size: int = 8, combinations: bool = False) -> dict:
    """Logits of ``samples`` without augmentation, as at inference: the lesion crops come from
    the predicted lesion, never from the reference masks the samples carry, and with
    ``tta_flip`` the mirrored ultrasound pass is averaged in as :meth:`DiagnosisModel.predict`
    does (the calibration and operating points are fitted on these logits: they must be the
    bundle's own).

    Returns ``{"logit": (N,), "subtype": (N, 4) probabilities, "aux": {m: (N,)},
    "finding": (N,), "combinations": {"MG+US": (N,), ...}}``; NaN where a study lacks the
    modalities. ``finding``: the study's finding logit (largest over its images,
    :func:`~.network.finding_logits`).
    """
    import torch

    from .data import StudyDataset, collate
    from .inference import flip_encodings, merge_flipped
    from .network import study_finding_logits

    ds = StudyDataset(samples, augment=False)
    n = len(samples)
    res = {"logit": np.full(n, np.nan), "subtype": np.full((n, len(SUBTYPES)), np.nan),
           "aux": {m: np.full(n, np.nan) for m in MODALITIES}, "finding": np.full(n, np.nan),
           "combinations": {}}
    cfg = network.config
    was_training = network.training
    network.eval()
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            batch = {k: v.to(device) for k, v in collate([ds[i] for i in idx]).items()}
            from_prediction = torch.ones(len(idx), dtype=torch.bool, device=device)
            enc = network.encode(batch, crop_from_prediction=from_prediction)
            enc_flip = flip_encodings(network, enc, batch, from_prediction) if cfg.tta_flip else None

            def fuse(keep=None):
                out = network.fuse(enc, batch, keep)
                if enc_flip is None:
                    return out
                flip = network.fuse(enc_flip, batch, keep)
                return {k: (out[k] + flip[k]) / 2 for k in ("malignancy_logit", "subtype_logits")}

            out = fuse()
            res["logit"][idx] = out["malignancy_logit"].float().cpu().numpy()
            res["subtype"][idx] = torch.softmax(out["subtype_logits"].float(), 1).cpu().numpy()
            combos = {}
            if combinations:
                have = {m: batch[f"{m}_present"].any(1) if f"{m}_present" in batch else
                        torch.zeros(len(idx), dtype=torch.bool, device=device) for m in MODALITIES}
                for combo in COMBINATIONS:
                    ok = torch.stack([have[m] for m in combo], 1).all(1)
                    if bool(ok.any()) and all(m in enc for m in combo):
                        keep = {m: torch.full((len(idx),), m in combo, dtype=torch.bool, device=device)
                                for m in enc}
                        combos["+".join(combo)] = (ok.cpu().numpy(), fuse(keep)["malignancy_logit"])
            if enc_flip is not None:
                merge_flipped(enc, enc_flip)  # (lesion maps and auxiliary logits: the finding)
            for m, e in enc.items():
                sel = e.aux_present.cpu().numpy()
                res["aux"][m][np.asarray(idx)[sel]] = e.aux_logit.float().cpu().numpy()[sel]
            if enc:
                found = study_finding_logits(enc, len(idx), cfg.finding_cell, cfg.finding_topk)
                f = torch.stack(list(found.values())).amax(0).cpu().numpy()
                res["finding"][idx] = np.where(np.isfinite(f), f, np.nan)
            if combinations:
                for combo in COMBINATIONS:
                    arr = res["combinations"].setdefault("+".join(combo), np.full(n, np.nan))
                    if "+".join(combo) in combos:
                        okn, lg = combos["+".join(combo)]
                        arr[np.asarray(idx)[okn]] = lg.float().cpu().numpy()[okn]
    network.train(was_training)
    return res


def _fit_band(pred: dict, samples, y_val, temperature: float, threshold: float) -> dict | None:
    """The two-stage uncertainty band fitted on the validation split (``uncertainty_band:
    "fit"``), as ``binds calibrate --fit band`` fits it: on the studies with mammography or
    ultrasound and an MRI, each study's stage-1 probability being the fusion of its stage-1
    modalities alone (``predict_samples``' combinations, the MRI masked out as inference's stage
    1 leaves it out). ``None`` when those studies lack a class."""
    from .calibration import fit_uncertainty_band

    z1 = np.full(len(samples), np.nan)
    for i, s in enumerate(samples):
        key = "+".join(m for m in ("MG", "US") if m in s.prepared.inputs)
        if key in pred["combinations"] and "MR" in s.prepared.inputs:
            z1[i] = pred["combinations"][key][i]
    z2, y = pred["logit"], np.asarray(y_val, dtype=float)
    ok = np.isfinite(z1) & np.isfinite(z2) & np.isfinite(y)
    if not ((y[ok] == 1).any() and (y[ok] == 0).any()):
        return None
    with np.errstate(over="ignore"):  # as inference computes them (DiagnosisModel.probability)
        p1, p2 = (1.0 / (1.0 + np.exp(-(z[ok] / temperature))) for z in (z1, z2))
    band, info = fit_uncertainty_band(p1, p2, y[ok].astype(int), threshold)
    return {"new": list(band), **info}


def _auc_of(scores, labels) -> float:
    from .metrics import auc

    s, y = np.asarray(scores), np.asarray(labels)
    ok = np.isfinite(s) & np.isfinite(y)
    return auc(s[ok], y[ok].astype(int))


# -- checkpoints -------------------------------------------------------------------------

def _save_checkpoint(path: Path, state: dict) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path) -> dict:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means an unusable checkpoint
        raise InputError(f"cannot read checkpoint ({type(e).__name__}: {str(e)[:200]})", path) from None


def settings_digest(settings: TrainSettings) -> str:
    doc = {"model": settings.model.to_json(), "document": settings.document}
    return hashlib.sha256(json_dumps(doc).encode()).hexdigest()


# -- the run -----------------------------------------------------------------------------

METRIC_COLUMNS = ("epoch", "phase", "lr", "seconds", "train_loss", "train_malignancy",
                  "train_auxiliary", "train_subtype", "train_segmentation", "train_alignment",
                  "train_background", "train_pathology", "train_finding", "val_loss", "val_auc",
                  "val_auc_MG", "val_auc_US", "val_auc_MR", "val_auc_finding", "val_dice")


def _lr_at(settings: TrainSettings, phase: Phase, t: float) -> float:
    """Linear warm-up then cosine decay to 5 % within each phase (``t`` in phase epochs)."""
    w = settings.warmup_epochs
    if t < w:
        return phase.lr * (0.1 + 0.9 * t / w)
    frac = (t - w) / max(1e-9, phase.epochs - w)
    return phase.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _autocast(device, enabled: bool):
    import torch

    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype), dtype
    return contextlib.nullcontext(), None


def _check_outputs(settings: TrainSettings, run_dir: Path, bundle_path, resume: bool, overwrite: bool) -> None:
    """What :func:`train` checks before it writes or trains (the data sources must exist too)."""
    from ..bundle import BUNDLE_SIGNS
    from ..fsutil import check_output_dir

    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError("is a file, not a run folder", run_dir)
    if (run_dir / "checkpoints" / "last.pt").exists() and not resume and not overwrite:
        raise OutputError("holds a previous run; use --resume to continue it or --overwrite "
                          "to start again", run_dir)
    if resume and (run_dir / "checkpoints" / "last.pt").exists() and (run_dir / "config.json").is_file():
        _check_resumable(settings, run_dir / "config.json")
    inputs = [t[1] for t in _tasks(settings.data, settings.base_dir) if t[0] != "synthetic"]
    inputs += [settings.base_dir / s["manifest"] for s in settings.data if "manifest" in s]
    inputs += [w for w in pretrained_sources(settings).values() if w != "imagenet"]
    # the bundle replaces its folder (the default, RUN_DIR/bundle, is always replaced)
    bundle = Path(bundle_path or run_dir / "bundle")
    if bundle.resolve() == run_dir.resolve():
        raise OutputError("is the run folder; the bundle needs a folder of its own (default "
                          "RUN_DIR/bundle)", bundle)
    check_output_dir(bundle, overwrite or bundle_path is None, inputs + [run_dir], BUNDLE_SIGNS)


def _split_ids(train_samples, val_samples) -> dict:
    return {"train": sorted(s.study_id for s in train_samples), "validation": sorted(s.study_id for s in val_samples)}


def _check_same_split(state: dict, train_samples, val_samples, ckpt_path: Path) -> None:
    """Refuse to resume when the split is not the checkpoint's (the data changed on disk, e.g.
    a study folder added): a study trained on could land in the validation split, which
    calibrates the bundle and is scored as held out. Checkpoints older than this check have
    no split to compare."""
    before = state.get("split")
    if not before:
        return
    now = _split_ids(train_samples, val_samples)
    if now == before:
        return
    moved = sorted(set(before["train"]) & set(now["validation"]))
    added = sorted(set(now["train"] + now["validation"]) - set(before["train"] + before["validation"]))
    gone = sorted(set(before["train"] + before["validation"]) - set(now["train"] + now["validation"]))
    what = "; ".join(part for part in (
        f"trained on, now held out: {', '.join(moved[:5])}{' ...' if len(moved) > 5 else ''}" if moved else "",
        f"new: {', '.join(added[:5])}{' ...' if len(added) > 5 else ''}" if added else "",
        f"gone: {', '.join(gone[:5])}{' ...' if len(gone) > 5 else ''}" if gone else "") if part)
    raise InputError(f"the data's split is not the one this run was trained with ({what or 'reshuffled'}); "
                     "--resume needs the same studies (use --overwrite to start again, or another --out)",
                     ckpt_path)


def _resumed_average(state: dict, start_epoch: int, settings: TrainSettings, ckpt_path: Path):
    """The checkpoint's running mean of the weights, if it is the mean the config asks for at
    ``start_epoch``: the epochs averaged so far are the last ``n_averaged`` before it, and the
    config averages its last ``average_epochs`` epochs. A mean over epochs before the config's
    window (more epochs since) is dropped and rebuilt; one that lacks epochs already run (more
    averaged epochs asked for) cannot be rebuilt: refused."""
    average, n_averaged = state.get("average"), int(state.get("n_averaged", 0))
    if average is None:
        n_averaged = 0
    window = settings.epochs - settings.average_epochs if settings.average_epochs else settings.epochs
    expected = max(0, start_epoch - window)
    if n_averaged == expected:
        return average, n_averaged
    if expected == 0:
        if n_averaged:
            log.info("the checkpoint's weight average (its last %d epochs) lies before the %d epochs "
                     "this config averages: rebuilt from them", n_averaged, settings.average_epochs)
        return None, 0
    raise InputError(f"the checkpoint at epoch {start_epoch} averaged its last {n_averaged} epoch(s); this "
                     f"config averages the last {settings.average_epochs} of {settings.epochs}, {expected} of "
                     "them already run: that average cannot be rebuilt (keep epochs and average_epochs, "
                     "or start again with --overwrite)", ckpt_path)


def _check_resumable(settings: TrainSettings, config_path: Path) -> None:
    """Refuse to resume a run with other data, another split or another network than it was
    started with (the weights and the held-out split would not belong to the bundle's
    record). Other settings may change on a resume (more epochs, weight averaging, the
    lesion refiner), with a warning when they do."""
    try:
        old_doc = json.loads(config_path.read_text(encoding="utf-8"))
        old = parse_settings(old_doc["document"], settings.base_dir)
        old_model = DiagnosisConfig.from_json(old_doc["model"]).to_json()  # later fields at their defaults
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: cannot compare with the run's first config (%s); resuming", config_path, e)
        return
    new_model = settings.model.to_json()
    for m in (old_model, new_model):
        m.pop("lesion_refiner", None)  # trained on its own after the network: may change
        m.pop("unsided", None)  # what inference reads without a side: set at the end from the data
    changed = [name for name, a, b in (("data", old.data, settings.data), ("seed", old.seed, settings.seed),
                                       ("validation_fraction", old.validation_fraction, settings.validation_fraction),
                                       ("model", json_dumps(old_model), json_dumps(new_model))) if a != b]
    if changed:
        raise InputError(f"this run was started with another {', '.join(changed)}; --resume continues a run "
                         "with the same ones (use --overwrite to start again, or another --out)", config_path)
    if settings.epochs < old.epochs:  # fewer epochs: is the checkpoint already past them?
        ckpt = config_path.parent / "checkpoints" / "last.pt"
        try:
            done = int(_load_checkpoint(ckpt).get("epoch", 0))
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is named when it is loaded
            return
        if done > settings.epochs:
            raise InputError(f"the checkpoint is at epoch {done}, past the {settings.epochs} epochs of this "
                             "config: its weights and the bundle's record of the training would disagree; "
                             "resume with at least as many epochs, or start again with --overwrite", ckpt)


def train(settings: TrainSettings, run_dir: str | os.PathLike, *, resume: bool = False,
          device: str | None = None, bundle_path: str | os.PathLike | None = None,
          overwrite: bool = False, reproduce: str = "") -> dict:
    """Train, calibrate and write the bundle. Returns the final validation metrics (rank 0).

    Raises
    ------
    OutputError
        when ``run_dir`` holds a previous run and neither ``resume`` nor ``overwrite`` is set,
        when ``bundle_path`` exists without ``overwrite``, or when it is (or holds) the run
        folder or a data source - all checked before any training; when another training run
        is writing into ``run_dir`` (its lock, :func:`..fsutil.output_lock`).
    """
    with contextlib.ExitStack() as held:
        return _train(settings, run_dir, resume=resume, device=device, bundle_path=bundle_path,
                      overwrite=overwrite, reproduce=reproduce, held=held)


def _train(settings: TrainSettings, run_dir: str | os.PathLike, *, resume: bool, device: str | None,
           bundle_path, overwrite: bool, reproduce: str, held: contextlib.ExitStack) -> dict:
    import random

    import torch
    from torch.utils.data import DataLoader

    from .data import StudyDataset, collate, modality_keep, split_groups
    from .losses import DiagnosisLoss
    from .network import DiagnosisNetwork

    rt = setup_runtime(device)
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    if rt.main:
        _check_outputs(settings, run_dir, bundle_path, resume, overwrite)
        run_dir.mkdir(parents=True, exist_ok=True)
        held.enter_context(output_lock(run_dir, "binds train"))  # (both runs would write its checkpoints)
        if (run_dir / "checkpoints" / "last.pt").exists() and not resume and not overwrite:
            _check_outputs(settings, run_dir, bundle_path, resume, overwrite)  # one that finished first
        for name, folder in (("checkpoints", True), ("metrics.csv", False), ("final_metrics.json", False)):
            if (run_dir / name).exists() and (run_dir / name).is_dir() != folder:  # before the epochs, not after
                raise OutputError(f"{name} in the run folder is a {'file' if folder else 'folder'}; a run keeps "
                                  f"a {'folder' if folder else 'file'} there: move it away", run_dir / name)
        if not resume:  # a run started over: nothing of the earlier one to resume from or mix in
            for name in ("checkpoints/last.pt", "checkpoints/refiner.pt", "metrics.csv", "final_metrics.json"):
                (run_dir / name).unlink(missing_ok=True)
        handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("BINDSLib").addHandler(handler)
        logging.getLogger("BINDSLib").setLevel(min(logging.getLogger("BINDSLib").getEffectiveLevel(), logging.INFO))
    cfg = settings.model
    seed = settings.seed
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if settings.flush_denormal:
        # denormal floats (tiny activations/gradients) make x86 CPUs up to ~30x slower
        torch.set_flush_denormal(True)

    t0 = time.perf_counter()
    samples = load_samples(settings.data, cfg, settings.base_dir, settings.data_workers)
    train_idx, val_idx = split_groups(samples, settings.validation_fraction, seed)
    train_samples = [samples[i] for i in train_idx]
    val_samples = [samples[i] for i in val_idx]
    log.info("prepared %d studies in %.0f s: %d training, %d validation", len(samples),
             time.perf_counter() - t0, len(train_samples), len(val_samples))
    if not val_samples:
        log.warning("no validation studies (validation_fraction %g of %d studies): the bundle will not "
                    "be calibrated (temperature 1, threshold 0.5) and has no validation metrics",
                    settings.validation_fraction, len(samples))
    if not train_samples:
        raise InputError("no training studies left after the validation split")
    state = _load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    if state is not None:  # checked before the run folder's record is rewritten
        _check_same_split(state, train_samples, val_samples, ckpt_path)
        _resumed_average(state, int(state["epoch"]), settings, ckpt_path)
    if rt.main:
        atomic_write_json(run_dir / "config.json", {"model": settings.model.to_json(),
                                                    "document": settings.document})
        write_case_list(run_dir / "validation_cases.csv", val_samples)

    net = DiagnosisNetwork(cfg)
    pretrained = load_pretrained(net, settings)
    net = net.to(rt.device)
    cuda = rt.device.type == "cuda"
    if settings.channels_last:
        net.use_channels_last(two_d=cuda or cfg.channels_last_2d, three_d=True)
    params = [p for p in net.parameters_of_network() if p.requires_grad]  # the refiner: own stage
    opt = torch.optim.AdamW(params, lr=settings.phases[0].lr, weight_decay=settings.weight_decay)
    amp_ctx, amp_dtype = _autocast(rt.device, settings.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    start_epoch = 0
    average: dict | None = None  # running mean of the weights over the last average_epochs
    n_averaged = 0
    digest = settings_digest(settings)
    if state is not None:
        if state.get("settings_sha256") != digest:
            log.warning("the config changed since the checkpoint was written; resuming anyway")
        _load_network_state(net, state["model"])
        opt.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"])
        average, n_averaged = _resumed_average(state, start_epoch, settings, ckpt_path)
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)
    elif resume:
        log.warning("no checkpoint in %s; starting from scratch", run_dir)
    model = net
    if rt.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[rt.device.index] if cuda else None, find_unused_parameters=True)
    loss_fn = DiagnosisLoss(settings.loss_weights, settings.alignment,
                            settings.alignment_temperature, settings.pos_weight, settings.segmentation_loss,
                            cfg.finding_cell, cfg.finding_topk)
    train_ds = StudyDataset(train_samples, augment=True, seed=seed, config=cfg,
                            lesion_paste=settings.lesion_paste)
    if settings.lesion_paste > 0 and rt.main:
        _say_paste(train_ds)
    sampler = None
    if rt.distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, num_replicas=rt.world, rank=rt.rank, shuffle=True, seed=seed)
    metrics_path = run_dir / "metrics.csv"
    if rt.main:
        _trim_metrics(metrics_path, start_epoch)
    tb = _tensorboard(run_dir) if rt.main else None
    y_val = np.array([s.malignant for s in val_samples])

    for epoch in range(start_epoch, settings.epochs):
        phase, k = settings.phase_of(epoch)
        torch.manual_seed(_seed(seed, "epoch", epoch))
        train_ds.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = DataLoader(train_ds, batch_size=settings.batch_size, shuffle=sampler is None,
                            sampler=sampler, num_workers=settings.num_workers,
                            collate_fn=functools.partial(collate, wsi_dim=cfg.wsi_dim),
                            generator=torch.Generator().manual_seed(_seed(seed, "shuffle", epoch)),
                            drop_last=len(train_ds) > settings.batch_size, pin_memory=cuda,
                            worker_init_fn=ignore_ctrl_c if settings.num_workers else None)
        rng = np.random.default_rng(_seed(seed, "dropout", epoch, rt.rank))
        model.train()
        sums: dict[str, float] = {}
        steps = len(loader)
        bar = _Progress(steps, f"epoch {epoch + 1}/{settings.epochs} ({phase.name})", rt.main)
        te = time.perf_counter()
        lr = phase.lr
        with ctrl_c_deferred():  # not lost while the workers start
            batches = iter(loader)
        for step, batch in enumerate(batches):
            raise_if_terminated()  # (a SIGTERM whose exception a library swallowed)
            lr = _lr_at(settings, phase, k + step / max(1, steps))
            for g in opt.param_groups:
                g["lr"] = lr
            batch = {key: v.to(rt.device, non_blocking=True) for key, v in batch.items()}
            bsz = int(batch["malignant"].shape[0])
            keep = None
            if phase.fusion and settings.modality_dropout > 0:
                keep = {m: v.to(rt.device) for m, v in modality_keep(batch, settings.modality_dropout, rng).items()}
            cfp = torch.as_tensor(rng.random(bsz) < settings.crop_from_prediction, device=rt.device)
            proto = net.pathology.prototype_malignant if net.pathology.has_prototype else None
            with amp_ctx:
                out = model(batch, keep=keep, crop_from_prediction=cfp)
                total, parts = loss_fn(out, batch, fusion=phase.fusion, prototype=proto)
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if settings.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            scaler.step(opt)
            scaler.update()
            has = batch["pathology_present"]
            if bool(has.any()):
                net.pathology.update_prototypes(out["pathology_embedding"][has], batch["malignant"][has])
            parts["loss"] = float(total.detach())
            for key, v in parts.items():
                sums[key] = sums.get(key, 0.0) + v
            bar.update(parts["loss"])
        bar.close()
        if rt.main and epoch >= settings.epochs - settings.average_epochs:
            average, n_averaged = _update_average(average, n_averaged, _network_state(net))
        row = {"epoch": epoch + 1, "phase": phase.name, "lr": lr}
        row.update({("train_loss" if key == "loss" else f"train_{key}"): v / max(1, steps) for key, v in sums.items()})
        if rt.main:
            if val_samples:
                row.update(_validate(net, val_samples, y_val, loss_fn, rt.device, settings, phase))
            row["seconds"] = round(time.perf_counter() - te, 1)
            state = {"model": _network_state(net), "optimizer": opt.state_dict(),
                     "scaler": scaler.state_dict(), "epoch": epoch + 1, "settings_sha256": digest,
                     "split": _split_ids(train_samples, val_samples)}
            if average is not None:
                state.update(average=average, n_averaged=n_averaged)
            # the row first: a kill between the two leaves a row that a resume drops and redoes
            # (its epoch is not in the checkpoint), never a checkpoint without its row
            _append_metrics(metrics_path, row)
            _save_checkpoint(ckpt_path, state)
            if tb is not None:
                for key, v in row.items():
                    if isinstance(v, float) and math.isfinite(v):
                        tb.add_scalar(key, v, epoch + 1)
            log.info("epoch %d/%d (%s): loss %.4f, val AUC %s, val Dice %s, %.0f s", epoch + 1,
                     settings.epochs, phase.name, row.get("train_loss", math.nan),
                     f"{row['val_auc']:.3f}" if "val_auc" in row else "n/a",
                     f"{row['val_dice']:.3f}" if "val_dice" in row else "n/a", row["seconds"])
        if rt.distributed:
            import torch.distributed as dist

            dist.barrier()

    result = {}
    if rt.main and average is not None and settings.average_epochs:
        _load_network_state(net, average)
        train_ds.set_epoch(settings.epochs - 1)  # the same pass when a finished run is resumed
        train_ds.lesion_paste = 0.0  # the statistics of real films, as inference sees
        _recompute_batch_norm(net, train_ds, settings, rt.device)
        log.info("weights averaged over the last %d epochs; BatchNorm statistics re-estimated on "
                 "the training images", n_averaged)
    if rt.main:
        refiner_metrics = None
        if net.refiner is not None:
            refiner_metrics = _refiner_stage(net.refiner, settings, train_samples, val_samples,
                                             rt.device, run_dir / "checkpoints" / "refiner.pt")
        trained = tuple(m for m in MODALITIES if any(m in s.prepared.inputs for s in train_samples))
        with_subtype = any(s.subtype >= 0 for s in train_samples)
        # a 2D modality trained without sides is read without them (untrained side embeddings)
        unsided = tuple(m for m in ("MG", "US") if m in trained and not any(
            m in s.prepared.inputs and (s.prepared.inputs[m].side < len(SIDES) - 1).any() for s in train_samples))
        if unsided != settings.model.unsided:
            settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model, unsided=unsided))
        result = _finish(net, settings, val_samples, y_val, rt.device, run_dir, bundle_path,
                         overwrite, reproduce, len(train_samples), trained, with_subtype,
                         refiner_metrics, pretrained,
                         synthetic=any(s.synthetic for s in train_samples + val_samples))
        if tb is not None:
            tb.close()
    if rt.distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return result


def _network_state(net) -> dict:
    """The weights the network's epochs train: all but the lesion refiner's (trained in its
    own stage, kept in ``checkpoints/refiner.pt``)."""
    return {k: v for k, v in net.state_dict().items() if not k.startswith("refiner.")}


def _load_network_state(net, state: dict) -> None:
    """Load a checkpoint's network weights. The refiner's are not taken from it (an older
    checkpoint may hold its untrained ones, of another shape): the refiner stage trains or
    loads them, so adding, changing or removing a ``lesion_refiner`` still resumes the run."""
    state = {k: v for k, v in state.items() if not k.startswith("refiner.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes differ: the model config changed since
        first = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln][:2]
        raise InputError(f"the checkpoint does not fit the configured network ({'; '.join(first) or e})") from None
    bad = [k for k in missing if not k.startswith("refiner.")] + list(unexpected)
    if bad:
        raise InputError(f"the checkpoint does not fit the configured network ({', '.join(bad[:5])}"
                         f"{', ...' if len(bad) > 5 else ''})")


def refiner_digest(settings: TrainSettings) -> str:
    """What the refiner stage depends on: its settings, the data, the split and the intensity
    normalisation (not the network's, which it does not read)."""
    cfg = settings.model
    doc = {"lesion_refiner": cfg.to_json()["lesion_refiner"], "percentiles": list(cfg.intensity_percentiles),
           "refiner": dataclasses.asdict(settings.refiner), "data": list(settings.data), "seed": settings.seed,
           "validation_fraction": settings.validation_fraction}
    return hashlib.sha256(json_dumps(doc).encode()).hexdigest()


def _refiner_stage(refiner, settings: TrainSettings, train_samples, val_samples, device,
                   path: Path) -> dict:
    """Train the lesion refiner on the training studies' images (their own resolution, read
    again from the data sources), or load it from ``path`` when this run already trained it
    with the same settings (:func:`refiner_digest`); returns its metrics (also stored in
    ``path``).

    Raises ``InputError`` when there is nothing to train it on (no reference lesion in the
    refined modalities, or ``refiner.epochs`` 0): an untrained refiner would draw noise.
    """
    from .refiner import lesion_planes, train_refiner

    digest = refiner_digest(settings)
    if path.exists():
        state = _load_checkpoint(path)
        if state.get("settings_sha256") == digest:
            refiner.load_state_dict(state["model"])
            refiner.to(device).eval()
            log.info("lesion refiner loaded from %s (trained by this run before)", path)
            return dict(state["metrics"])
        log.info("the settings changed since %s was written: training the refiner again", path)
    cfg = settings.model
    t0 = time.perf_counter()
    rc = cfg.lesion_refiner
    train_ids = {s.study_id for s in train_samples}
    val_ids = {s.study_id for s in val_samples}
    train_planes, val_planes = [], []
    for task in _tasks(settings.data, settings.base_dir):
        for st, _ in _task_studies(task, cfg):  # only the planes are kept, not the studies
            if st.study_id in train_ids or st.study_id in val_ids:
                planes = lesion_planes([st], rc, cfg.intensity_percentiles, settings.refiner)
                (train_planes if st.study_id in train_ids else val_planes).extend(planes)
    log.info("lesion refiner: %d training and %d validation lesion images (%s), read in %.0f s",
             len(train_planes), len(val_planes), "+".join(rc.modalities), time.perf_counter() - t0)
    if not train_planes or not settings.refiner.epochs:
        why = (f"no training image of {'/'.join(rc.modalities)} has a reference lesion mask"
               if not train_planes else "train.refiner.epochs is 0")
        raise InputError(f"the model config has a lesion_refiner but it cannot be trained ({why}); "
                         "remove lesion_refiner or fix the data, then --resume the run")
    metrics = train_refiner(refiner, train_planes, settings.refiner, _seed(settings.seed, "refiner"),
                            device, val_planes)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    log.info("lesion refiner trained: %s", metrics)
    _save_checkpoint(path, {"model": refiner.state_dict(), "settings_sha256": digest, "metrics": metrics})
    return metrics


def _update_average(average: dict | None, n: int, state: dict) -> tuple[dict, int]:
    """Running mean of floating-point weights and buffers (stochastic weight averaging);
    integer buffers (BatchNorm's batch counters) keep their latest value."""
    if average is None:
        return {k: v.detach().clone() for k, v in state.items()}, 1
    n += 1
    for k, v in state.items():
        if v.is_floating_point():
            average[k].add_(v.detach() - average[k], alpha=1.0 / n)
        else:
            average[k].copy_(v)
    return average, n


def _say_paste(train_ds) -> None:
    """Log what lesion copy-paste can do with the training split; warn when it can do nothing."""
    from .data import paste_recipient

    recipients = sum(map(paste_recipient, train_ds.samples))
    donors = len(train_ds._donors)
    if not donors or not recipients:
        log.warning("lesion_paste %g does nothing: the training split has %s", train_ds.lesion_paste,
                    "no mammogram with a usable lesion mask to paste from (docs/MODEL.md)" if not donors
                    else "no normal mammography-only study to paste into")
    else:
        log.info("lesion copy-paste: %d findings may be pasted into %d normal mammography studies "
                 "(each with probability %g per epoch)", donors, recipients, train_ds.lesion_paste)


def _recompute_batch_norm(net, train_ds, settings: TrainSettings, device) -> None:
    """BatchNorm running statistics of averaged weights, from one pass over the training
    images (as ``torch.optim.swa_utils.update_bn``): the averaged weights' activations differ
    from those the running statistics were collected on. Crops come from the predicted lesion,
    as at inference."""
    import torch

    from .data import collate

    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative mean over the pass
    was_training = net.training
    net.train()
    bs = settings.batch_size
    with torch.no_grad():
        for start in range(0, len(train_ds), bs):
            items = [train_ds[i] for i in range(start, min(len(train_ds), start + bs))]
            if len(items) < 2:  # BatchNorm needs two values per channel
                continue
            batch = {k: v.to(device) for k, v in collate(items, settings.model.wsi_dim).items()}
            net(batch, crop_from_prediction=torch.ones(len(items), dtype=torch.bool, device=device))
    for m, mom in zip(norms, momenta):
        m.momentum = mom
    net.train(was_training)


def _validate(net, val_samples, y_val, loss_fn, device, settings, phase) -> dict:
    import torch

    from .data import StudyDataset, collate

    pred = predict_samples(net, val_samples, device, settings.batch_size)
    ds = StudyDataset(val_samples, augment=False)
    total, n = 0.0, 0
    dice: list[float] = []
    net.eval()
    with torch.inference_mode():
        for start in range(0, len(ds), settings.batch_size):
            items = [ds[i] for i in range(start, min(len(ds), start + settings.batch_size))]
            batch = {k: v.to(device) for k, v in collate(items, settings.model.wsi_dim).items()}
            out = net(batch, crop_from_prediction=torch.ones(len(items), dtype=torch.bool, device=device))
            t, _ = loss_fn(out, batch, fusion=phase.fusion)
            total += float(t) * len(items)
            n += len(items)
            dice += _lesion_dice(out["encodings"], batch, settings.model.lesion_threshold)
    net.train()
    row = {"val_loss": total / max(1, n), "val_auc": _auc_of(pred["logit"], y_val),
           "val_dice": float(np.mean(dice)) if dice else math.nan}
    for m in MODALITIES:
        row[f"val_auc_{m}"] = _auc_of(pred["aux"][m], y_val)
    row["val_auc_finding"] = _auc_of(pred["finding"], [s.abnormal for s in val_samples])
    return row


def _lesion_dice(encodings, batch, threshold: float) -> list[float]:
    """Dice of ``lesion probability >= threshold`` with the reference mask, on the network
    grid, for every image with a non-empty reference mask (the per-epoch ``val_dice``; the
    bundle's own mask rule and the original image grid are scored by ``binds evaluate``)."""
    import torch

    out = []
    for m, e in encodings.items():
        b, s = e.index[:, 0], e.index[:, 1]
        ref = batch[f"{m}_masks"][b, s].flatten(1) > 0
        keep = batch[f"{m}_mask_given"][b, s] & ref.any(1)
        if not bool(keep.any()):
            continue
        pred = (torch.sigmoid(e.lesion_logits.float()).flatten(1) >= threshold)[keep]
        ref = ref[keep]
        inter = (pred & ref).sum(1).float()
        out += (2 * inter / (pred.sum(1) + ref.sum(1)).float()).tolist()
    return out


def write_case_list(path: Path, samples) -> None:
    """``study_id,group,malignant`` of ``samples`` (the validation split of a run), for
    ``binds evaluate --cases``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "group", "malignant"])
        for smp in samples:
            w.writerow([smp.study_id, smp.group, "" if math.isnan(smp.malignant) else int(smp.malignant)])
    os.replace(tmp, path)


def _trim_metrics(path: Path, start_epoch: int) -> None:
    """Keep the rows of epochs before ``start_epoch`` (a resumed run rewrites the rest)."""
    if not path.exists():
        return
    import io

    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= start_epoch]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())  # a kill now leaves the old rows, not none


def _append_metrics(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _finish(net, settings: TrainSettings, val_samples, y_val, device, run_dir: Path,
            bundle_path, overwrite: bool, reproduce: str, n_train: int,
            modalities: tuple[str, ...] = MODALITIES, subtype_trained: bool = True,
            refiner_metrics: dict | None = None, pretrained: dict | None = None,
            synthetic: bool = False) -> dict:
    """Calibrate on the validation split, measure, and write the bundle (which reads only the
    ``modalities`` it was trained on; ``synthetic``: trained on synthetic studies)."""
    from ..bundle import save_bundle
    from .calibration import compare_with_other_breast, fit_platt, fit_temperature, operating_points
    from .metrics import bootstrap_ci, ece, finite_json, macro_auc

    metrics: dict = {"n_validation": len(val_samples), "n_train": n_train}
    temperature, ops = 1.0, operating_points([], [])
    finding_temperature = finding_bias = finding_reference = None
    fitted = False  # the malignancy temperature: needs malignant and other studies in the split
    if val_samples:
        pred = predict_samples(net, val_samples, device, settings.batch_size, combinations=True)
        ok = np.isfinite(y_val) & np.isfinite(pred["logit"])
        z, y = pred["logit"][ok], y_val[ok].astype(int)
        fitted = bool(y.size) and y.min() != y.max()
        if not fitted:
            log.warning("the validation split holds %s: the malignancy probability is not calibrated "
                        "(temperature 1) and the operating point is a fixed 0.5; calibrate the bundle on "
                        "labelled studies of both kinds with binds calibrate",
                        "no labelled study" if not y.size else
                        ("only malignant studies" if y.min() == 1 else "no malignant study"))
        temperature = fit_temperature(z, y)
        p = 1 / (1 + np.exp(-z / temperature))
        ops = operating_points(p, y, settings.target_sensitivity)
        auc_v = _auc_of(z, y)
        metrics.update({
            "validation_auc": auc_v,
            "validation_auc_ci95": list(bootstrap_ci(_auc_of, z, y, n=500, seed=settings.seed, stratify=y)),
            "validation_ece": ece(p, y),
            "validation_auc_by_combination": {k: _auc_of(v, y_val) for k, v in pred["combinations"].items()},
            "validation_auc_by_modality_head": {m: _auc_of(pred["aux"][m], y_val) for m in MODALITIES},
        })
        ab = np.array([s.abnormal for s in val_samples], dtype=float)
        metrics["validation_auc_finding"] = _auc_of(pred["finding"], ab)
        finding = pred["finding"]
        okf = np.isfinite(ab) & np.isfinite(finding)
        normal = okf & (ab == 0)
        if normal.any():  # the level the bilateral comparison measures the other breast from
            finding_reference = float(np.median(finding[normal]))
        cfg = settings.model
        if cfg.bilateral_weight > 0:  # as inference reads it: against the other breast
            films = [_one_film(s) for s in val_samples]
            both = (okf & (ab == 0)).any() and (okf & (ab == 1)).any()  # else nothing to calibrate
            if both and any(f is None and "MG" in s.prepared.inputs for f, s in zip(films, val_samples)):
                # a study of several films (or of MG and more): only inference itself pairs them
                finding = _finding_logits_by_inference(net, settings, val_samples, device,
                                                       finding_reference or 0.0, modalities)
                metrics["validation_finding_compared_by"] = "inference"
            else:  # one film per study: paired by woman, as inference pairs a study's comparison images
                # (or nothing to calibrate: the AUC only)
                finding = compare_with_other_breast(finding, films, cfg.bilateral_weight, finding_reference or 0.0)
            metrics["validation_auc_finding_compared"] = _auc_of(finding, ab)
            okf = np.isfinite(ab) & np.isfinite(finding)
        if (okf & (ab == 0)).any() and (okf & (ab == 1)).any():  # the finding probability is calibrated too
            finding_temperature, finding_bias = fit_platt(finding[okf], ab[okf].astype(int))
        st = np.array([s.subtype for s in val_samples])
        sel = st >= 0
        if sel.sum() >= 2:
            metrics["validation_subtype_macro_auc"] = macro_auc(pred["subtype"][sel], st[sel], len(SUBTYPES))
        if settings.uncertainty_band == "fit" and fitted:
            band = _fit_band(pred, val_samples, y_val, temperature, float(ops["default"]["threshold"]))
            if band is not None:
                metrics["validation_uncertainty_band"] = band
    if settings.uncertainty_band == "fit" and "validation_uncertainty_band" not in metrics:
        log.warning("uncertainty_band \"fit\": the validation split holds no malignant and other studies "
                    "with mammography or ultrasound and an MRI; the bundle keeps the default band %s "
                    "(binds calibrate --fit band fits it on other studies)", list(DEFAULT_UNCERTAINTY_BAND))
    if refiner_metrics is not None:
        metrics["lesion_refiner"] = refiner_metrics
    metrics = finite_json(metrics)
    fitted_band = metrics.get("validation_uncertainty_band")
    binds = bundle_metadata(settings, temperature, ops, n_train, len(val_samples), modalities,
                            subtype_trained, pretrained, finding_temperature, finding_reference,
                            finding_bias, temperature_fitted=fitted, synthetic_studies=synthetic,
                            band=fitted_band)
    name = settings.bundle.get("name", "binds-diagnosis")
    path = Path(bundle_path) if bundle_path else run_dir / "bundle"
    save_bundle(path, net.state_dict(), binds, name=name,
                version=str(settings.bundle.get("version", "0.1.0")),
                description=settings.bundle.get("description",
                                                "BINDS multimodal breast lesion diagnosis (MG, US, MRI)."),
                task="Breast lesion malignancy and molecular subtype from MG, US and MRI",
                reproduce=reproduce, metrics=metrics, overwrite=overwrite or bool(bundle_path is None))
    if val_samples:  # the held-out split travels with the bundle (binds evaluate --cases)
        write_case_list(path / "docs" / "validation_cases.csv", val_samples)
    log.info("bundle written to %s (validation AUC %s)", path, metrics.get("validation_auc"))
    atomic_write_json(run_dir / "final_metrics.json", metrics)
    return {"bundle": str(path), **metrics}


def _finding_logits_by_inference(net, settings: TrainSettings, val_samples, device, reference: float,
                                 modalities: tuple[str, ...]) -> np.ndarray:
    """The validation studies' finding logits as inference computes them
    (:meth:`~.inference.DiagnosisModel.predict`: each mammogram compared with the other breast
    in its study or its comparison images, the films ``mg_select`` picks), aligned with
    ``val_samples`` (NaN for a study not found again). For splits with studies of several
    mammograms, whose pairing :func:`~.calibration.compare_with_other_breast` cannot
    reproduce; the studies are read again from the data sources, one at a time, until all are
    found (study IDs are unique: :func:`load_samples`). Studies the model cannot read are
    left out (NaN) with a warning."""
    import copy

    from .inference import DiagnosisModel

    model = DiagnosisModel(copy.deepcopy(net), {"calibration": {"finding_reference": float(reference)},
                                                "modalities": list(modalities)}, str(device))
    where = {s.study_id: i for i, s in enumerate(val_samples)}
    out = np.full(len(val_samples), np.nan)
    for task in _tasks(settings.data, settings.base_dir) if where else ():
        for st, _ in _task_studies(task, settings.model):
            i = where.pop(st.study_id, None)
            if i is not None:
                try:
                    f = model.predict(st, saliency="none").finding_logit
                except InputError as e:  # e.g. only a modality the bundle does not read
                    log.warning("finding calibration: study %s left out (%s)", st.study_id, e)
                    f = None
                out[i] = np.nan if f is None else float(f)
            if not where:
                break
        if not where:
            break
    log.info("validation finding logits compared with the other breast by inference (%d of %d studies)",
             int(np.isfinite(out).sum()), len(val_samples))
    return out


def _one_film(sample) -> tuple | None:
    """``(woman, laterality, view)`` of a study that is one mammogram of known laterality (for
    the bilateral comparison in calibration), else None."""
    inp = sample.prepared.inputs
    if set(inp) != {"MG"} or inp["MG"].n_slots != 1:
        return None
    side = SIDES[int(inp["MG"].side[0])]
    if side not in ("L", "R"):
        return None
    return sample.group, side, MG_VIEW_CODES[int(inp["MG"].view[0])]


def bundle_metadata(settings: TrainSettings, temperature: float, ops: dict, n_train: int,
                    n_validation: int, modalities: tuple[str, ...] = MODALITIES,
                    subtype_trained: bool = True, pretrained: dict | None = None,
                    finding_temperature: float | None = None,
                    finding_reference: float | None = None,
                    finding_bias: float | None = None, temperature_fitted: bool = True,
                    synthetic_studies: bool = False, band: dict | None = None) -> dict:
    """The ``binds`` section of a diagnosis bundle's metadata (see docs/MODEL.md);
    ``pretrained``: :func:`load_pretrained`'s record of the weights training started from;
    ``finding_temperature``, ``finding_bias``: the finding logit's Platt scaling
    (``sigmoid(f / T + b)``, :func:`~.calibration.fit_platt`), fitted on the validation split
    (compared with the other breast when ``bilateral_weight`` > 0; None: the split lacks normal
    or abnormal studies, the finding probability stays the plain sigmoid);
    ``finding_reference``: the median finding logit of the validation split's normal studies
    (None: it has none); ``temperature_fitted``: False when the split could not calibrate the
    malignancy probability (one class, or no labels); ``synthetic_studies``: some training or
    validation study was synthetic (``--model auto`` never gives real images to such a bundle);
    ``band``: the uncertainty band fitted on the validation split (:func:`_fit_band`), else the
    config's (its default when the config says ``"fit"`` and the split could not fit one)."""
    from ..bundle import FINDING_CALIBRATED, MALIGNANCY_CALIBRATED
    from .inference import BUNDLE_KIND

    cfg = settings.model
    synthetic = synthetic_studies or any("synthetic" in d for d in settings.data)
    return {
        "kind": BUNDLE_KIND,
        "model_config": cfg.to_json(),
        "modalities": list(modalities),  # the others' branches are untrained: never used
        "subtype_trained": bool(subtype_trained),  # False: no subtype labels, no subtype output
        "roles": {
            "MG": {"max_images": cfg.mg_max_views, "views": ["CC", "MLO", "other"],
                   "preferred_views": list(cfg.mg_views),
                   "laterality": ["L", "R"], "orientation": "chest wall at the left (right breasts mirrored)"},
            "US": {"max_images": cfg.us_max_images, "frame": "role.frame, else the central frame"},
            "MR": {"channels": list(MR_CHANNELS), "reference_grid": "DCE1, else T1_PRE, else first"},
        },
        "input_sizes": {"MG": [1, *cfg.mg_size], "US": [1, *cfg.us_size], "MR": list(cfg.mr_size),
                        "crops": {"MG": list(cfg.mg_crop), "US": list(cfg.us_crop), "MR": list(cfg.mr_crop)}},
        "classes": {"malignancy": ["not_malignant", "malignant"], "subtype": list(SUBTYPES)},
        "outputs": {"malignancy_probability": (MALIGNANCY_CALIBRATED if temperature_fitted else
                                               "sigmoid of the malignancy logit (not calibrated)"),
                    "finding_probability": (FINDING_CALIBRATED if finding_temperature is not None
                                            else "sigmoid of the pooled lesion logits (not calibrated)")
                    + ("; each mammogram compared with the other breast (bilateral_weight)"
                       if cfg.bilateral_weight > 0 else ""),
                    "saliency": "max(0, cosine) of projected features with the malignant pathology prototype",
                    "lesion_probability": "per image, on the image grid"},
        "calibration": {"method": "temperature" if temperature_fitted else "none",
                        "temperature": float(temperature),
                        "fitted_on": "validation split" if temperature_fitted else None, "n": int(n_validation),
                        **({"finding_temperature": float(finding_temperature)}
                           if finding_temperature is not None else {}),
                        **({"finding_bias": float(finding_bias)} if finding_bias is not None else {}),
                        **({"finding_reference": float(finding_reference)}
                           if finding_reference is not None else {}),
                        **({"band_fitted_on": "validation split", "band_n": band["n"]} if band else {})},
        "operating_point": ops["default"],
        "operating_points": ops,
        "uncertainty_band": (band["new"] if band else
                             list(DEFAULT_UNCERTAINTY_BAND if settings.uncertainty_band == "fit"
                                  else settings.uncertainty_band)),
        "training_data": {"sources": list(settings.data), "synthetic": synthetic,
                          "n_train": int(n_train), "n_validation": int(n_validation),
                          "validation_fraction": settings.validation_fraction, "seed": settings.seed},
        "training": {"phases": [dataclasses.asdict(p) for p in settings.phases],
                     "alignment": settings.alignment, "loss_weights": dataclasses.asdict(settings.loss_weights),
                     "modality_dropout": settings.modality_dropout, "batch_size": settings.batch_size,
                     "average_epochs": settings.average_epochs,  # (a resume keeps to it: _resumed_average)
                     **({"pretrained": pretrained} if pretrained else {}),
                     **({"refiner": dataclasses.asdict(settings.refiner)} if cfg.lesion_refiner else {})},
        "intended_use": "research; not for clinical use",
        "version": str(settings.bundle.get("version", "0.1.0")),
        # a bundle that misses its validation targets says so in every report it makes
        **({"caution": str(settings.bundle["caution"])} if settings.bundle.get("caution") else {}),
    }
