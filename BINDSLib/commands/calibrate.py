"""``binds calibrate``: refit a diagnosis bundle's calibration on labelled studies."""

from __future__ import annotations

import argparse

from . import device_name
from .evaluate import add_source_arguments


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="refit a diagnosis bundle's calibration on labelled studies (new bundle)",
        description="Predict every labelled study of DIR (the layouts of binds evaluate) with "
                    "BUNDLE and write OUT, a copy of BUNDLE with the same weights and a refitted "
                    "calibration: the malignancy temperature and operating points (malignant vs "
                    "every other labelled study; --target-sensitivity sets the high-sensitivity "
                    "point) and the finding temperature and bias (abnormal vs normal); with --fit "
                    "band, the stage-1 uncertainty band of the two-stage decision. The data "
                    "should be held out from training, e.g. the bundle's docs/validation_cases.csv "
                    "or a site's own cases; score the result on other cases with binds evaluate.")
    p.add_argument("--model", required=True, metavar="BUNDLE", help="diagnosis bundle name or path")
    add_source_arguments(p)
    p.add_argument("--out", required=True, metavar="OUT", help="the new bundle's folder")
    p.add_argument("--fit", choices=("all", "malignancy", "finding", "band"), action="append", default=None,
                   help="what to refit, repeatable: all - both probabilities (the default); "
                        "malignancy or finding - one of them (the other keeps the bundle's "
                        "calibration); band - the stage-1 uncertainty band inside which the "
                        "two-stage decision reads the MRI: the band whose decision has the highest "
                        "sensitivity + specificity on the studies with mammography or ultrasound "
                        "and an MRI, of those the one reading the fewest MRIs (after a malignancy "
                        "refit when both are named)")
    p.add_argument("--version", default=None, metavar="V",
                   help="the new bundle's version (default: the old one with its last number + 1)")
    p.add_argument("--target-sensitivity", type=float, default=0.98, metavar="S",
                   help="sensitivity of the high-sensitivity operating point (default 0.98)")
    p.add_argument("--device", default="auto", type=device_name, help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=run)


def next_version(version: str) -> str:
    """``"1.4.0"`` -> ``"1.4.1"``; a version not ending in a number gets ``".1"`` appended."""
    head, _, last = version.rpartition(".")
    if last.isdigit():
        return f"{head}.{int(last) + 1}" if head else str(int(last) + 1)
    return f"{version}.1"


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from ..bundle import check_new_version, save_recalibrated
    from ..errors import InputError
    from ..model.calibration import BAND_PART, REFIT_PARTS, MissingClassError, refit
    from ..model.evaluation import predict_dataset
    from .evaluate import prepare

    out, studies, source, model = prepare(args, writes_bundle=True)
    bundle = model.bundle
    version = args.version or next_version(bundle.version)
    check_new_version(bundle, version)
    where = source["data"] + (f" (cases {source['cases']})" if "cases" in source else "")
    named = args.fit or ["all"]
    parts = tuple(p for p in REFIT_PARTS + (BAND_PART,) if p in named or ("all" in named and p in REFIT_PARTS))
    rows, _, _ = predict_dataset(model, studies, saliency="none")
    if not rows and "cases" in source and source.get("n_cases_not_found") == source.get("n_cases_listed"):
        raise InputError(f"none of the {source['n_cases_listed']} studies listed in {source['cases']} is in "
                         f"{source['data']}")
    if not rows:
        raise InputError(f"no study {bundle.name} can read in {where}")
    binds = bundle.binds
    ops = binds.get("operating_points") or ({"default": binds["operating_point"]} if "operating_point" in binds
                                            else {})
    try:
        calibration, ops, fitted = refit(rows, binds.get("calibration", {}), ops, parts, args.target_sensitivity)
    except MissingClassError as e:
        other = [p for p in parts if p != e.part and p in REFIT_PARTS]
        try:  # suggest the other part only when these studies can calibrate it
            other = [p for p in other if refit(rows, binds.get("calibration", {}), ops, (p,), args.target_sensitivity)]
        except MissingClassError:
            other = []
        hint = f"; --fit {other[0]} refits the {other[0]} probability only" if other else ""
        raise InputError(f"{where}: {e}{hint}") from None
    _check_separable(fitted, where)
    fitted_on = f"binds calibrate: {where}"
    if "malignancy" in parts:  # where each part was fitted, on how many studies
        t = fitted["temperature"]
        calibration.update(fitted_on=fitted_on, n=t["n_malignant"] + t["n_other"])
    if "finding" in parts:
        t = fitted["finding_temperature"]
        calibration.update(finding_fitted_on=fitted_on, finding_n=t["n_abnormal"] + t["n_normal"])
    band = None
    if BAND_PART in parts:
        b = fitted["uncertainty_band"]
        b["old"] = list(model.uncertainty_band)
        band = b["new"]
        calibration.update(band_fitted_on=fitted_on, band_n=b["n"])
    changes = "; ".join(f"{k} {_f(v['old'])} -> {_f(v['new'])}"
                        + (" (at the end of the search range: the data barely constrain it)"
                           if v.get("at_bound") else "") + (_band_figures(v) if k == "uncertainty_band" else "")
                        for k, v in fitted.items())
    note = (f"Recalibrated from {bundle.name} {bundle.version} (same weights) on {len(rows)} "
            f"studies of {where} with binds calibrate: {changes}.")
    if "malignancy" in parts and BAND_PART not in parts and "band_fitted_on" in binds.get("calibration", {}):
        note += (f" The uncertainty band {_f(list(model.uncertainty_band))} was fitted on the old probabilities "
                 "and is kept as it is: refit it with --fit band.")
    command = "binds " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if args.own_process else ""
    save_recalibrated(bundle, out, calibration, ops if "malignancy" in parts else None, version=version,
                      note=note, command=command, overwrite=args.overwrite, uncertainty_band=band,
                      probabilities_changed=any(p in REFIT_PARTS for p in parts))
    sys.stdout.write(f"{note}\nbundle {bundle.name} {version} written to {out}\n")
    return 0


def _f(v) -> str:
    if isinstance(v, (list, tuple)):
        return "-".join(_f(x) for x in v)
    return "none" if v is None else f"{v:.4g}"


def _band_figures(fitted: dict) -> str:
    """What the fitted band does on the studies it was fitted on, against reading every MRI and
    none: `` (n studies with both stages: ...)``."""
    def one(name: str) -> str:
        d = fitted[name]
        return f"sensitivity {d['sensitivity']:.3f}, specificity {d['specificity']:.3f}, MRI read {d['n_stage2']}"
    return (f" (on {fitted['n']} studies with both stages at threshold {fitted['threshold']:.4g}: "
            f"{one('fitted')}; every MRI: {one('stage2')}; none: {one('stage1')})")


def _check_separable(fitted: dict, where: str) -> None:
    """Refuse a malignancy refit on studies the model separates perfectly: the temperature runs
    to the low end of its range and the probabilities to 0 and 1, so that the threshold lands
    at 1 (or 0) and the new bundle would send every study below it to follow-up."""
    from ..errors import InputError
    from ..model.calibration import TEMPERATURE_BOUNDS

    t = fitted.get("temperature")
    if t is None:
        return
    threshold = fitted["threshold"]["new"]
    if (t["separable"] and t["new"] <= TEMPERATURE_BOUNDS[0] * 1.001) or not 0.0 < threshold < 1.0:
        why = (f"the model separates these {t['n_malignant']} malignant and {t['n_other']} other studies "
               f"perfectly, so the temperature runs to the end of its range ({t['new']:.3g})" if t["separable"]
               else f"the fitted probabilities of these {t['n_malignant']} malignant and {t['n_other']} other "
                    f"studies saturate (temperature {t['new']:.3g})")
        raise InputError(f"{where}: {why} and the threshold lands at {threshold:g}: a bundle calibrated so would "
                         "decide on saturated probabilities. Calibrate on more studies (with some the model "
                         "gets wrong), or refit --fit finding only")

