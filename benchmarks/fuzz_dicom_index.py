"""Bounded coverage-guided fuzzing of the DICOM indexer and loader with atheris.

Each input is written as a file (seeded with real DICOM headers: pydicom's test files and, when
present, ../shared/data/mg-vendor-headers) into a fresh folder which is then indexed and loaded.
A finding is any exception other than BINDS's InputError, an out-of-memory (over 4 GB) or a
timeout (20 s). Runs a fixed number of iterations; libFuzzer prints coverage and, on a finding,
saves the input under --crashes and exits non-zero.

    pip install atheris
    python benchmarks/fuzz_dicom_index.py --runs 20000

Not part of the test suite (it is slow); results are recorded in docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def seed_corpus(out: Path) -> int:
    import pydicom

    out.mkdir(parents=True, exist_ok=True)
    sources = [Path(pydicom.__file__).parent / "data" / "test_files" / n for n in
               ("MR_small.dcm", "examples_palette.dcm", "examples_rgb_color.dcm", "reportsi.dcm",
                "ExplVR_BigEnd.dcm", "MR_truncated.dcm")]
    shared = REPO.parent / "shared" / "data" / "mg-vendor-headers"
    if shared.is_dir():
        sources += sorted(shared.glob("*.dcm"))
    n = 0
    for p in sources:
        if p.is_file() and p.stat().st_size < 200_000:
            (out / p.name).write_bytes(p.read_bytes())
            n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--crashes", default="fuzz-crashes")
    args = ap.parse_args()
    import atheris

    with atheris.instrument_imports(include=["BINDSLib", "pydicom"]):
        from BINDSLib.errors import InputError
        from BINDSLib.io.dicom import index_dicom_folder, load_dicom_folder
    os.environ.setdefault("BINDS_MAX_IMAGE_BYTES", str(256 * 1024**2))

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="binds-fuzz-"))
    corpus = work / "corpus"
    print(f"fuzz: {seed_corpus(corpus)} seed files, {args.runs} runs", file=sys.stderr, flush=True)

    def one_input(data: bytes) -> None:
        d = Path(tempfile.mkdtemp(dir=work))
        (d / "f.dcm").write_bytes(data)
        try:
            index_dicom_folder(d)
            load_dicom_folder(d)
        except InputError:
            pass
        finally:
            for f in d.iterdir():
                f.unlink()
            d.rmdir()

    crash_dir = Path(args.crashes).resolve()
    crash_dir.mkdir(exist_ok=True)
    argv = [sys.argv[0], str(corpus), f"-runs={args.runs}", f"-artifact_prefix={crash_dir}/",
            "-max_len=262144", "-timeout=20", "-rss_limit_mb=4096"]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
