"""Which diagnosis bundle reads a study when the user asks for ``--model auto`` (the default).

Bundles say in their metadata what they were trained on: ``binds.modalities`` (the modalities
the network learned) and ``binds.training_data.synthetic``. The rule:

1. A synthetic study (``study.synthetic``: teaching cases, phantoms) goes to the synthetic demo
   bundle, which reads every modality.
2. A real study goes to the bundle trained on *real* images that reads the most of its
   modalities; ties go to the bundle whose modalities come first in :data:`REAL_PRIORITY`
   (ultrasound, the stage-1 workhorse, before mammography), then to the one found first on the
   search path (``BINDS_MODEL_PATH``, the user folder, then the shipped bundles: a bundle of
   your own overrides a shipped one). Images of other modalities are
   left out of the diagnosis, and the report says so (see ``binds diagnose``).
3. A real study that no real-image bundle can read (breast MRI alone: no public breast MRI was
   in reach for training) falls back to the demo bundle, with a warning that its figures on
   real images mean nothing.

The choice is made per study, so a batch mixing ultrasound and mammography uses both bundles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..study import Study
from .config import MODALITIES

log = logging.getLogger(__name__)

AUTO = "auto"
#: Modalities in the order real-image bundles are preferred for a study that has several.
REAL_PRIORITY = ("US", "MG", "MR")


@dataclass(frozen=True)
class BundleInfo:
    """What the selection needs to know about an installed diagnosis bundle."""

    name: str
    path: Path
    modalities: tuple[str, ...]
    synthetic: bool


@dataclass(frozen=True)
class Choice:
    """The bundle chosen for a study and why (recorded in the report's notes)."""

    bundle: BundleInfo
    reason: str
    unused: tuple[str, ...] = ()  #: labels of the study's images the bundle does not read
    warning: str | None = None


def bundle_info(path: Path, meta: dict) -> BundleInfo:
    """:class:`BundleInfo` from a bundle's ``metadata.json`` content."""
    binds = meta.get("binds", {}) if isinstance(meta, dict) else {}
    from .inference import modality_names

    mods = modality_names(binds.get("modalities") or MODALITIES)  # as DiagnosisModel.modalities
    training = binds.get("training_data", {})
    synthetic = bool(training.get("synthetic", True)) if isinstance(training, dict) else True
    return BundleInfo(str(meta.get("name") or path.name), Path(path), mods, synthetic)


def installed_bundles() -> list[BundleInfo]:
    """Diagnosis bundles on the search path (see :func:`BINDSLib.bundle.search_path`)."""
    from ..bundle import list_bundles, read_metadata
    from ..errors import ModelError
    from .inference import BUNDLE_KIND

    out = []
    for path in list_bundles(kind=BUNDLE_KIND):
        try:
            out.append(bundle_info(path, read_metadata(path)))
        except ModelError as e:
            log.warning("ignoring bundle %s: %s", path, e)
    return out


def choose_bundle(study: Study, bundles: list[BundleInfo] | None = None,
                  default: str | None = None) -> Choice:
    """The bundle for ``study`` by the rule in the module docstring.

    ``bundles`` defaults to the installed ones; ``default`` is the synthetic fallback's name
    (default :data:`~.inference.DEFAULT_BUNDLE`). Raises :class:`~BINDSLib.errors.ModelError`
    when no bundle fits at all.
    """
    from ..errors import ModelError
    from .inference import DEFAULT_BUNDLE

    bundles = installed_bundles() if bundles is None else list(bundles)
    default = default or DEFAULT_BUNDLE
    present = {im.modality.value for im in study.images}
    if not present:
        raise ModelError(f"study {study.study_id} has no images to choose a model for")

    def unused_for(b: BundleInfo) -> tuple[str, ...]:
        return tuple(im.label for im in study.images if im.modality.value not in b.modalities)

    fallback = next((b for b in bundles if b.name == default), None)
    if fallback is None:
        fallback = next((b for b in bundles if b.synthetic and present <= set(b.modalities)), None)
    if study.synthetic:
        if fallback is None:
            raise ModelError(f"no synthetic-data bundle (such as {default}) is installed for the "
                             f"synthetic study {study.study_id}")
        return Choice(fallback, "synthetic study: the synthetic demo bundle", unused_for(fallback))

    def rank(item):
        order, b = item
        covered = present & set(b.modalities)
        first = min((REAL_PRIORITY.index(m) for m in covered), default=len(REAL_PRIORITY))
        return (-len(covered), first, order)

    real = [(k, b) for k, b in enumerate(bundles) if not b.synthetic and present & set(b.modalities)]
    if real:
        best = min(real, key=rank)[1]
        read = "+".join(m for m in MODALITIES if m in present and m in best.modalities)
        return Choice(best, f"real {read} images: the bundle trained on real {read}", unused_for(best))
    if fallback is None:
        raise ModelError(f"no installed bundle reads {'+'.join(sorted(present))} images "
                         f"(study {study.study_id}); pass --model")
    mods = "+".join(m for m in MODALITIES if m in present)
    warning = (f"no bundle trained on real {mods} images is installed: the synthetic demo bundle "
               f"{fallback.name} was used, and its figures on real images mean nothing")
    return Choice(fallback, f"real {mods} images, no real-image bundle for them", unused_for(fallback),
                  warning)


__all__ = ["AUTO", "BundleInfo", "Choice", "REAL_PRIORITY", "bundle_info", "choose_bundle",
           "installed_bundles"]
