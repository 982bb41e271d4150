"""Model bundles in the MONAI bundle layout, loaded safely.

Layout::

    BUNDLE/
      configs/metadata.json   MONAI metadata + a "binds" section (kind, model config,
                              modalities, roles, input sizes, classes, operating points,
                              calibration, training data, intended use) + "weights_sha256"
      models/model.pt         a plain ``state_dict`` (tensors only)
      docs/README.md          how it was made (the exact command) and its metrics

Loading checks the weights' SHA-256 against the metadata *before* unpickling, then uses
``torch.load(weights_only=True)``: a tampered file or a pickle carrying code is refused with
a clear :class:`~BINDSLib.errors.ModelError` and no code of it ever runs.

Where bundles are found (:func:`find_bundle`): an explicit path; else a name looked up in
``$BINDS_MODEL_PATH`` (``os.pathsep``-separated folders), the user folder
``~/.binds/models``, and the shipped ``Resources/Models``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .errors import InputError, ModelError, OutputError
from .fsutil import atomic_dir, json_dumps, visible_entries

METADATA = Path("configs") / "metadata.json"
WEIGHTS = Path("models") / "model.pt"
INTENDED_USE = "Research use only; not for clinical use."
#: ``binds.outputs.finding_probability`` of a bundle whose finding probability is calibrated.
FINDING_CALIBRATED = "calibrated (Platt: temperature and bias)"
#: ``binds.outputs.malignancy_probability`` of a bundle whose temperature was fitted
MALIGNANCY_CALIBRATED = "calibrated (temperature)"


def repo_resources() -> Path:
    """The ``Resources`` folder beside ``BINDSLib`` (clone, editable install, Slicer install)."""
    return Path(__file__).resolve().parent.parent / "Resources"


#: what a bundle folder holds (``--overwrite`` replaces only a bundle with a bundle)
BUNDLE_SIGNS = (METADATA.as_posix(),)


def user_model_dir() -> Path:
    return Path(os.environ.get("BINDS_USER_MODELS", Path.home() / ".binds" / "models"))


def search_path() -> list[Path]:
    env = [Path(p) for p in os.environ.get("BINDS_MODEL_PATH", "").split(os.pathsep) if p]
    return env + [user_model_dir(), repo_resources() / "Models"]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    """A loaded bundle: its folder, metadata and weights (a ``state_dict``)."""

    path: Path
    metadata: dict
    state_dict: dict

    @property
    def binds(self) -> dict:
        return self.metadata.get("binds", {})

    @property
    def kind(self) -> str:
        return self.binds.get("kind", "")

    @property
    def name(self) -> str:
        return self.metadata.get("name", self.path.name)

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0"))

    @property
    def sha256(self) -> str:
        return self.metadata["weights_sha256"]

    def summary(self) -> dict:
        """Name, version and hash, as recorded in reports."""
        return {"name": self.name, "version": self.version, "weights_sha256": self.sha256,
                "kind": self.kind, "path": str(self.path)}


def list_bundles(kind: str | None = None) -> list[Path]:
    """Bundle folders on the search path (optionally of one ``kind``), first occurrence wins.
    With ``kind``, a bundle whose metadata cannot be read is listed (last) when no readable
    bundle of its name is found: reading it again (:func:`read_metadata`) says what is wrong,
    and it does not hide a good copy further down the search path."""
    found: dict[str, Path] = {}
    broken: dict[str, Path] = {}
    for root in search_path():
        if not root.is_dir():
            continue
        for d in visible_entries(root):  # not a killed writer's hidden .NAME.XXXX.part copy
            meta = d / METADATA
            if d.name in found or not meta.is_file():
                continue
            if kind is not None:
                try:
                    if read_metadata(d).get("binds", {}).get("kind") != kind:
                        continue
                except ModelError:
                    broken.setdefault(d.name, d)
                    continue
            found[d.name] = d
    return list(found.values()) + [d for name, d in broken.items() if name not in found]


def hidden_bundles() -> list[tuple[Path, Path]]:
    """``(bundle, the one that hides it)``: bundle folders further down the search path whose
    folder name an earlier one already has (``--model NAME`` and ``auto`` never see them; a
    training run's bundle is always ``RUN_DIR/bundle``)."""
    first = {d.name: d for d in list_bundles()}
    hidden = []
    for root in search_path():
        if root.is_dir():
            for d in visible_entries(root):
                if (d / METADATA).is_file() and d.name in first and first[d.name] != d:
                    hidden.append((d, first[d.name]))
    return hidden


def find_bundle(name_or_path: str | os.PathLike) -> Path:
    """Resolve a bundle path or a bundle name on the search path."""
    p = Path(name_or_path)
    if p.exists():
        return p
    if len(p.parts) == 1:
        for root in search_path():
            if (root / p / METADATA).is_file():
                return root / p
    names = ", ".join(b.name for b in list_bundles()) or "none"
    raise ModelError(f"model bundle not found (searched {', '.join(map(str, search_path()))}; "
                     f"available: {names})", name_or_path)


def read_metadata(path: Path) -> dict:
    path = Path(path)
    meta_path = path / METADATA
    if not path.is_dir():
        raise ModelError("not a model bundle folder", path)
    if not meta_path.is_file():
        raise ModelError(f"not a model bundle: {METADATA} is missing", path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelError(f"invalid metadata JSON: {e}", meta_path) from None
    if not isinstance(meta, dict):
        raise ModelError(f"metadata is a JSON {type(meta).__name__}, not an object", meta_path)
    if not isinstance(meta.get("weights_sha256"), str):
        raise ModelError("metadata has no 'weights_sha256': cannot verify the weights", meta_path)
    for key, types in (("binds", dict), ("name", str), ("version", (str, int, float))):
        if key in meta and not isinstance(meta[key], types):
            raise ModelError(f"metadata '{key}' is a JSON {type(meta[key]).__name__}, not "
                             f"{'an object' if types is dict else 'a string'}", meta_path)
    return meta


def load_bundle(name_or_path: str | os.PathLike, kind: str | None = None) -> Bundle:
    """Load and verify a bundle. Raises :class:`ModelError` on any problem."""
    import pickle

    import torch

    path = find_bundle(name_or_path)
    meta = read_metadata(path)
    if kind is not None and meta.get("binds", {}).get("kind") != kind:
        raise ModelError(f"this is a {meta.get('binds', {}).get('kind')!r} bundle, "
                         f"a {kind!r} bundle is needed here", path)
    wpath = path / WEIGHTS
    if not wpath.is_file():
        raise ModelError(f"weights file {WEIGHTS} is missing", path)
    digest = sha256_file(wpath)
    if digest != meta["weights_sha256"]:
        raise ModelError(f"weights do not match the SHA-256 in {METADATA} (file changed or "
                         f"tampered with: {digest[:12]}... vs {meta['weights_sha256'][:12]}...); "
                         "refusing to load", wpath)
    try:
        state = torch.load(wpath, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, OSError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"refusing to load: not a plain weights file ({first})", wpath) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ModelError("weights file does not hold a state_dict", wpath)
    return Bundle(path, meta, state)


def module_from_state(factory, state: dict):
    """The module ``factory()`` builds, holding the tensors of ``state`` as its parameters and
    buffers.

    The module is built on PyTorch's ``meta`` device (shapes only: no random initialisation
    that the weights would replace anyway) and takes ``state``'s tensors themselves
    (``load_state_dict(assign=True)``), so the weights are never held twice while loading: a
    paper-size diagnosis network is 508 MB. A floating-point tensor of another precision than
    the module's is converted to the module's. Raises ``RuntimeError`` as
    ``load_state_dict(strict=True)`` does for missing, unexpected or mis-shaped weights.
    """
    import torch

    with torch.device("meta"):
        module = factory()
    expected = module.state_dict(keep_vars=True)
    fitted = {}
    for key, value in state.items():
        want = expected.get(key)
        if (isinstance(value, torch.Tensor) and want is not None and value.dtype != want.dtype
                and value.is_floating_point() and want.is_floating_point()):
            value = value.to(want.dtype)
        fitted[key] = value
    module.load_state_dict(fitted, strict=True, assign=True)
    return module


def save_bundle(path: str | os.PathLike, state_dict: dict, binds_metadata: dict, *,
                name: str, version: str, description: str, task: str,
                reproduce: str = "", metrics: dict | None = None,
                overwrite: bool = False) -> Path:
    """Write a bundle atomically; the metadata records the weights' SHA-256."""
    import numpy as np
    import torch

    try:
        import monai

        monai_version = monai.__version__
    except ImportError:  # pragma: no cover - monai is a dependency
        monai_version = "unknown"
    path = Path(path)
    with atomic_dir(path, overwrite=overwrite, signs=BUNDLE_SIGNS) as tmp:
        (tmp / "models").mkdir()
        (tmp / "configs").mkdir()
        (tmp / "docs").mkdir()
        wpath = tmp / WEIGHTS
        torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, wpath)
        meta: dict[str, Any] = {
            "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
                      "0.8.1/meta_schema_20220324.json",
            "name": name,
            "version": version,
            "changelog": {version: description},
            "monai_version": monai_version,
            "pytorch_version": torch.__version__.split("+")[0],
            "numpy_version": np.__version__,
            "required_packages_version": {"binds": __version__},
            "task": task,
            "description": description,
            "authors": "BINDS contributors",
            "copyright": "Copyright (c) BINDS contributors; Apache-2.0",
            "intended_use": INTENDED_USE,
            "weights_sha256": sha256_file(wpath),
            "binds": binds_metadata,
        }
        if metrics:
            meta["binds"] = {**binds_metadata, "metrics": metrics}
        (tmp / METADATA).write_text(json_dumps(meta), encoding="utf-8")
        readme = [f"# {name} {version}", "", description, "", f"Intended use: {INTENDED_USE}", ""]
        if reproduce:
            readme += ["## Reproduce", "", "```", reproduce, "```", ""]
        if metrics:
            readme += ["## Metrics", "", "```", json_dumps(metrics).strip(), "```", ""]
        (tmp / "docs" / "README.md").write_text("\n".join(readme), encoding="utf-8")
    return path


def check_copy_target(bundle_path: str | os.PathLike, path: str | os.PathLike) -> None:
    """Refuse to write a copy of a bundle inside the bundle itself (it would copy itself) or
    into a folder holding it (``--overwrite`` would delete the bundle and all beside it). The
    bundle's own folder is allowed: the copy replaces it atomically."""
    src, out = Path(bundle_path).resolve(), Path(path).resolve()
    if src in out.parents:
        raise OutputError("is inside the bundle it copies; choose a folder outside it", path)
    if out in src.parents:
        raise OutputError(f"holds the bundle it copies ({bundle_path}); name the new bundle's own "
                          "folder, e.g. a subfolder of it", path)


def check_new_version(bundle: Bundle, version: str) -> None:
    """Refuse a version the bundle already is or had (its changelog entry would be lost)."""
    if version == bundle.version or version in bundle.metadata.get("changelog", {}):
        raise InputError(f"version {version} is already in the changelog of {bundle.name}; "
                         "choose a new one", bundle.path)


def save_recalibrated(bundle: Bundle, path: str | os.PathLike, calibration: dict,
                      operating_points: dict | None, *, version: str, note: str, command: str = "",
                      overwrite: bool = False, uncertainty_band=None, probabilities_changed: bool = True) -> Path:
    """Write a copy of ``bundle`` with a new ``calibration`` and, unless None,
    ``operating_points`` and ``uncertainty_band`` (``binds calibrate``): the same weights (same SHA-256, checked), every
    other file as it is, the metadata's version, changelog and calibration updated, and
    ``note`` (with the ``command`` that made it) added to docs/README.md. Atomic: nothing is
    left half-written; a failed copy is an :class:`OutputError` naming ``path``."""
    src = Path(bundle.path)
    check_copy_target(src, path)
    check_new_version(bundle, version)
    meta = json.loads(json_dumps(bundle.metadata))  # a deep copy
    binds = meta.setdefault("binds", {})
    previous = {k: v for k, v in binds.get("calibration", {}).items() if k != "previous"}
    if not probabilities_changed:  # (the band alone: the calibration that came before stays "previous")
        previous = binds.get("calibration", {}).get("previous", previous)
    binds["calibration"] = {**calibration, "previous": previous}
    if operating_points:  # the malignancy part was refitted
        binds["operating_points"] = operating_points
        binds["operating_point"] = operating_points.get("default", binds.get("operating_point"))
        binds["calibration"]["method"] = "temperature"
        binds.setdefault("outputs", {})["malignancy_probability"] = MALIGNANCY_CALIBRATED
    if uncertainty_band is not None:
        binds["uncertainty_band"] = [float(v) for v in uncertainty_band]
    binds["version"] = version
    if "finding_temperature" in calibration:  # keeps what follows ";" (the bilateral comparison)
        outputs = binds.setdefault("outputs", {})
        rest = outputs.get("finding_probability", "").partition(";")[2]
        outputs["finding_probability"] = FINDING_CALIBRATED + (f";{rest}" if rest else "")
    meta["version"] = version
    meta["changelog"] = {**meta.get("changelog", {}), version: note}
    try:
        _write_copy(src, path, meta, version, bundle.version, note, command, overwrite, probabilities_changed)
    except OSError as e:
        raise OutputError(f"cannot write the bundle: {e.strerror or e}", path) from None
    return Path(path)


def _write_copy(src: Path, path, meta: dict, version: str, old_version: str, note: str,
                command: str, overwrite: bool, probabilities_changed: bool = True) -> None:
    import shutil

    with atomic_dir(path, overwrite=overwrite, signs=BUNDLE_SIGNS) as tmp:
        for item in src.iterdir():
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        if sha256_file(tmp / WEIGHTS) != meta["weights_sha256"]:
            raise ModelError("weights changed while being copied; nothing written", src / WEIGHTS)
        (tmp / METADATA).write_text(json_dumps(meta), encoding="utf-8")
        readme = tmp / "docs" / "README.md"
        readme.parent.mkdir(exist_ok=True)
        name = meta.get("name", src.name)
        text = readme.read_text(encoding="utf-8") if readme.is_file() else f"# {name}\n"
        title = f"# {name} {old_version}\n"
        if text.startswith(title):  # the title names the version
            text = f"# {name} {version}\n" + text[len(title):]
        section = [f"## {version}: recalibrated", "", note, "",
                   "Metrics recorded by training (the metadata's `metrics`, any listed above) were "
                   "computed with the calibration this one replaced." if probabilities_changed else
                   "The probabilities' calibration and the operating points are unchanged: metrics "
                   "recorded by training (the metadata's `metrics`, any listed above) still hold, "
                   "except what depends on the uncertainty band.", ""]
        if command:
            section += ["```", command, "```", ""]
        readme.write_text(text.rstrip("\n") + "\n\n" + "\n".join(section), encoding="utf-8")
