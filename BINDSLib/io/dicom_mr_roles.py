"""Which breast-MRI sequence a volume is: T1 pre-contrast, DCE post-contrast phase k, T2, DWI
(with its b-value) or ADC, from header attributes (documented in docs/DICOM.md).

Order of the rules for a volume:

1. skipped: localizers (ImageType LOCALIZER; words LOCALIZER, SCOUT, SURVEY, PILOT, CAL...),
   projections / MIPs (ImageType PROJECTION IMAGE or MIP), subtractions (ImageType or words
   SUB / SUBTRACTION) - derived images BINDS does not use;
2. ADC: ImageType contains ADC, or the word ADC / APPARENT in the description;
3. DWI: a b-value (DiffusionBValue, Siemens (0019,100C), GE (0043,1039), Philips (2001,1003),
   Siemens SequenceName ``*ep_b800``, or ``b800`` in the description), or the words DWI,
   DIFF, DIFFUSION, TRACEW, RESOLVE;
4. T2: the words T2 (also T2W, T2FS...), STIR, TIRM;
5. T1 (dynamic or not): the words T1, DYN, DYNAMIC, DCE, VIBRANT, THRIVE, FL3D, FLASH, TWIST,
   DISCO, PRE, POST, and contrast-related words;
6. timing: TE >= 60 ms and TR >= 1500 ms is T2; TR <= 1000 ms and TE <= 30 ms is T1;
7. otherwise the volume is skipped ("cannot tell the MR sequence").

The T1 volumes of a study are put in time order (AcquisitionTime, SeriesNumber, temporal
position) and each is pre- or post-contrast by the first rule that applies: acquisition time
against ContrastBolusStartTime; the words PRE / NATIVE or POST; ContrastBolusAgent recorded on
some T1 volumes but not others; the first temporal position of a multi-phase series is
pre-contrast; a lone T1 volume is post-contrast only if it records a contrast agent; otherwise
the first in time is pre-contrast and the later ones post-contrast. Pre-contrast volumes are
T1_PRE; post-contrast volumes are DCE phases 1, 2, ... in time order, with ``phase_time_s`` =
AcquisitionTime - ContrastBolusStartTime, else TriggerTime / 1000 (or the enhanced
TemporalPositionTimeOffset).
"""

from __future__ import annotations

import logging
import re

from ..study import Modality, MRSequence, Role
from .dicom_common import Skipped, dicom_time_s, image_type, number, text

log = logging.getLogger(__name__)

_LOCALIZER = {"LOC", "LOCALIZER", "LOCALISER", "SCOUT", "SURVEY", "PILOT", "CAL", "CALIBRATION",
              "3PLANE", "TRIPLANE"}
_SUBTRACTION = {"SUB", "SUBTRACTION", "SUBTRACTED", "SUBTRACT"}
_DWI = {"DWI", "DIFF", "DIFFUSION", "TRACEW", "RESOLVE", "EP2D", "DW", "DWIBS"}
_T2 = {"STIR", "TIRM"}
_T1 = {"T1", "DYN", "DYNAMIC", "DCE", "VIBRANT", "THRIVE", "FL3D", "FLASH", "TWIST", "DISCO",
       "VIEWS", "LAVA", "PRE", "POST", "PRECONTRAST", "POSTCONTRAST", "NATIVE"}
_PRE = {"PRE", "PRECONTRAST", "NATIVE", "UNENHANCED", "NONCONTRAST"}
_POST = {"POST", "POSTCONTRAST", "GD", "GADO", "GADOLINIUM"}
_B_TEXT_RE = re.compile(r"(?:^|[^A-Z0-9])B[ _=-]?(\d{1,4})(?![0-9])")
_B_SEQNAME_RE = re.compile(r"EP_B(\d{1,4})")
_PHASE_ATTRIBUTES = ("temporal", "trigger_ms", "acq_time_s", "order")


def words(*texts: str) -> set[str]:
    return {w for t in texts for w in re.split(r"[^A-Z0-9]+", (t or "").upper()) if w}


def description_words(ds) -> set[str]:
    return words(text(ds, "SeriesDescription"), text(ds, "ProtocolName"))


def _private_number(ds, tag) -> float | None:
    elem = ds.get(tag)
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("latin-1", "ignore")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    m = re.match(r"\s*([-+]?\d+(?:\.\d+)?)", str(value or ""))
    return float(m[1]) if m else None


def b_value_of(ds) -> float | None:
    """Diffusion b-value (s/mm^2) from standard, vendor-private or descriptive attributes."""
    b = number(ds, "DiffusionBValue")
    if b is None:
        b = _private_number(ds, (0x0019, 0x100C))  # Siemens B_value
    if b is None:
        b = _private_number(ds, (0x2001, 0x1003))  # Philips diffusion b-factor
    if b is None:
        b = _private_number(ds, (0x0043, 0x1039))  # GE slop_int_6: b-value (+ 1e9 flag)
        if b is not None:
            b = b % 1e9
    if b is None:
        m = _B_SEQNAME_RE.search(text(ds, "SequenceName").upper())
        b = float(m[1]) if m else None
    if b is None:
        m = _B_TEXT_RE.search(text(ds, "SeriesDescription").upper())
        b = float(m[1]) if m else None
    return b if b is not None and 0 <= b <= 10000 else None


def series_skip_reason(ds) -> str | None:
    """Why a series is not used at all (localizer, projection, subtraction), or ``None``."""
    it, ws = image_type(ds), description_words(ds)
    desc = text(ds, "SeriesDescription") or "(no description)"
    if "LOCALIZER" in it or ws & _LOCALIZER:
        return f"MR series {desc!r} is a localizer (not used for diagnosis)"
    if "PROJECTION IMAGE" in it or "MIP" in it or "MIP" in ws:
        return f"MR series {desc!r} holds projection images (MIP), not a 3D volume"
    if set(it) & _SUBTRACTION or ws & _SUBTRACTION:
        return f"MR series {desc!r} holds subtraction images (derived; BINDS uses the phases)"
    return None


def sequence_kind(vol) -> MRSequence | None:
    """T1 (as ``T1_PRE``, refined later), T2, DWI or ADC for a volume, or ``None``."""
    ds = vol.header
    it, ws = image_type(ds), description_words(ds)
    if "ADC" in it or ws & {"ADC", "APPARENT"}:
        return MRSequence.ADC
    if vol.first("b_value") is not None or ws & _DWI:
        return MRSequence.DWI
    if ws & _T2 or any(w.startswith("T2") for w in ws):
        return MRSequence.T2
    if ws & _T1 or any(w.startswith("T1") for w in ws):
        return MRSequence.T1_PRE
    tr, te = number(ds, "RepetitionTime"), number(ds, "EchoTime")
    if tr is not None and te is not None:
        if te >= 60 and tr >= 1500:
            return MRSequence.T2
        if tr <= 1000 and te <= 30:
            return MRSequence.T1_PRE
    return None


def _time_sort_key(vol) -> tuple:
    t = vol.first("acq_time_s")
    return (t if t is not None else float("inf"), number(vol.header, "SeriesNumber") or 0.0,
            vol.index_in_series, vol.first("trigger_ms") or 0.0)


def _agent(vol) -> bool:
    return bool(text(vol.header, "ContrastBolusAgent"))


def _after_bolus_s(vol) -> float | None:
    """Seconds from ContrastBolusStartTime to the volume's first AcquisitionTime."""
    start = dicom_time_s(text(vol.header, "ContrastBolusStartTime"))
    t = vol.first("acq_time_s")
    if start is None or t is None:
        return None
    d = t - start
    return d + 86400 if d < -43200 else d


def _is_post_contrast(vol, t1_volumes: list, rank: int) -> bool:
    after = _after_bolus_s(vol)
    if after is not None:
        return after >= 0
    ws = description_words(vol.header)
    if ws & _PRE:
        return False
    if ws & _POST:
        return True
    agents = [_agent(v) for v in t1_volumes]
    if any(agents) and not all(agents):
        return _agent(vol)
    if vol.split_by in _PHASE_ATTRIBUTES:
        return vol.index_in_series > 0
    if len(t1_volumes) == 1:
        return _agent(vol)
    return rank > 0


def phase_time_s(vol) -> float | None:
    after = _after_bolus_s(vol)
    if after is not None:
        return after
    trigger = vol.first("trigger_ms")
    return None if trigger is None else trigger / 1000.0


def assign_roles(volumes: list) -> list[Skipped]:
    """Set ``vol.role`` for each volume of one study; returns the volumes that get none."""
    skipped, t1 = [], []
    for vol in volumes:
        kind = sequence_kind(vol)
        if kind is None:
            reason = (f"cannot tell the MR sequence of series {vol.label} (no keyword in "
                      "SeriesDescription/ProtocolName and no telling TR/TE); name it T1, T2, "
                      "DWI or ADC")
            log.warning("skipped: %s", reason)
            skipped.append(Skipped(str(vol.slices[0].file.path), reason))
        elif kind is MRSequence.T1_PRE:
            t1.append(vol)
        elif kind is MRSequence.DWI:
            vol.role = Role(Modality.MR, sequence=kind, b_value=vol.first("b_value"))
        else:
            vol.role = Role(Modality.MR, sequence=kind)
    t1.sort(key=_time_sort_key)
    phase = 0
    for rank, vol in enumerate(t1):
        if _is_post_contrast(vol, t1, rank):
            phase += 1
            vol.role = Role(Modality.MR, sequence=MRSequence.DCE, phase=phase,
                            phase_time_s=phase_time_s(vol))
        else:
            vol.role = Role(Modality.MR, sequence=MRSequence.T1_PRE)
    return skipped
