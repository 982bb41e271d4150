"""``binds risk``: 5-year breast cancer risk of one woman's dated screening exams, and its trajectory."""

from __future__ import annotations

import argparse
import math
import sys

from . import device_name, probability


def register(sub) -> None:
    p = sub.add_parser(
        "risk", help="5-year breast cancer risk of a woman's screening mammograms, with trajectory",
        description="Score each of one woman's dated 4-view screening mammography exams with a risk "
                    "bundle (cumulative risk within 1-5 years, per exam and per breast), then "
                    "compute the trajectory (slope per year, change from the first exam, change "
                    "over the last 2 years, acceleration) and flags (5-year risk >= 1.7%: "
                    "consider supplemental MRI (NCCN 2026); a rise beyond --rise-threshold). "
                    "Writes report.json, risk.csv and trajectory.png to --out. Research use only.")
    p.add_argument("exams", nargs="+", metavar="EXAM",
                   help="exam folders: DICOM folders (one holding several studies: her exams), study "
                        "folders, or an exam-history folder (history.json) standing for all its exams")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist)")
    p.add_argument("--model", default="binds-risk-demo", metavar="BUNDLE",
                   help="risk bundle name or path (default: binds-risk-demo)")
    p.add_argument("--device", default="auto", type=device_name, help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--rise-threshold", type=probability, default=None, metavar="P",
                   help="flag a rise of the 5-year risk over the last 2 years of at least P "
                        "(absolute probability; default from the bundle, 0.005 = 0.5 points)")
    p.add_argument("--threshold", type=probability, default=None, metavar="P",
                   help="5-year risk at which supplemental MRI is suggested (default from the "
                        "bundle: 0.017, NCCN 2026)")
    p.add_argument("--window-years", type=window_years, default=2.0, metavar="Y",
                   help="look-back window of the recent change (default 2 years; at most 100)")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="keep study and patient IDs in the outputs (default: pseudonyms)")
    p.add_argument("--same-woman", action="store_true",
                   help="the exams are one woman's although they carry different patient IDs (another "
                        "site, a new record number); without it such exams are refused")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import datetime
    import logging
    from pathlib import Path

    from ..bundle import find_bundle
    from ..errors import InputError, ModelError
    from ..fsutil import REPORT_SIGNS, atomic_dir, check_output_dir, json_dumps
    from ..risk.config import FLAG_HORIZON_YEARS
    from ..risk.inference import RiskModel
    from ..outputs.report import told_apart
    from ..risk.report import build_report, exams_csv, format_table, percent_texts, plot_trajectory, write_png
    from ..risk.trajectory import risk_flags, trajectory_metrics
    from ..study import public_id

    log = logging.getLogger("binds.risk")
    out = Path(args.out)
    inputs = [*args.exams, find_bundle(args.model)]  # the bundle too: never replaced by a report
    check_output_dir(out, args.overwrite, inputs, REPORT_SIGNS)  # before the scoring, not after
    studies, woman_ids, sources, after, identities = _read_exams(args.exams, args.keep_identifiers)
    people = _women(identities)
    if len(people) > 1 and not args.same_woman:  # a trajectory of two women is nobody's
        said = "; ".join(f"{_shown(ids, args.keep_identifiers)} in {', '.join(map(str, folders))}"
                         for ids, folders in people)
        raise InputError(f"the exams carry the patient IDs of {len(people)} women ({said}): binds risk scores "
                         "one woman's exams; give hers only, or --same-woman if they are all hers")
    if len(studies) > 1 and any(s.study_date is None for s in studies):
        # named by the folders given (the exams' own IDs stay out of messages without --keep-identifiers)
        bad = sorted({str(sources[id(s)]) for s in studies if s.study_date is None})
        raise InputError(f"{sum(s.study_date is None for s in studies)} exam(s) without a date, in "
                         f"{', '.join(bad)}; a trajectory needs dated exams")
    far = sorted({f"{s.study_date} in {sources[id(s)]}" for s in studies if s.study_date is not None
                  and not datetime.date(1900, 1, 1) <= s.study_date <= _today() + datetime.timedelta(days=366)})
    if far:  # (a mistyped year: 2062 for 2026, 1026 for 2016)
        raise InputError(f"exam date(s) no screening exam can have ({'; '.join(far)}): before 1900 or more than "
                         "a year from today; correct the date")
    # by date; exams of one date in a fixed order (their folders'), whatever order they were given in
    studies.sort(key=lambda s: (s.study_date or _today(), str(sources[id(s)]), s.study_id))
    raw_ids = {s.patient_id for s in studies if s.patient_id} | woman_ids
    anon = {public_id(i) for i in raw_ids}
    warnings = []
    future = sorted({f"{s.study_date} in {sources[id(s)]}" for s in studies
                     if s.study_date is not None and s.study_date > _today()})
    if future:  # the latest exam decides the MRI flag: a mistyped year would make it that one
        warnings.append(f"{len(future)} exam(s) dated after today ({'; '.join(future)}): check their dates "
                        "(the latest exam's risk decides the MRI flag)")
        log.warning(warnings[-1])
    if after:  # a risk model reads screening exams before a diagnosis, as it was trained
        warnings.append(f"{len(after)} exam(s) after the woman's cancer date left out: {', '.join(after)}")
        log.warning(warnings[-1])
    if len(people) > 1:
        warnings.append(f"the exams carry the patient IDs of {len(people)} women; scored as one woman's "
                        "(--same-woman)")
        log.warning(warnings[-1])
    woman = next(iter(anon)) if len(anon) == 1 else None
    plain = sorted(i for i in raw_ids if not i.startswith("anon-"))
    if woman is not None and args.keep_identifiers and plain:
        woman = plain[0]

    model = RiskModel.from_bundle(args.model, device=args.device)
    horizon = FLAG_HORIZON_YEARS
    if model.config.max_followup < horizon:
        raise ModelError(f"predicts the risk for years 1-{model.config.max_followup} only; binds risk "
                         f"needs the {horizon}-year risk (the NCCN threshold is on it)", find_bundle(args.model))
    risks = model.score_exams(studies, keep_identifiers=args.keep_identifiers)
    for r in risks:
        warnings += [f"{r.exam_id}: {w}" for w in r.warnings]
    for day in sorted({r.exam_date for r in risks if r.exam_date is not None}):
        same = [r.exam_id for r in risks if r.exam_date == day]
        if len(same) > 1:
            warnings.append(f"exams {', '.join(same)} share the date {day}: the trajectory takes the "
                            "highest risk of that date")
            log.warning(warnings[-1])
    thresholds = dict(model.thresholds)
    if args.threshold is not None:
        thresholds["supplemental_mri_5y"] = args.threshold
    if args.rise_threshold is not None:
        thresholds["rise_2y"] = args.rise_threshold
    dates = [r.exam_date for r in risks]
    five = [r.risk(horizon) for r in risks]
    if len(risks) > 1:
        traj = trajectory_metrics(dates, five, horizon_years=horizon, window_years=args.window_years)
    else:
        traj = trajectory_metrics([dates[0] or _today()], five, horizon, args.window_years)
    flags = risk_flags(traj, thresholds["supplemental_mri_5y"], thresholds["rise_2y"])
    report = build_report(risks, traj, flags, model.bundle_summary, thresholds, woman, warnings)
    breast = {side: [None if r.breast_risk[side] is None else r.breast_risk[side][horizon - 1] for r in risks]
              for side in ("L", "R")}
    plot = plot_trajectory([d or _today() for d in dates], five, thresholds["supplemental_mri_5y"], breast)
    with atomic_dir(out, overwrite=args.overwrite, inputs=inputs, signs=REPORT_SIGNS) as tmp:
        (tmp / "report.json").write_text(json_dumps(report), encoding="utf-8")
        (tmp / "risk.csv").write_text(exams_csv(risks), encoding="utf-8")
        write_png(tmp / "trajectory.png", plot)

    w = sys.stdout.write
    w(format_table(risks, horizon))
    w(_trajectory_text(traj))
    if traj.last_risk is not None:  # the latest risk against the threshold, told apart
        shown, limit = percent_texts(traj.last_risk, thresholds["supplemental_mri_5y"])
        w(f"latest {horizon}-year risk {shown}, threshold {limit}\n")
    if traj.change_last_years is not None:  # the recent rise against its threshold, told apart too
        shown, limit = told_apart(traj.change_last_years, thresholds["rise_2y"], 2, 6, scale=100)
        w(f"rise over the last {traj.window_years:g} years {'+' if traj.change_last_years >= 0 else ''}{shown} "
          f"points, threshold +{limit} points\n")
    for f in flags:
        w(f"FLAG: {f.message}\n")
    w(f"wrote {out / 'report.json'}, {out / 'risk.csv'}, {out / 'trajectory.png'}\n")
    w("Research use only; not for clinical use.\n")
    return 0


def _today():
    import datetime

    return datetime.date.today()


def _women(identities):
    """Merge ``[(IDs, folder given), ...]`` into the women they name: ``[(IDs, folders), ...]``,
    two folders being one woman's when they share an ID. A history folder gives its ``woman_id``
    and all its exams' patient IDs as one woman's (the history says so); an exam without a patient
    ID belongs to whichever woman is given."""
    from ..study import public_id

    groups: list[tuple[set, list]] = []
    for ids, folder in identities:
        if not ids:
            continue
        joined = [g for g in groups if {public_id(i) for i in g[0]} & {public_id(i) for i in ids}]  # a pseudonym is its ID
        folders = [f for g in joined for f in g[1]]
        groups = [g for g in groups if g not in joined] + [(ids.union(*(g[0] for g in joined)),
                                                            folders + [folder] * (folder not in folders))]
    return groups


def _shown(ids, keep_identifiers):
    """A woman's IDs for a message: pseudonyms unless ``keep_identifiers``."""
    from ..study import public_id

    return "/".join(sorted({public_id(i, keep_identifiers) for i in ids}))


def _read_exams(paths, keep_identifiers=False):
    """Studies of the given exam folders (exam-history folders expand to their exams, those
    after the woman's cancer date left out), the women's IDs of the histories, ``{id(study): the
    folder given}``, the exams left out (their dates) and ``[(patient IDs, folder given), ...]``
    (:func:`_women`). Exams are named in messages as in
    the outputs: pseudonyms unless ``keep_identifiers``."""
    from pathlib import Path

    from ..errors import InputError
    from ..io.loader import collection
    from ..risk.inference import exam_identifier
    from ..risk.preprocess import load_exams, no_view_text, usable_views
    from ..studyfolder import read_history

    studies, women, where, sources, after, identities = [], set(), {}, {}, [], []
    for p in paths:
        p = Path(p)
        found = collection(p)
        if found is not None and len(found.histories) == 1 and not found.studies:
            p = found.histories[0]  # a folder holding one woman's history: hers
        elif found is not None and found.histories:  # a cohort folder (binds phantom --longitudinal)
            n = len(found.histories)
            names = ", ".join(h.name for h in found.histories[:3]) + (", ..." if n > 3 else "")
            beside = f" and {len(found.studies)} study folder(s)" if found.studies else ""
            cohort = (f", or score them all with binds cohort {p / 'manifest.csv'}"
                      if (p / "manifest.csv").is_file() and n > 1 else "")
            raise InputError(f"holds the exam histories of {n} wom{'a' if n == 1 else 'e'}n ({names}){beside}; "
                             f"binds risk scores one woman's exams: give her folder "
                             f"(e.g. {found.histories[0]}){cohort}", p)
        if (p / "history.json").is_file():
            h = read_history(p, reference_masks=False)
            exams = []
            for st in h.exams:  # those after her diagnosis named by date (a folder's name may be her record number)
                if _after(st.study_date, h.cancer_date):
                    after.append(str(st.study_date))
                else:
                    exams.append(st)
            women.add(h.woman_id)
            identities.append(({h.woman_id, *(st.patient_id for st in h.exams if st.patient_id)}, p))
        else:  # one exam, or a DICOM folder of several (a woman's exams, one study each)
            exams = load_exams(p)
            identities += [({st.patient_id} if st.patient_id else set(), p) for st in exams]
        for st in exams:
            public = exam_identifier(st, keep_identifiers)
            chosen, said = usable_views(st)
            if all(im is None for im in chosen):
                which = f"exam {public} of {st.study_date or 'no date'}" if len(exams) > 1 else "the exam"
                raise InputError(f"{which} {no_view_text(said)}", p)
            key = (st.study_id, st.study_date)
            if key in where:  # one exam given twice would count twice in the trajectory
                raise InputError(f"exam {public} of {st.study_date or 'no date'} is also given "
                                 f"as {where[key]}", p)
            where[key] = p
            sources[id(st)] = p
        studies += exams
    if not studies:
        raise InputError("no exams given" if not after else "every exam given is after the woman's cancer date",
                         paths[0] if paths else None)
    return studies, women, sources, after, identities


def window_years(text: str) -> float:
    """argparse type of the look-back window: above 0, at most 100 years (a woman's screening life)."""
    from . import _number

    return _number(text, float, lambda v: math.isfinite(v) and 0 < v <= 100, "a number of years above 0 and at most 100")


def _after(day, cancer_date) -> bool:
    """An exam on a day after the cancer diagnosis (an exam of that day is kept: the diagnostic
    mammogram's screening exam)."""
    return day is not None and cancer_date is not None and day > cancer_date


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:+.2f} points"


def _trajectory_text(t) -> str:
    acc = "n/a" if t.acceleration_per_year2 is None else f"{100 * t.acceleration_per_year2:+.3f} points/year^2"
    slope = "n/a" if t.slope_per_year is None else f"{100 * t.slope_per_year:+.3f} points/year"
    return (f"{t.horizon_years}-year risk trajectory over {t.n_exams} exam(s): slope {slope}, "
            f"change from first {_pct(t.change_from_first)}, last {t.window_years:g} years "
            f"{_pct(t.change_last_years)}, acceleration {acc}\n")
