"""Model bundles: SHA-256 checked before loading, weights_only refuses code, clear errors."""

import json
import os

import pytest
import torch

from BINDSLib.bundle import find_bundle, load_bundle, save_bundle, sha256_file
from BINDSLib.errors import ModelError


@pytest.fixture
def bundle(tmp_path):
    return save_bundle(tmp_path / "b", {"w": torch.arange(4.0)}, {"kind": "diagnosis", "x": 1},
                       name="test-bundle", version="1.2", description="test", task="test",
                       reproduce="binds train cfg.json", metrics={"auc": 0.5})


def test_save_and_load(bundle):
    b = load_bundle(bundle, kind="diagnosis")
    assert torch.equal(b.state_dict["w"], torch.arange(4.0))
    assert b.kind == "diagnosis" and b.name == "test-bundle" and b.version == "1.2"
    assert b.binds["metrics"] == {"auc": 0.5}
    assert b.sha256 == sha256_file(bundle / "models" / "model.pt")
    assert "binds train cfg.json" in (bundle / "docs" / "README.md").read_text()
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["intended_use"].startswith("Research use only")


def test_wrong_kind(bundle):
    with pytest.raises(ModelError, match="'risk' bundle is needed"):
        load_bundle(bundle, kind="risk")


def test_tampered_weights_refused(bundle):
    w = bundle / "models" / "model.pt"
    torch.save({"w": torch.zeros(4)}, w)
    with pytest.raises(ModelError, match="do not match the SHA-256"):
        load_bundle(bundle)


def test_pickle_with_code_is_never_executed(bundle, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    w = bundle / "models" / "model.pt"
    torch.save({"w": Evil()}, w)
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"] = sha256_file(w)  # even with a matching hash
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="not a plain weights file"):
        load_bundle(bundle)
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda b: (b / "configs" / "metadata.json").unlink(), "metadata.json is missing"),
    (lambda b: (b / "configs" / "metadata.json").write_text("{"), "invalid metadata JSON"),
    (lambda b: (b / "configs" / "metadata.json").write_text("{}"), "no 'weights_sha256'"),
    (lambda b: (b / "models" / "model.pt").unlink(), "weights file"),
    (lambda b: _edit_metadata(b, lambda m: [m]), "metadata is a JSON list, not an object"),
    (lambda b: _edit_metadata(b, lambda m: {**m, "binds": "diagnosis"}), "'binds' is a JSON str, not an object"),
    (lambda b: _edit_metadata(b, lambda m: {**m, "version": [1]}), "'version' is a JSON list, not a string"),
    (lambda b: _truncate_weights(b), "not a plain weights file"),
])
def test_broken_bundles(bundle, damage, message):
    damage(bundle)
    with pytest.raises(ModelError, match=message):
        load_bundle(bundle)


def _edit_metadata(bundle, edit):
    path = bundle / "configs" / "metadata.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _truncate_weights(bundle):
    """A cut-short model.pt whose SHA-256 the metadata records (a copy cut by a full disk)."""
    w = bundle / "models" / "model.pt"
    w.write_bytes(w.read_bytes()[:100])
    _edit_metadata(bundle, lambda m: {**m, "weights_sha256": sha256_file(w)})


def test_a_broken_bundle_on_the_search_path_does_not_stop_the_others(bundle, tmp_path, monkeypatch, capsys):
    from BINDSLib.cli import main
    from BINDSLib.model.selection import installed_bundles

    path = tmp_path / "models"
    for name, edit in (("listed", lambda m: [m]), ("textual", lambda m: {**m, "binds": "diagnosis"})):
        (path / name / "configs").mkdir(parents=True)
        (path / name / "configs" / "metadata.json").write_text(json.dumps(edit({"weights_sha256": "0"})))
    monkeypatch.setenv("BINDS_MODEL_PATH", str(path))
    found = {b.path.name for b in installed_bundles()}  # the broken two are left out, with a warning
    assert "binds-diagnosis-demo" in found and not found & {"listed", "textual"}
    # a broken copy first on the path does not hide the good one of the same name
    (path / "binds-diagnosis-demo" / "configs").mkdir(parents=True)
    (path / "binds-diagnosis-demo" / "configs" / "metadata.json").write_text("{")
    demo = [b.path for b in installed_bundles() if b.path.name == "binds-diagnosis-demo"]
    assert len(demo) == 1 and demo[0].parent != path
    capsys.readouterr()
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "listed" in out and "metadata is a JSON list" in out and "textual" in out
    assert main(["models", "--verify"]) == 4


def test_find_by_name_on_search_path(bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("BINDS_MODEL_PATH", str(bundle.parent))
    assert find_bundle("b") == bundle
    with pytest.raises(ModelError, match="not found"):
        find_bundle("no-such-bundle")


def test_verify_loads_each_bundle_as_its_command_does(tiny_bundle, monkeypatch, tmp_path, capsys):
    """--verify checks what diagnose would refuse: metadata it cannot use, or no kind at all,
    not only the weights' hash."""
    import shutil

    from BINDSLib.cli import main

    path = tmp_path / "models"
    for name, edit in (("good", lambda b: None), ("bad-band", lambda b: b.update(uncertainty_band=[0.9, 0.1])),
                       ("no-kind", lambda b: b.pop("kind"))):
        shutil.copytree(tiny_bundle, path / name)
        meta_path = path / name / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        edit(meta["binds"])
        meta_path.write_text(json.dumps(meta))
    monkeypatch.setenv("BINDS_MODEL_PATH", str(path))
    capsys.readouterr()
    assert main(["models", "--verify", "--json"]) == 4
    rows = {r["folder"]: r for r in json.loads(capsys.readouterr().out)["bundles"]}
    assert rows["good"]["verified"] is True
    assert "uncertainty_band must be [low, high] with 0 <= low <= high <= 1" in rows["bad-band"]["error"]
    assert "binds.kind is None: neither a diagnosis nor a risk bundle" in rows["no-kind"]["error"]


def test_a_bundle_hidden_by_another_of_its_folder_name_is_shown(tiny_bundle, monkeypatch, tmp_path, capsys):
    """Two training runs' bundles (both RUN_DIR/bundle) on BINDS_MODEL_PATH: the second is
    never used by name or by auto, and binds models says so."""
    import shutil

    from BINDSLib.cli import main

    for run in ("run1", "run2"):
        shutil.copytree(tiny_bundle, tmp_path / run / "bundle")
    monkeypatch.setenv("BINDS_MODEL_PATH", os.pathsep.join(str(tmp_path / r) for r in ("run1", "run2")))
    capsys.readouterr()
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"not used: {tmp_path / 'run2' / 'bundle'} (its folder name is taken by {tmp_path / 'run1' / 'bundle'}" in out


def test_a_killed_writers_hidden_copy_is_not_a_bundle(bundle, monkeypatch, tmp_path):
    """A calibrate or train killed while it wrote its bundle leaves a hidden .NAME.XXXX.part copy
    beside the finished one: it is neither listed nor found, nor does it hide the finished one."""
    import shutil

    from BINDSLib.bundle import hidden_bundles, list_bundles

    monkeypatch.setenv("BINDS_MODEL_PATH", str(bundle.parent))
    shutil.copytree(bundle, bundle.parent / ".a.x1y2.part")  # sorts before "b"
    for listed in (list_bundles(), list_bundles("diagnosis")):
        assert bundle in listed and not any(p.name.startswith(".") for p in listed)
    assert hidden_bundles() == []
    with pytest.raises(ModelError, match="not found") as e:
        find_bundle("a")
    assert ".part" not in str(e.value)
