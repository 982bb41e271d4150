"""Train a risk model on a longitudinal cohort and write a risk bundle.

Usage (the shipped demo bundle)::

    python -m BINDSLib.risk.train --config configs/risk-demo.json \\
        --out Resources/Models/binds-risk-demo --overwrite

Every exam of every woman is one training sample with yearly targets and a censoring mask
(:func:`~BINDSLib.risk.losses.history_targets`): a woman followed for fewer than 5 years
contributes only her observed years. Women (not exams) are split into train / validation /
test; the best epoch is chosen by validation C-index, calibration is fitted on validation and
the metrics (C-index, time-dependent AUC for years 1-5, calibration per year) are measured on
test and stored in the bundle.

The cohort is ``BINDSLib.synthetic.make_cohort(seed, n_women)`` unless ``--histories DIR``
names a folder of exam-history folders (``history.json`` + study folders).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import raise_if_terminated
from .calibration import Calibrator
from .config import RiskConfig, TrainConfig, load_config_file, preset
from .losses import breast_loss, breast_targets, censored_bce, history_targets
from .metrics import GRACE_YEARS, concordance_index, evaluate, ipcw_weights
from .preprocess import prepare_exam

log = logging.getLogger(__name__)


@dataclass
class ExamSet:
    """Prepared exams with outcomes (arrays indexed by exam).

    images : uint8 ``(N, 4, 1, H, W)`` (intensity 0-1 quantised to 0-255, to save memory);
    view_mask : bool ``(N, 4)``; targets, mask : float32 ``(N, T)``; times, events : ``(N,)``;
    women : ``(N,)`` index of the woman; sides : ``(N,)`` breast of her cancer (0 left, 1 right,
    -1 unknown or none).
    """

    images: np.ndarray
    view_mask: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    times: np.ndarray
    events: np.ndarray
    women: np.ndarray
    sides: np.ndarray

    def __len__(self) -> int:
        return len(self.times)

    def subset(self, idx) -> "ExamSet":
        return ExamSet(*(a[idx] for a in (self.images, self.view_mask, self.targets, self.mask,
                                           self.times, self.events, self.women, self.sides)))


def build_examset(histories: Sequence, config: RiskConfig, sides: Sequence[str | None] | None = None) -> ExamSet:
    """Prepare every usable exam of ``histories`` (ExamHistory objects).

    ``sides`` gives, per woman, the breast of her cancer (``"L"``, ``"R"`` or ``None``).
    Exams after a diagnosis, and exams with no known year at all, are left out.
    """
    images, masks, targets, known, times, events, women, side_idx = [], [], [], [], [], [], [], []
    for w, h in enumerate(histories):
        for exam in h.exams:
            try:
                y, m = history_targets(h, exam, config.max_followup)
            except ValueError:
                continue  # exam after the diagnosis
            if m.sum() == 0:
                continue
            prep = prepare_exam(exam, config)
            images.append(np.round(prep.images * 255).astype(np.uint8))
            masks.append(prep.view_mask)
            targets.append(y)
            known.append(m)
            ytc = h.years_to_cancer(exam)
            obs = h.years_observed(exam)
            events.append(ytc is not None)
            times.append(ytc if ytc is not None else (obs or 0.0))
            women.append(w)
            side = None if sides is None else sides[w]
            side_idx.append({"L": 0, "R": 1}.get(side, -1) if h.cancer_date is not None else -1)
    if not images:
        from ..errors import InputError

        raise InputError("no usable exams in the cohort (exams before a diagnosis with a known date and "
                         "follow-up)")
    return ExamSet(np.stack(images), np.stack(masks), np.stack(targets), np.stack(known),
                   np.asarray(times, dtype=np.float64), np.asarray(events, dtype=bool),
                   np.asarray(women), np.asarray(side_idx, dtype=np.int64))


def split_women(n_women: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Random partition of woman indices by ``fractions`` (train, validation, test)."""
    order = np.random.default_rng(seed).permutation(n_women)
    cuts = np.round(np.cumsum(fractions)[:-1] * n_women).astype(int)
    return np.split(order, cuts)


def _tensors(data: ExamSet, idx, device):
    import torch

    x = torch.from_numpy(data.images[idx]).to(device).float().div_(255.0)
    m = torch.from_numpy(data.view_mask[idx]).to(device)
    return x, m


def drop_views(view_mask, p: float, generator=None):
    """Randomly mask present views with probability ``p`` (keeping at least one per exam)."""
    import torch

    if p <= 0:
        return view_mask
    keep = torch.rand(view_mask.shape, generator=generator, device=view_mask.device) >= p
    new = view_mask & keep
    empty = ~new.any(dim=1)
    return torch.where(empty[:, None], view_mask, new)


def augment(x, max_shift_px: int = 8, contrast: float = 0.15, generator=None):
    """Training augmentation of a batch ``(B, V, 1, H, W)`` in [0, 1]: per-view contrast and
    brightness jitter (``x * (1 + c) + b``, ``|c|, |b| <= contrast``, clipped to [0, 1]) and a
    vertical shift of up to ``max_shift_px`` (the chest wall stays at the left edge, so no
    horizontal flip)."""
    import torch

    b, v = x.shape[:2]
    c = (torch.rand(b, v, 1, 1, 1, generator=generator, device=x.device) * 2 - 1) * contrast
    o = (torch.rand(b, v, 1, 1, 1, generator=generator, device=x.device) * 2 - 1) * contrast / 2
    x = (x * (1 + c) + o).clamp_(0.0, 1.0)
    if max_shift_px:
        shift = int(torch.randint(-max_shift_px, max_shift_px + 1, (1,), generator=generator))
        x = torch.roll(x, shifts=shift, dims=-2)
    return x


def predict_logits(network, data: ExamSet, batch_size: int = 32, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """Exam ``(N, T)`` and breast ``(N, 2, T)`` logits in eval mode."""
    import torch

    network.eval()
    exam, breast = [], []
    cuda = torch.device(device).type == "cuda"
    with torch.inference_mode(), torch.autocast(device_type=torch.device(device).type,
                                                dtype=torch.bfloat16, enabled=cuda):
        for k in range(0, len(data), batch_size):
            idx = np.arange(k, min(k + batch_size, len(data)))
            out = network(*_tensors(data, idx, device))
            exam.append(out.exam_logits.float().cpu().numpy())
            breast.append(out.breast_logits.float().cpu().numpy())
    return np.concatenate(exam), np.concatenate(breast)


def train(histories: Sequence, config: RiskConfig, train_cfg: TrainConfig, device: str = "cpu",
          time_budget_s: float | None = None, sides: Sequence[str | None] | None = None):
    """Train and calibrate; returns ``(network, calibrator, breast_calibrator, metrics)``.

    ``sides``: per woman, the breast of her cancer when known (trains the per-breast heads
    directly and allows their calibration); otherwise they learn through the either-breast loss.

    ``metrics`` has ``test`` (see :func:`~BINDSLib.risk.metrics.evaluate`), ``validation``
    C-index per epoch, split sizes and the wall time.
    """
    import torch

    from .network import RiskNetwork

    t0 = time.monotonic()
    torch.manual_seed(train_cfg.seed)
    rng = np.random.default_rng(train_cfg.seed)
    (train_set, val_set, test_set), parts = prepare_splits(histories, config, train_cfg, sides)

    net = RiskNetwork(config).to(device)
    cuda = torch.device(device).type == "cuda"
    if cuda:  # bf16 autocast + channels_last on GPUs (the hazard heads stay float32)
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=train_cfg.learning_rate,
                            weight_decay=train_cfg.weight_decay)
    steps = train_cfg.epochs * math.ceil(len(train_set) / train_cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=train_cfg.learning_rate,
                                                total_steps=max(steps, 1), pct_start=0.15)
    best = (-1.0, None, -1)
    history = []
    for epoch in range(train_cfg.epochs):
        net.train()
        order = rng.permutation(len(train_set))
        total = 0.0
        for k in range(0, len(order), train_cfg.batch_size):
            raise_if_terminated()  # (a SIGTERM whose exception a library swallowed)
            idx = np.sort(order[k:k + train_cfg.batch_size])
            x, m = _tensors(train_set, idx, device)
            m = drop_views(m, config.view_dropout)
            if train_cfg.augment:
                x = augment(x, max_shift_px=max(1, config.input_size[0] // 32))
            y = torch.from_numpy(train_set.targets[idx]).to(device)
            known = torch.from_numpy(train_set.mask[idx]).to(device)
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=cuda):
                out = net(x, m)
            loss = censored_bce(out.exam_logits, y, known, train_cfg.pos_weight)
            if train_cfg.breast_loss_weight:
                side = torch.from_numpy(train_set.sides[idx]).to(device)
                loss = loss + train_cfg.breast_loss_weight * breast_loss(
                    out.breast_logits, y, known, out.breast_present, side, train_cfg.pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        val_logits, _ = predict_logits(net, val_set, device=device)
        c = concordance_index(val_logits[:, -1], val_set.times, val_set.events, horizon=config.max_followup)
        c = -1.0 if math.isnan(c) else c
        history.append({"epoch": epoch + 1, "train_loss": round(total / len(train_set), 5),
                        "val_c_index": round(c, 4)})
        log.info("epoch %d/%d: train loss %.4f, validation C-index %.3f (%.0f s)", epoch + 1,
                 train_cfg.epochs, total / len(train_set), c, time.monotonic() - t0)
        if c > best[0]:
            best = (c, {k: v.detach().clone() for k, v in net.state_dict().items()}, epoch + 1)
        if time_budget_s and time.monotonic() - t0 > time_budget_s:
            log.warning("time budget of %.0f s reached after epoch %d", time_budget_s, epoch + 1)
            break
    if best[1] is None:  # no validation woman with a cancer to rank against: the last epoch's weights
        log.warning("the validation women give no C-index (no cancer among them to rank against): "
                    "the weights of the last epoch are kept")
        best = (float("nan"), {k: v.detach().clone() for k, v in net.state_dict().items()}, len(history))
    net.load_state_dict(best[1])
    calibrator, breast_cal, test = calibrate_and_evaluate(net, val_set, test_set, train_cfg, device)
    metrics = {
        "test": test,
        "best_epoch": best[2],
        "epochs": history,
        "split_exams": {"train": len(train_set), "validation": len(val_set), "test": len(test_set)},
        "split_women": {k: int(len(p)) for k, p in zip(("train", "validation", "test"), parts)},
        "train_seconds": round(time.monotonic() - t0, 1),
    }
    return net.cpu(), calibrator, breast_cal, metrics


def prepare_splits(histories: Sequence, config: RiskConfig, train_cfg: TrainConfig,
                   sides: Sequence[str | None] | None = None):
    """``(train, validation, test)`` :class:`ExamSet` split by woman, and the woman indices."""
    t0 = time.monotonic()
    data = build_examset(histories, config, sides)
    parts = split_women(len(histories), train_cfg.split, train_cfg.seed)
    tr, va, te = (np.flatnonzero(np.isin(data.women, p)) for p in parts)
    log.info("prepared %d exams of %d women in %.1f s (train %d, validation %d, test %d exams; "
             "%d with cancer within %d years)", len(data), len(histories), time.monotonic() - t0,
             len(tr), len(va), len(te), int(data.targets[:, -1].sum()), config.max_followup)
    return (data.subset(tr), data.subset(va), data.subset(te)), parts


def calibrate_and_evaluate(net, val_set: ExamSet, test_set: ExamSet, train_cfg: TrainConfig,
                           device: str = "cpu"):
    """Fit per-year calibration on ``val_set`` (IPCW-weighted) and evaluate on ``test_set``.

    Returns ``(calibrator, breast_calibrator, test_metrics)``; the breast calibration is fitted
    only when the side of every validation cancer is known.
    """
    config = net.config
    val_logits, val_breast = predict_logits(net, val_set, device=device)
    T = config.max_followup
    val_w = ipcw_weights(val_set.times, val_set.events, range(1, T + 1), GRACE_YEARS)
    calibrator = (Calibrator("none") if train_cfg.calibration == "none" else
                  Calibrator.fit(val_logits, val_set.targets, val_set.mask, train_cfg.calibration,
                                 weights=val_w))
    breast_cal = Calibrator("none")
    positive = val_set.targets.sum(axis=1) > 0
    if train_cfg.calibration != "none" and positive.any() and (val_set.sides[positive] >= 0).all():
        import torch

        present = torch.from_numpy(val_set.view_mask.reshape(-1, 2, 2).any(axis=2))
        t_b, m_b, _ = breast_targets(torch.from_numpy(val_set.targets), torch.from_numpy(val_set.mask),
                                     torch.from_numpy(val_set.sides), present)
        breast_cal = Calibrator.fit(val_breast.reshape(-1, T), t_b.numpy().reshape(-1, T),
                                    m_b.numpy().reshape(-1, T), train_cfg.calibration,
                                    weights=np.repeat(val_w, 2, axis=0))
    from .inference import at_least_each_breast

    test_logits, test_breast = predict_logits(net, test_set, device=device)
    present = test_set.view_mask.reshape(-1, 2, 2).any(axis=2)
    breast_probs = breast_cal.apply(test_breast.reshape(-1, T)).reshape(-1, 2, T)
    test_probs = at_least_each_breast(calibrator.apply(test_logits), breast_probs, present, calibrator, breast_cal)
    test = evaluate(test_probs, test_set.times, test_set.events, test_set.targets, test_set.mask)
    return calibrator, breast_cal, test


def load_histories(train_cfg: TrainConfig, histories_dir: str | None):
    """The training cohort and, per woman, her cancer's breast when known.

    A folder of history folders (sides unknown), or the synthetic generator (whose woman ``i``
    is ``sample_woman(derive_seed(seed, i))``, which tells the side).
    """
    if histories_dir:
        from ..studyfolder import read_history

        root = Path(histories_dir)
        hs = [read_history(p) for p in sorted(root.iterdir()) if (p / "history.json").is_file()]
        return hs, None
    from ..synthetic import derive_seed
    from ..synthetic.longitudinal import make_cohort, sample_woman

    hs = make_cohort(train_cfg.seed, train_cfg.n_women, size=train_cfg.synthetic_size)
    sides = [sample_woman(derive_seed(train_cfg.seed, i)).laterality for i in range(len(hs))]
    return hs, sides


def metrics_summary_md(metrics: dict, source: str) -> str:
    """A short Markdown summary of the test metrics (for the bundle's docs/README.md)."""
    t = metrics["test"]
    lines = ["## Summary", "", f"Training data: {source}.", "",
             f"Test set: {t['n_exams']} exams, {t['n_events']} with cancer within 5 years; "
             f"split (women) {metrics.get('split_women')}; best epoch {metrics.get('best_epoch')}.", "",
             f"* C-index (Harrell, 5-year risk): {t['c_index']}; Uno's IPCW C-index: {t['c_index_uno']}",
             "* time-dependent AUC: " + ", ".join(f"year {k} {v}" for k, v in t["auc"].items()), "",
             "| year | exams known | events | mean predicted | observed (IPCW) | O/E |",
             "| --- | --- | --- | --- | --- | --- |"]
    for c in t["calibration"]:
        if c["mean_predicted"] is None:
            continue
        oe = "" if c["observed_to_expected"] is None else f"{c['observed_to_expected']:.2f}"
        lines.append(f"| {c['year']} | {c['n']} | {c['events']} | {100 * c['mean_predicted']:.1f}% | "
                     f"{100 * c['observed']:.1f}% | {oe} |")
    return "\n".join(lines) + "\n"


def append_summary(bundle_path: Path, summary: str) -> None:
    """Insert ``summary`` into the bundle's docs/README.md before its full metrics (atomically)."""
    from ..fsutil import atomic_write_text

    readme = Path(bundle_path) / "docs" / "README.md"
    text = readme.read_text(encoding="utf-8")
    head, sep, tail = text.partition("## Metrics")
    atomic_write_text(readme, head + summary + "\n" + sep + tail)


def main(argv: list[str] | None = None) -> int:
    """The command line; its errors are one line naming the file and the problem (the exit codes
    of ``binds``), never a traceback."""
    from ..errors import BindsError

    try:
        return _main(argv)
    except BindsError as e:
        print(f"python -m BINDSLib.risk.train: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("python -m BINDSLib.risk.train: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None = None) -> int:
    from ..bundle import BUNDLE_SIGNS
    from ..errors import InputError
    from ..fsutil import check_output_dir, json_dumps
    from .inference import save_risk_bundle

    p = argparse.ArgumentParser(prog="python -m BINDSLib.risk.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="configs/risk-*.json (model preset and training)")
    p.add_argument("--preset", default=None, help="model preset instead of the config's (tiny, demo, mirai)")
    p.add_argument("--histories", default=None, metavar="DIR", help="folder of exam-history folders")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--name", default="binds-risk-demo")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--device", default="cpu")
    p.add_argument("--time-budget", type=float, default=None, metavar="S", help="stop after the epoch that passes S seconds")
    p.add_argument("--recalibrate", default=None, metavar="BUNDLE",
                   help="keep BUNDLE's weights: refit its calibration on this cohort's validation "
                        "women and re-measure the test metrics")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    config, train_cfg = (load_config_file(args.config) if args.config else (preset("demo"), TrainConfig()))
    if args.preset:
        try:
            config = preset(args.preset)
        except ValueError as e:
            raise InputError(str(e)) from None
    # the output before the training (not found taken after it), the inputs never replaced
    check_output_dir(Path(args.out), args.overwrite, [p for p in (args.histories, args.config, args.recalibrate) if p],
                     BUNDLE_SIGNS)
    if args.histories and not Path(args.histories).is_dir():
        raise InputError("not a folder of exam-history folders", args.histories)
    histories, sides = load_histories(train_cfg, args.histories)
    if not histories:
        raise InputError("holds no exam-history folder (history.json)", args.histories)
    if args.recalibrate:
        from ..bundle import load_bundle
        from .inference import RiskModel

        old = load_bundle(args.recalibrate, kind="risk").metadata["binds"].get("metrics", {})
        net = RiskModel.from_bundle(args.recalibrate, device=args.device).network
        config = net.config
        (_, val_set, test_set), _ = prepare_splits(histories, config, train_cfg, sides)
        calibrator, breast_cal, test = calibrate_and_evaluate(net, val_set, test_set, train_cfg, args.device)
        metrics = {**old, "test": test, "recalibrated": True}
        net = net.cpu()
    else:
        net, calibrator, breast_cal, metrics = train(histories, config, train_cfg, device=args.device,
                                                     time_budget_s=args.time_budget, sides=sides)
    command = "python -m BINDSLib.risk.train " + " ".join(argv if argv is not None else sys.argv[1:])
    source = (f"exam histories in {args.histories}" if args.histories else
              f"synthetic longitudinal cohort: BINDSLib.synthetic.make_cohort(seed={train_cfg.seed}, "
              f"n_women={train_cfg.n_women})")
    path = save_risk_bundle(args.out, net, calibrator, breast_calibration=breast_cal, name=args.name, version=args.version,
                     description="Demo longitudinal 5-year breast cancer risk model (Mirai-type "
                                 "design, small input) trained on synthetic screening histories. "
                                 "Shows the workflow only: it has never seen a real mammogram.",
                     reproduce=command, metrics=metrics, training_data=source, overwrite=args.overwrite)
    append_summary(path, metrics_summary_md(metrics, source))
    sys.stdout.write(json_dumps({k: metrics[k] for k in ("test", "best_epoch", "split_exams", "train_seconds")}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
