"""Diagnosis bundles: round trip, hash check, weights_only refusal of a pickle with code, and
the shipped demo bundle."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from BINDSLib.bundle import METADATA, WEIGHTS, module_from_state, repo_resources, save_bundle, sha256_file
from BINDSLib.errors import ModelError
from BINDSLib.model.inference import DiagnosisModel
from BINDSLib.model.network import DiagnosisNetwork
from test_model_cases import make_case, tiny_config

DEMO = repo_resources() / "Models" / "binds-diagnosis-demo"


def _write(path, net, **extra):
    binds = {"kind": "diagnosis", "model_config": net.config.to_json(),
             "operating_point": {"threshold": 0.3}, "calibration": {"temperature": 2.0}, **extra}
    return save_bundle(path, net.state_dict(), binds, name="tiny", version="0.0.1",
                       description="test", task="test")


@pytest.fixture()
def bundle(tmp_path):
    torch.manual_seed(0)
    net = DiagnosisNetwork(tiny_config())
    return _write(tmp_path / "tiny", net), net


def test_round_trip_rebuilds_the_same_model(bundle):
    path, net = bundle
    model = DiagnosisModel.from_bundle(path, device="cpu")
    assert model.threshold == 0.3 and model.temperature == 2.0
    assert model.config == net.config
    study = make_case(0, True, ("US", "MR"))
    a = model.predict(study, saliency="none")
    b = DiagnosisModel(net, model.metadata, device="cpu").predict(study, saliency="none")
    assert a.malignancy_probability == pytest.approx(b.malignancy_probability, abs=1e-6)
    assert a.model["weights_sha256"] == sha256_file(path / WEIGHTS)
    # calibration: p = sigmoid(logit / T)
    assert a.malignancy_probability == pytest.approx(1 / (1 + np.exp(-a.malignancy_logit / 2.0)))


def test_tampered_weights_are_refused(bundle):
    path, _ = bundle
    w = path / WEIGHTS
    data = bytearray(w.read_bytes())
    data[-100] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        DiagnosisModel.from_bundle(path, device="cpu")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_never_runs(bundle, tmp_path):
    path, _ = bundle
    marker = tmp_path / "pwned"
    torch.save({"weight": _Evil(marker)}, path / WEIGHTS)
    meta = json.loads((path / METADATA).read_text())
    meta["weights_sha256"] = sha256_file(path / WEIGHTS)  # the attacker also fixed the hash
    (path / METADATA).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="refusing to load"):
        DiagnosisModel.from_bundle(path, device="cpu")
    assert not marker.exists()


def test_foreign_bundles_are_refused(tmp_path):
    torch.manual_seed(0)
    net = DiagnosisNetwork(tiny_config())
    risk = _write(tmp_path / "risk", net, kind="risk")
    with pytest.raises(ModelError, match="diagnosis"):
        DiagnosisModel.from_bundle(risk, device="cpu")
    other = _write(tmp_path / "other", net, model_config=tiny_config(embed_dim=32).to_json())
    with pytest.raises(ModelError, match="do not fit"):
        DiagnosisModel.from_bundle(other, device="cpu")
    bad = _write(tmp_path / "bad", net, model_config={"embed_dim": 30, "fusion_heads": 4})
    with pytest.raises(ModelError, match="model_config"):
        DiagnosisModel.from_bundle(bad, device="cpu")
    with pytest.raises(ModelError, match="not found"):
        DiagnosisModel.from_bundle(tmp_path / "missing", device="cpu")


def test_module_from_state_takes_the_weights_without_a_copy():
    """Loading builds the network on the meta device and takes the loaded tensors themselves:
    no random initialisation, never two copies of the weights; same network as
    ``load_state_dict``; bad weights refused as ``load_state_dict(strict=True)`` refuses them."""
    torch.manual_seed(0)
    cfg = tiny_config()
    ref = DiagnosisNetwork(cfg).eval()
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    net = module_from_state(lambda: DiagnosisNetwork(cfg), state).eval()
    own = net.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert own[k].data_ptr() == v.data_ptr(), k  # the same memory: no copy
        assert own[k].device.type == "cpu"
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in net.parameters())
    study = make_case(0, True, ("US", "MR"))
    a = DiagnosisModel(net, device="cpu").predict(study, saliency="none")
    b = DiagnosisModel(ref, device="cpu").predict(study, saliency="none")
    assert a.malignancy_probability == b.malignancy_probability
    # weights saved in float64 come back in the network's float32
    wide = module_from_state(lambda: DiagnosisNetwork(cfg),
                             {k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    assert all(p.dtype == torch.float32 for p in wide.parameters())
    key = next(k for k, v in state.items() if v.dim() == 4)
    with pytest.raises(RuntimeError, match="Missing key"):
        module_from_state(lambda: DiagnosisNetwork(cfg), {k: v for k, v in state.items() if k != key})
    with pytest.raises(RuntimeError, match="size mismatch"):
        module_from_state(lambda: DiagnosisNetwork(cfg), {**state, key: state[key][:1]})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        module_from_state(lambda: DiagnosisNetwork(cfg), {**state, "extra.weight": torch.zeros(1)})


def test_from_bundle_never_holds_the_weights_twice(bundle, monkeypatch):
    """Once the network's weights are replaced by copies (BatchNorm folding, channels-last
    layouts), no loaded tensor that the network no longer uses may still be alive: the bundle
    gives its state dict away before the copies are made."""
    import gc
    import warnings

    import BINDSLib.bundle as bundle_mod

    path, _ = bundle
    loaded: set[int] = set()
    replaced: set[int] = set()
    stale: list[int] = []
    real_load, real_init = bundle_mod.load_bundle, DiagnosisModel.__init__

    def load(*args, **kwargs):
        b = real_load(*args, **kwargs)
        loaded.update(t.data_ptr() for t in b.state_dict.values() if t.numel())
        return b

    def init(self, network, *args, **kwargs):  # the copies are all made by the end of __init__
        real_init(self, network, *args, **kwargs)
        gc.collect()
        held = {t.data_ptr() for t in (*network.parameters(), *network.buffers())}
        replaced.update(loaded - held)
        with warnings.catch_warnings():  # isinstance on some of torch's deprecated objects warns
            warnings.simplefilter("ignore")
            stale.extend(o.data_ptr() for o in gc.get_objects()
                         if isinstance(o, torch.Tensor) and o.data_ptr() in replaced)

    monkeypatch.setattr(bundle_mod, "load_bundle", load)
    monkeypatch.setattr(DiagnosisModel, "__init__", init)
    DiagnosisModel.from_bundle(path, device="cpu")
    assert replaced, "no weight was copied: the test checks nothing"
    assert not stale, f"{len(stale)} replaced weights still held"


@pytest.mark.skipif(not (DEMO / METADATA).is_file(), reason="demo bundle not built yet")
def test_shipped_demo_bundle():
    meta = json.loads((DEMO / METADATA).read_text())
    b = meta["binds"]
    for key in ("kind", "model_config", "modalities", "roles", "input_sizes", "classes",
                "operating_point", "operating_points", "calibration", "uncertainty_band",
                "training_data", "intended_use", "metrics"):
        assert key in b, key
    assert b["kind"] == "diagnosis" and "not for clinical use" in b["intended_use"]
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert size < 8 * 2 ** 20
    assert "binds train" in (DEMO / "docs" / "README.md").read_text()
    model = DiagnosisModel.from_bundle("binds-diagnosis-demo", device="cpu")
    from BINDSLib.synthetic import make_study

    study = make_study(12345)
    pred = model.predict(study)
    assert pred.modalities == ("MG", "US", "MR")
    assert pred.timings_s["total"] < 10.0  # "a couple of seconds" on 2 CPU cores, with margin
    for im in study.images:
        assert pred.images[im.label].saliency.shape == im.shape
