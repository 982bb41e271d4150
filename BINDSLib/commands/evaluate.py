"""``binds evaluate``: metrics of a diagnosis bundle on a labelled data set."""

from __future__ import annotations

import argparse

from . import device_name, non_negative_int, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a diagnosis bundle on labelled studies (AUC, calibration, ...)",
        description="Predict every study of DIR - a folder of labelled study folders, or a BUSI "
                    "(manifest.csv) or mini-MIAS (images.csv + findings.csv) layout, detected "
                    "automatically - or of --synthetic N held-out synthetic studies, and write "
                    "OUT/metrics.json (AUC with bootstrap CI, sensitivity/specificity at the "
                    "bundle's operating point, ECE, subtype macro-AUC, lesion Dice, saliency "
                    "pointing game, biopsy reduction), OUT/predictions.csv, OUT/roc.png and "
                    "OUT/reliability.png.")
    p.add_argument("--model", default="auto", metavar="BUNDLE",
                   help="diagnosis bundle name or path, or auto (default): the bundle binds diagnose "
                        "--model auto picks for the first study (synthetic: binds-diagnosis-demo; "
                        "BUSI: binds-us-busi; mini-MIAS: binds-mg-mias)")
    add_source_arguments(p)
    p.add_argument("--out", required=True, metavar="OUT", help="output folder")
    p.add_argument("--combinations", action="store_true",
                   help="also report the AUC of every modality combination")
    p.add_argument("--target-sensitivity", type=float, default=0.98, metavar="S",
                   help="sensitivity kept by the biopsy-reduction threshold (default 0.98)")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000, metavar="N",
                   help="bootstrap replicates (0: no bootstrap intervals; the pointing game's "
                        "Wilson interval needs none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the split")
    p.add_argument("--saliency", choices=("alignment", "gradcam", "none"), default="alignment",
                   help="saliency map scored by the pointing game: alignment (default), gradcam, or none "
                        "(no pointing game; faster)")
    p.add_argument("--given-masks", action="store_true",
                   help="pass each study's reference lesion masks as user masks (lesions localised "
                        "by a reader, as when drawn in Slicer) instead of the predicted lesions")
    p.add_argument("--device", default="auto", type=device_name, help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=run)


def add_source_arguments(p) -> None:
    """The options naming labelled studies (``binds evaluate``, ``binds calibrate``)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR", help="labelled data set folder")
    src.add_argument("--synthetic", type=int, metavar="N",
                     help="use N synthetic studies generated in memory")
    p.add_argument("--synthetic-seed", type=int, default=1000, metavar="S",
                   help="seed of the synthetic studies (default 1000; training configs use others)")
    p.add_argument("--cases", metavar="CSV", default=None,
                   help="only the studies listed in CSV (a study_id column, else the first column), "
                        "e.g. the held-out split a training run wrote: RUN_DIR/validation_cases.csv, "
                        "also kept in the bundle as docs/validation_cases.csv")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N studies")


def run(args: argparse.Namespace) -> int:
    import sys

    from ..model.evaluation import evaluate

    out, studies, source, model = prepare(args)
    metrics = evaluate(model, studies, out, target_sensitivity=args.target_sensitivity,
                       n_bootstrap=args.bootstrap, seed=args.seed, combinations=args.combinations,
                       saliency=args.saliency, overwrite=args.overwrite,
                       given_masks=args.given_masks, extra=source)
    sys.stdout.write(summary(metrics) + f"results in {out}\n")
    return 0


def prepare(args: argparse.Namespace, writes_bundle: bool = False):
    """What ``binds evaluate`` and ``binds calibrate`` (``writes_bundle``: its output is the
    recalibrated bundle) start from, checked before any work: ``(out, studies, source,
    model)`` - the output path (absent, or ``--overwrite``), the studies
    (:func:`labelled_studies`), where they came from, and the loaded bundle."""
    import itertools
    import logging
    from pathlib import Path

    from ..bundle import BUNDLE_SIGNS, check_copy_target, find_bundle, list_bundles
    from ..errors import InputError, UsageError
    from ..fsutil import check_output_dir
    from ..model.inference import DiagnosisModel
    from ..model.selection import AUTO, choose_bundle, installed_bundles

    out = Path(args.out)
    auto = args.model == AUTO
    if auto and writes_bundle:
        raise UsageError("--model auto: name the bundle to recalibrate")
    bundle = None if auto else find_bundle(args.model)
    data = getattr(args, "data", None)
    inputs = [data, getattr(args, "cases", None)]
    if writes_bundle:  # it may replace the bundle it recalibrates, not a folder holding it
        check_copy_target(bundle, out)
        if inputs[1] and bundle.resolve() in Path(inputs[1]).resolve().parents:
            inputs[1] = None  # the bundle's own case list, read before the bundle is replaced
        signs = BUNDLE_SIGNS
    else:
        inputs += [bundle] if bundle is not None else list_bundles()  # auto: any it may pick
        signs = ("metrics.json",)
    check_output_dir(out, args.overwrite, inputs, signs, within=[data])
    if not 0.0 < args.target_sensitivity <= 1.0:
        raise UsageError("--target-sensitivity must be in (0, 1]")
    studies, source = labelled_studies(args)
    if auto:  # the bundle diagnose --model auto would read the first study with
        first = next(studies, None)
        if first is None:
            raise InputError("no studies to evaluate", data)
        bundles = installed_bundles()
        choice = choose_bundle(first, bundles)
        bundle = choice.bundle.path
        source["model_choice"] = f"auto: {choice.bundle.name} ({choice.reason}; chosen for the first study)"
        logging.getLogger(__name__).info("model chosen automatically: %s (%s)", choice.bundle.name, choice.reason)
        if choice.warning:
            logging.getLogger(__name__).warning("%s", choice.warning)
        studies = _same_choice(itertools.chain([first], studies), choice.bundle, bundles, source)
    model = DiagnosisModel.from_bundle(bundle, device=None if args.device == "auto" else args.device)
    return out, studies, source, model


def labelled_studies(args: argparse.Namespace):
    """The studies ``--data`` (or ``--synthetic``), ``--cases`` and ``--limit`` name, as a lazy
    iterator, and a record of where they came from (``binds evaluate``, ``binds calibrate``)."""
    import itertools
    from pathlib import Path

    from ..errors import InputError

    if getattr(args, "data", None):
        from ..io.datasets import detect_layout, iter_dataset

        data = Path(args.data)
        if not data.is_dir():
            raise InputError("data folder not found", data)
        layout = detect_layout(data)
        studies = iter_dataset(data)
        source = {"data": str(data), "layout": layout}
    else:
        from ..synthetic import make_study
        from ..synthetic.fields import derive_seed

        n = args.synthetic
        studies = (make_study(derive_seed(args.synthetic_seed, i)) for i in range(n))
        source = {"data": f"synthetic n={n} seed={args.synthetic_seed}", "layout": "synthetic"}
    if args.cases:
        wanted = read_case_list(Path(args.cases))
        studies = _listed(studies, wanted, source)
        source.update(cases=str(args.cases), n_cases_listed=len(wanted))
    if args.limit:
        studies = itertools.islice(studies, args.limit)
    return studies, source


def _same_choice(studies, chosen, bundles, source: dict):
    """The ``studies``, passed on; once all are read, those that ``--model auto`` would give to
    another bundle than the ``chosen`` one (a folder mixing ultrasound and mammography) are
    counted in ``source["n_model_choice_differs"]`` and named in a warning: one bundle scores
    them all."""
    import logging

    from ..errors import ModelError
    from ..model.selection import choose_bundle

    other = []
    for st in studies:
        try:
            differs = choose_bundle(st, bundles).bundle.path != chosen.path
        except ModelError:
            differs = True
        if differs:
            other.append(st.study_id)
        yield st
    source["n_model_choice_differs"] = len(other)
    if other:
        logging.getLogger(__name__).warning(
            "%d studies would be read by another bundle than %s under diagnose --model auto, and were scored "
            "with it: %s%s; evaluate them apart, or name the bundle with --model", len(other), chosen.name,
            ", ".join(other[:10]), " ..." if len(other) > 10 else "")


def _listed(studies, wanted: set[str], source: dict):
    """The ``studies`` whose ID is ``wanted``. Once all are read, the listed IDs not found are
    counted in ``source["n_cases_not_found"]`` and named in a warning."""
    import logging

    seen = set()
    for st in studies:
        if st.study_id in wanted:
            seen.add(st.study_id)
            yield st
    missing = sorted(wanted - seen)
    source["n_cases_not_found"] = len(missing)
    if missing:
        logging.getLogger(__name__).warning(
            "%s: %d of the %d listed studies are not in %s: %s%s", source["cases"], len(missing), len(wanted),
            source["data"], ", ".join(missing[:10]), " ..." if len(missing) > 10 else "")


def read_case_list(path) -> set[str]:
    """Study ids of a case list CSV (``study_id`` column, else the first column)."""
    import csv

    from ..errors import InputError

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # (a spreadsheet's byte-order mark)
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read case list: {e}", path) from None
    if not rows:
        raise InputError("case list is empty", path)
    col = rows[0].index("study_id") if "study_id" in rows[0] else 0
    body = rows[1:] if "study_id" in rows[0] else rows
    ids = {r[col].strip() for r in body if len(r) > col and r[col].strip()}
    if not ids:
        raise InputError("case list names no study", path)
    return ids


def summary(m: dict) -> str:
    """A few lines for the terminal (everything is in metrics.json)."""
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    ci = m.get("auc_ci95") or [None, None]
    lines = [f"n={m['n']} (malignant {m['n_malignant']}, benign {m['n_benign']}, normal {m['n_normal']})"
             + (f"; {m['n_no_probability']} without a malignancy probability, left out of every figure"
                if m.get("n_no_probability") else ""),
             f"AUC malignant vs benign {f(m.get('auc'))} (95% CI {f(ci[0])}-{f(ci[1])})"]
    if "auc_abnormal" in m:
        aci = m.get("auc_abnormal_ci95") or [None, None]
        lines.append(f"AUC abnormal vs normal {f(m['auc_abnormal'])} (95% CI {f(aci[0])}-{f(aci[1])}; "
                     f"finding probability), {f(m.get('auc_abnormal_malignancy'))} by the malignancy "
                     "probability"
                     + (f"; {m['n_auc_abnormal_left_out']} without a finding probability left out"
                        if m.get("n_auc_abnormal_left_out") else ""))
        lines.append(f"finding probability: Brier {f(m.get('brier_finding'))} (base rate "
                     f"{f(m.get('brier_finding_base_rate'))}), ECE {f(m.get('ece_finding'))}")
    if m.get("n_finding_not_compared"):
        n_mg = m["n_finding_not_compared"] + m.get("n_finding_compared", 0)
        lines.append(f"note: {m['n_finding_not_compared']} of {n_mg} mammography studies scored alone, without "
                     "a film of the other breast to compare with (finding_compared 0 in predictions.csv); "
                     "the bundle's finding probability expects the comparison")
    for key, name in (("lesion_dice", "lesion Dice"), ("pointing_game", "pointing game")):
        if key in m:
            lo, hi = m.get(f"{key}_ci95") or [None, None]
            lines.append(f"{name} {f(m[key])} (95% CI {f(lo)}-{f(hi)}; n={m[f'n_{key}']})")
    by = m.get("by_finding") or {}
    if by:  # AUC against every normal study (with normal studies), pointing game (with circles)
        lines.append("by finding type: " + ", ".join(
            f"{t} n={v['n']}" + (f" AUC vs normal {f(v['auc_abnormal'])}" if "auc_abnormal" in v else "")
            + (f" pointing game {v['pointing_game']:.2f} of {v['n_pointing_game']}" if "pointing_game" in v else "")
            for t, v in by.items()))
    lines.append(f"at threshold {f(m.get('threshold'))}: sensitivity {f(m.get('sensitivity'))}, "
                 f"specificity {f(m.get('specificity'))}; ECE {f(m.get('ece'))}")
    st = m.get("staged")
    if st and st.get("n_stage2"):  # (studies with MRI: what the two stages decide)
        lines.append(f"two-stage decision (as binds diagnose): sensitivity {f(st.get('sensitivity'))}, "
                     f"specificity {f(st.get('specificity'))}; MRI read for {st['n_stage2']} studies "
                     f"({f(st.get('stage2_share'))})")
    br = m.get("biopsy_reduction", {})
    if "spared_fraction" in br:
        lo, hi = br.get("spared_fraction_ci95", [None, None])
        sens = br.get("test_sensitivity")
        short = sens is not None and sens < br["target_sensitivity"]
        lines.append(f"biopsies spared at sensitivity >= {br['target_sensitivity']:g}: "
                     f"{f(br['spared_fraction'])} of benign lesions (95% CI {f(lo)}-{f(hi)}); "
                     f"test-half sensitivity {f(sens)}"
                     + (" - below the target: the spared share overstates what is safe" if short else ""))
    for combo, v in (m.get("auc_by_combination") or {}).items():
        lines.append(f"  {combo:<10} n={v['n']:<5} AUC {f(v.get('auc'))}")
    return "\n".join(lines) + "\n"
