"""Scoring a screening cohort: batched, resumable, sharded across processes, GPUs and nodes.

Manifest
--------
A CSV file with a header and at least the columns ``exam_id`` (unique) and ``path`` (a study
folder or a DICOM folder of one exam, relative to the manifest's folder or absolute); optional
``woman_id`` and ``exam_date`` (YYYY-MM-DD; else the exam's own date). Other columns are ignored.
The ``manifest.csv`` of ``binds phantom --longitudinal`` is accepted as it is: ``study_folder``
stands for ``path``, ``woman`` for ``woman_id``, and without ``exam_id`` the path is the ID.

Output folder
-------------
::

    OUT/run.json                     model and settings of this run (a resume must match)
    OUT/parts/scores-rank<R>.csv     append-only results of rank R (fsync after every batch)
    OUT/parts/failures-rank<R>.csv   append-only failures of rank R
    OUT/scores.csv | scores.parquet  merged: one row per exam, in manifest order
    OUT/failures.csv                 exams that could not be scored (and were not later)
    OUT/summary.json                 counts, exams/s, model

Resuming: every exam already present in any ``parts/scores-rank*.csv`` is skipped, so a killed
run re-started with the same command scores each exam exactly once (a row cut short by the
kill is removed first). Failed exams are retried on the next run.

Sharding: under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) rank ``r`` scores manifest
rows ``r, r + W, r + 2W, ...`` on ``cuda:LOCAL_RANK`` (CPU without CUDA); ranks meet at a
barrier (gloo process group) and rank 0 merges. Several nodes need ``OUT`` on a shared file
system. Loading and decoding run in DataLoader worker processes.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__
from ..errors import InputError, OutputError
from ..fsutil import atomic_write_json, atomic_write_text, has_content, resolved
from ..study import parse_date, pseudonym, public_id

log = logging.getLogger(__name__)

RUN_SCHEMA = "binds.cohort_run"
PARTS = "parts"
REQUIRED_COLUMNS = ("exam_id", "path")
#: Accepted alternative column names (the synthetic phantom manifest's).
ALIASES = {"path": ("study_folder",), "woman_id": ("woman",)}


@dataclass(frozen=True)
class ManifestRow:
    """One exam of the manifest. ``row`` is the 1-based data row (header and blank lines
    excluded: ``manifest_row`` in the outputs); ``line`` is its line in the file (header = 1)."""

    row: int
    exam_id: str
    path: Path
    woman_id: str | None = None
    exam_date: _dt.date | None = None
    path_text: str = ""
    line: int = 0


def _csv_rows(reader, path):
    """The rows of ``reader``; a malformed CSV (an unclosed quote runs on to the end) is an
    :class:`InputError` naming the line where it was found."""
    try:
        yield from reader
    except csv.Error as e:
        raise InputError(f"line {reader.line_num}: {e} (an unclosed quote?)", path) from None


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Read and check a cohort manifest (see module docstring).

    Raises
    ------
    InputError
        missing columns, empty or duplicate ``exam_id``, invalid dates (naming the row).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("manifest not found", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"manifest is not UTF-8 text: {e}", path) from None
    reader = csv.DictReader(io.StringIO(text))
    try:
        cols = [c.strip() for c in (reader.fieldnames or [])]
    except csv.Error as e:
        raise InputError(f"line {reader.line_num}: {e}", path) from None
    names = {}
    for want in ("exam_id", "path", "woman_id", "exam_date"):
        names[want] = next((c for c in (want, *ALIASES.get(want, ())) if c in cols), None)
    missing = [c for c in ("path",) if names[c] is None]
    if missing:
        raise InputError(f"manifest lacks column(s) {', '.join(missing)} (has {', '.join(cols) or 'none'}); "
                         "needs exam_id,path[,woman_id,exam_date]", path)
    rows, seen, places = [], {}, {}
    base = path.parent
    n = 0
    for raw in _csv_rows(reader, path):
        line = reader.line_num  # the file's line (header = line 1; blank lines counted), for messages
        rec = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}  # (None: extra cells)
        if not any(rec.values()):  # a row a spreadsheet emptied to commas
            continue
        p = rec.get(names["path"], "")
        eid = rec.get(names["exam_id"], "") if names["exam_id"] else p
        n += 1
        if not eid or not p:
            raise InputError(f"line {line}: exam_id and path must not be empty", path)
        if eid in seen:
            raise InputError(f"line {line}: exam_id {eid!r} repeats line {seen[eid]}", path)
        seen[eid] = line
        if "\0" in p:
            raise InputError(f"line {line}: path {p!r} holds a NUL character", path)
        place = os.path.normcase(resolved(base / p))  # (a/../a, a/, its absolute path, a link to it)
        if place in places:  # said, not refused: rows are the user's to list (a test may reuse a folder)
            log.warning("%s: line %d: path %r repeats line %d: that exam is scored twice (one exam "
                        "listed twice counts twice in its woman's exams)", path, line, p, places[place])
        places.setdefault(place, line)
        try:
            date = parse_date(rec.get(names["exam_date"] or "", "") or None)
        except ValueError as e:
            raise InputError(f"line {line}: {e}", path) from None
        rows.append(ManifestRow(n, eid, (base / p) if not Path(p).is_absolute() else Path(p),
                                rec.get(names["woman_id"] or "", "") or None, date, p, line))
    if not rows:
        raise InputError("manifest has no exams", path)
    return rows


def shard(rows: Sequence[ManifestRow], rank: int, world_size: int) -> list[ManifestRow]:
    """Rows of ``rank``: every ``world_size``-th row starting at ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return list(rows[rank::world_size])


def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` without)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    return rank, world, local


def result_columns(years: Sequence[int]) -> list[str]:
    cols = ["manifest_row", "exam_id", "woman_id", "exam_date"]
    cols += [f"risk_{y}y" for y in years]
    cols += [f"left_risk_{y}y" for y in years] + [f"right_risk_{y}y" for y in years]
    return cols + ["views_present", "warnings"]


FAILURE_COLUMNS = ["manifest_row", "exam_id", "path", "error"]
#: the part files' extra column: :func:`source_key` of the manifest row an exam was scored from
SOURCE_COLUMN = "source"


def source_key(row: ManifestRow) -> str:
    """A pseudonym of what the manifest said of an exam (path, woman, date): a resumed run
    whose manifest says otherwise for an exam already scored is refused, not merged stale."""
    date = row.exam_date.isoformat() if row.exam_date else ""
    return pseudonym(f"{row.path_text}\0{row.woman_id or ''}\0{date}")


# -- loading in worker processes ---------------------------------------------------------------

class ExamDataset:
    """Map-style dataset: manifest row -> prepared exam, or the error that prevented it.

    Runs in DataLoader workers (reading DICOM/NRRD and resizing happen there).
    """

    def __init__(self, rows: Sequence[ManifestRow], config):
        self.rows = list(rows)
        self.config = config

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        from .preprocess import load_exam, prepare_exam

        row = self.rows[i]
        item = {"index": i, "error": None, "images": None, "view_mask": None, "warnings": [],
                "exam_date": row.exam_date, "patient_id": None}
        try:
            study = load_exam(row.path)
            item["ids"] = [study.study_id, study.patient_id]  # kept out of failures.csv's errors
            prepared = prepare_exam(study, self.config)
            item.update(images=prepared.images, view_mask=prepared.view_mask,
                        warnings=prepared.warnings, exam_date=row.exam_date or study.study_date,
                        patient_id=study.patient_id, views=prepared.views_present)
        except Exception as e:  # noqa: BLE001 - a bad exam must not stop the cohort
            item["error"] = f"{type(e).__name__}: {e}"
        return item


def collate_exams(items: list[dict]) -> dict:
    """Stack the successfully prepared exams of a batch; keep the failures apart."""
    import torch

    ok = [it for it in items if it["error"] is None]
    batch = {"ok": [{k: v for k, v in it.items() if k not in ("images", "view_mask")} for it in ok],
             "failed": [it for it in items if it["error"] is not None]}
    if ok:
        batch["images"] = torch.from_numpy(np.stack([it["images"] for it in ok]))
        batch["view_mask"] = torch.from_numpy(np.stack([it["view_mask"] for it in ok]))
    return batch


def _worker_init(worker_id: int) -> None:
    import torch

    from ..threads import ignore_ctrl_c

    torch.set_num_threads(1)
    ignore_ctrl_c(worker_id)


# -- append-only part files ----------------------------------------------------------------------

def _repair_tail(path: Path) -> None:
    """Cut a last line left incomplete by a killed run (no trailing newline)."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: removed an incomplete last row left by an interrupted run", path)


def _read_part(path: Path) -> list[dict]:
    """Complete rows of a part file (a trailing incomplete line is ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(io.StringIO(text)))
    return [r for r in rows if None not in r and all(v is not None for v in r.values())]


class AppendOnlyCSV:
    """A CSV file that only grows; each :meth:`append` is written, flushed and fsync'ed. A file
    begun without some of the columns (by an earlier BINDS) is rewritten once, atomically, with
    them (empty in its rows)."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path = path
        self.columns = list(columns)
        _repair_tail(path)
        new = not path.is_file() or path.stat().st_size == 0
        if not new:
            with open(path, encoding="utf-8", newline="") as f:
                header = next(csv.reader(f), None) or []
            if set(self.columns) - set(header):
                columns = header + [c for c in self.columns if c not in header]
                atomic_write_text(path, _csv_text(_read_part(path), columns))
                self.columns = columns
            else:
                self.columns = header
        self._f = open(path, "a", encoding="utf-8", newline="")
        if new:
            self._write([dict(zip(self.columns, self.columns))])

    def _write(self, rows: Sequence[dict]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n", extrasaction="ignore")
        for r in rows:
            w.writerow(r)
        self._f.write(buf.getvalue())  # one write per batch
        self._f.flush()
        os.fsync(self._f.fileno())

    def append(self, rows: Sequence[dict]) -> None:
        if rows:
            self._write(rows)

    def close(self) -> None:
        self._f.close()


def scored_ids(out_dir: Path) -> dict[str, str]:
    """``exam_id`` of every exam already in any rank's part file -> its :func:`source_key`
    (``""`` in part files of an earlier BINDS, which did not record it)."""
    done: dict[str, str] = {}
    for part in sorted((out_dir / PARTS).glob("scores-rank*.csv")):
        for r in _read_part(part):
            done.setdefault(r["exam_id"], r.get(SOURCE_COLUMN) or "")
    return done


def check_resumed_sources(rows: Sequence[ManifestRow], done: dict[str, str], out_dir: Path,
                          keep_identifiers: bool) -> None:
    """:class:`InputError` when the manifest gives an exam already scored in ``out_dir`` another
    path, woman or date than the run that scored it: its scores would be merged stale."""
    changed = [r for r in rows if done.get(_public_id(r.exam_id, keep_identifiers)) not in (None, "", source_key(r))]
    if changed:
        lines = ", ".join(str(r.line) for r in changed[:10]) + (" ..." if len(changed) > 10 else "")
        raise InputError(f"{len(changed)} exam(s) already scored in {out_dir} are listed with another path, woman "
                         f"or date (manifest line(s) {lines}): resume with the manifest the run was started "
                         "with, or score again with --overwrite or a new --out")


# -- the run -------------------------------------------------------------------------------------

@dataclass
class CohortSummary:
    """Counts of one run of one rank (and, after the merge, of the whole output)."""

    rank: int = 0
    world_size: int = 1
    n_manifest: int = 0
    n_shard: int = 0
    n_already_scored: int = 0
    n_scored: int = 0
    n_failed: int = 0
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)

    @property
    def exams_per_s(self) -> float:
        return self.n_scored / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "n_manifest": self.n_manifest,
                "n_shard": self.n_shard, "n_already_scored": self.n_already_scored,
                "n_scored": self.n_scored, "n_failed": self.n_failed,
                "seconds": round(self.seconds, 3), "exams_per_s": round(self.exams_per_s, 3)}


def _public_id(value: str | None, keep_identifiers: bool) -> str:
    if value in (None, ""):
        return ""
    return public_id(value, keep_identifiers)


def _public_error(error: str, row: ManifestRow, ids: Sequence[str | None], keep_identifiers: bool) -> str:
    """``error`` as failures.csv shows it: without ``keep_identifiers`` the exam's path becomes
    ``<exam>`` (a file inside it stays named relative to it) and its IDs - the manifest's and
    the study's own - become ``<id>``."""
    if keep_identifiers:
        return error
    found = [(t, "<exam>") for t in (row.path_text, str(row.path), str(row.path.resolve()))]
    found += [(t, "<id>") for t in (row.exam_id, row.woman_id, *ids) if t and len(t) >= 3]  # "1": row numbers
    for text, repl in sorted({(t, r) for t, r in found if t}, key=lambda f: -len(f[0])):
        error = re.sub(rf"(?<![\w.-]){re.escape(text)}(?![\w-])", repl, error)
    return error


def run_settings(model, keep_identifiers: bool) -> dict:
    return {"schema": RUN_SCHEMA, "schema_version": 1,
            "model": {k: model.bundle_summary.get(k) for k in ("name", "version", "weights_sha256")},
            "input_size": list(model.config.input_size), "keep_identifiers": bool(keep_identifiers)}


def check_cohort_folder(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that is a file, or a folder holding anything but a cohort run
    (``run.json``): checked before the folder is made, locked or emptied, so that a refused
    folder is left as it was (``--overwrite`` removes a cohort run's files, never others)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError("is a file, not a folder: choose a folder name", out_dir)
    if out_dir.is_dir() and has_content(out_dir) and not (out_dir / "run.json").is_file():
        raise OutputError("folder is not empty and holds no cohort run (run.json): choose a new --out "
                          "(--overwrite replaces a cohort run only, not other files)", out_dir)


def prepare_output(out_dir: Path, settings: dict, overwrite: bool) -> None:
    """Check that ``out_dir`` (made by the command) may take this run: empty but for its lock,
    or a cohort run of the same model and settings to resume (:func:`check_cohort_folder`);
    ``overwrite`` then removes the cohort run's files."""
    run_json = out_dir / "run.json"
    check_cohort_folder(out_dir)
    if overwrite and out_dir.exists():
        for name in (PARTS, "run.json", "scores.csv", "scores.parquet", "failures.csv", "summary.json"):
            p = out_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    if run_json.is_file():
        try:
            old = json.loads(run_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = None
        if old != settings:
            raise OutputError("holds a run with another model or settings (see run.json); resume with "
                              "the same --model and --keep-identifiers, choose a new --out, or use "
                              "--overwrite", out_dir)
    else:  # first, so that a run stopped at any point leaves a folder that it can resume
        atomic_write_json(run_json, settings)
    (out_dir / PARTS).mkdir(parents=True, exist_ok=True)


def score_cohort(rows: Sequence[ManifestRow], out_dir: str | os.PathLike, model, *,
                 rank: int = 0, world_size: int = 1, batch_size: int = 8, num_workers: int = 2,
                 keep_identifiers: bool = False, progress_every_s: float = 10.0) -> CohortSummary:
    """Score this rank's share of ``rows`` that is not yet scored, appending to its part files.

    ``out_dir`` must have been set up by :func:`prepare_output`. Returns this rank's summary.
    """
    import torch
    from torch.utils.data import DataLoader

    from ..errors import raise_if_terminated
    from ..threads import ctrl_c_deferred

    out_dir = Path(out_dir)
    years = list(model.config.years)
    mine = shard(rows, rank, world_size)
    done = scored_ids(out_dir)
    check_resumed_sources(rows, done, out_dir, keep_identifiers)
    todo = [r for r in mine if _public_id(r.exam_id, keep_identifiers) not in done]
    summary = CohortSummary(rank, world_size, len(rows), len(mine), len(mine) - len(todo))
    log.info("rank %d/%d: %d exam(s) in shard, %d already scored, %d to score", rank, world_size,
             len(mine), summary.n_already_scored, len(todo))
    if not todo:
        return summary
    scores = AppendOnlyCSV(out_dir / PARTS / f"scores-rank{rank}.csv", result_columns(years) + [SOURCE_COLUMN])
    failures = AppendOnlyCSV(out_dir / PARTS / f"failures-rank{rank}.csv", FAILURE_COLUMNS)
    cuda = model.device.type == "cuda"
    loader = DataLoader(ExamDataset(todo, model.config), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_exams, pin_memory=cuda,
                        worker_init_fn=_worker_init if num_workers else None,
                        prefetch_factor=2 if num_workers else None)
    start = last_log = time.monotonic()
    try:
        with ctrl_c_deferred():  # not lost while the workers start
            batches = iter(loader)
        for batch in batches:
            raise_if_terminated()  # (a SIGTERM whose exception a library swallowed)
            failed = [(todo[it["index"]], it["error"], it.get("ids", ())) for it in batch["failed"]]
            out_rows = []
            if batch["ok"]:
                try:
                    exam, breast, present = model.predict(batch["images"], batch["view_mask"])
                    preds = [(exam[i], breast[i], present[i]) for i in range(len(batch["ok"]))]
                except Exception as e:  # noqa: BLE001 - e.g. out of memory: score one by one
                    log.warning("batch failed (%s: %s); scoring its exams one at a time", type(e).__name__, e)
                    preds = []
                    for i in range(len(batch["ok"])):
                        try:
                            ex, br, pr = model.predict(batch["images"][i:i + 1], batch["view_mask"][i:i + 1])
                            preds.append((ex[0], br[0], pr[0]))
                        except Exception as e1:  # noqa: BLE001
                            preds.append(f"{type(e1).__name__}: {e1}")
                for it, pred in zip(batch["ok"], preds):
                    row = todo[it["index"]]
                    if isinstance(pred, str):
                        failed.append((row, pred, ()))
                        continue
                    out_rows.append(_result_row(row, it, pred, years, keep_identifiers))
            scores.append(out_rows)
            public = [_public_error(err, r, ids, keep_identifiers) for r, err, ids in failed]
            failures.append([{"manifest_row": r.row, "exam_id": _public_id(r.exam_id, keep_identifiers),
                              "path": r.path_text if keep_identifiers else "",
                              "error": err} for (r, _, _), err in zip(failed, public)])
            for (r, err, _), shown in zip(failed, public):
                log.warning("exam in manifest row %d (line %d) failed: %s", r.row, r.line, err)  # the user's own log
                summary.failures.append({"manifest_row": r.row, "error": shown})
            summary.n_scored += len(out_rows)
            summary.n_failed += len(failed)
            now = time.monotonic()
            if now - last_log >= progress_every_s:
                last_log = now
                rate = summary.n_scored / (now - start)
                left = len(todo) - summary.n_scored - summary.n_failed
                eta = left / rate if rate > 0 else float("nan")
                log.info("rank %d: %d/%d scored, %d failed, %.2f exams/s, ETA %.0f s", rank,
                         summary.n_scored, len(todo), summary.n_failed, rate, eta)
    finally:
        scores.close()
        failures.close()
        summary.seconds = time.monotonic() - start
    if cuda:
        torch.cuda.synchronize()
    log.info("rank %d: scored %d exam(s) in %.1f s (%.2f exams/s), %d failed", rank, summary.n_scored,
             summary.seconds, summary.exams_per_s, summary.n_failed)
    return summary


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{float(v):.6f}"


def _result_row(row: ManifestRow, item: dict, pred, years, keep_identifiers: bool) -> dict:
    exam, breast, present = pred
    woman = row.woman_id or item.get("patient_id")
    date = item.get("exam_date")
    out = {"manifest_row": row.row, "exam_id": _public_id(row.exam_id, keep_identifiers),
           "woman_id": _public_id(woman, keep_identifiers),
           "exam_date": date.isoformat() if isinstance(date, _dt.date) else "",
           "views_present": " ".join(item.get("views", ())),
           "warnings": " | ".join(item.get("warnings", ())), SOURCE_COLUMN: source_key(row)}
    for k, y in enumerate(years):
        out[f"risk_{y}y"] = _fmt(exam[k])
        out[f"left_risk_{y}y"] = _fmt(breast[0, k]) if present[0] else ""
        out[f"right_risk_{y}y"] = _fmt(breast[1, k]) if present[1] else ""
    return out


def merge_results(out_dir: str | os.PathLike, years: Sequence[int], fmt: str = "csv",
                  extra_summary: dict | None = None, manifest: Sequence[ManifestRow] | None = None,
                  keep_identifiers: bool = False) -> dict:
    """Merge every rank's part files into ``scores.csv``/``.parquet`` and ``failures.csv``.

    Each exam appears once (its first scored row), in manifest order; failures of exams that
    were later scored are dropped. With ``manifest`` (the run's, read with the run's
    ``keep_identifiers``) only its exams are merged, numbered by its rows: an output folder
    resumed with a shorter, longer or reordered manifest gives that manifest's table. Returns
    the summary written to ``summary.json``.
    """
    out_dir = Path(out_dir)
    wanted = None if manifest is None else {_public_id(m.exam_id, keep_identifiers): m.row for m in manifest}
    first: dict[str, dict] = {}
    n_dup = n_other = 0
    for part in sorted((out_dir / PARTS).glob("scores-rank*.csv")):
        for r in _read_part(part):
            if wanted is not None and r["exam_id"] not in wanted:
                n_other += 1
            elif r["exam_id"] in first:
                n_dup += 1
            else:
                first[r["exam_id"]] = r
    if n_dup:
        log.warning("%d duplicate score row(s) in the part files were dropped", n_dup)
    if n_other:
        log.warning("%d exam(s) scored by earlier runs in %s are not in this manifest: left out of "
                    "the merged table", n_other, out_dir)
    fails: dict[str, dict] = {}
    for part in sorted((out_dir / PARTS).glob("failures-rank*.csv")):
        for r in _read_part(part):
            if r["exam_id"] not in first and (wanted is None or r["exam_id"] in wanted):
                fails[r["exam_id"]] = r  # the latest failure of an exam never scored
    if wanted is not None:  # numbered as this manifest numbers them
        for r in (*first.values(), *fails.values()):
            r["manifest_row"] = str(wanted[r["exam_id"]])
    rows = sorted(first.values(), key=lambda r: int(r["manifest_row"]))
    columns = result_columns(years)
    if fmt == "parquet":
        _write_parquet(out_dir / "scores.parquet", rows, columns, years)
        stale = out_dir / "scores.csv"
    else:
        atomic_write_text(out_dir / "scores.csv", _csv_text(rows, columns))
        stale = out_dir / "scores.parquet"
    if stale.exists():
        stale.unlink()
    fail_rows = sorted(fails.values(), key=lambda r: int(r["manifest_row"]))
    atomic_write_text(out_dir / "failures.csv", _csv_text(fail_rows, FAILURE_COLUMNS))
    summary = {"binds_version": __version__, "n_scored": len(rows), "n_failed": len(fail_rows),
               "output": f"scores.{fmt}", **(extra_summary or {})}
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def _csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _write_parquet(path: Path, rows: Sequence[dict], columns: Sequence[str], years) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise OutputError("Parquet output needs pyarrow (pip install pyarrow), or use --format csv",
                          path) from None
    numeric = {c for c in columns if "risk_" in c}
    data = {}
    for c in columns:
        vals = [r.get(c, "") for r in rows]
        if c == "manifest_row":
            data[c] = pa.array([int(v) for v in vals], pa.int64())
        elif c in numeric:
            data[c] = pa.array([float(v) if v != "" else None for v in vals], pa.float64())
        else:
            data[c] = pa.array(vals, pa.string())
    tmp = path.with_name(f".{path.name}.part")
    pq.write_table(pa.table(data), tmp)
    os.replace(tmp, path)
