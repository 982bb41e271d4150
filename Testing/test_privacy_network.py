"""No network, no identifiers: the pipeline never opens a socket, and outputs carry
pseudonymous IDs unless --keep-identifiers."""

import socket

import pytest

from BINDSLib.cli import main
from BINDSLib.studyfolder import read_study_folder, write_study_folder


@pytest.fixture
def no_sockets(monkeypatch):
    opened = []

    class Refused(socket.socket):
        def __init__(self, *a, **k):
            opened.append(a)
            raise OSError("network access attempted during a BINDS run")

    monkeypatch.setattr(socket, "socket", Refused)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Refused())
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: opened.append(a) or (_ for _ in ()).throw(OSError("dns")))
    return opened


def test_pipeline_opens_no_socket(tmp_path, diagnosis_bundle, study_dir, no_sockets):
    assert main(["phantom", "--out", str(tmp_path / "ph"), "--cases", "1", "--dicom"]) == 0
    assert main(["inspect", str(tmp_path / "ph" / "case-0000-dicom")]) == 0
    assert main(["diagnose", str(study_dir), "--model", str(diagnosis_bundle), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--stage", "2"]) == 0
    assert no_sockets == []


def test_identifiers_pseudonymised_unless_asked(tmp_path, diagnosis_bundle, study_dir):
    study = read_study_folder(study_dir)
    study.patient_id = "DOE^JANE 0042"
    src = write_study_folder(study, tmp_path / "s", keep_identifiers=True)
    assert "DOE^JANE" in (src / "study.json").read_text()
    assert main(["diagnose", str(src), "--model", str(diagnosis_bundle), "--out", str(tmp_path / "anon"), "--stage", "1"]) == 0
    for f in ("report.json", "results.csv"):
        text = (tmp_path / "anon" / f).read_text()
        assert "DOE^JANE" not in text and "0042" not in text and "anon-" in text
    assert main(["diagnose", str(src), "--model", str(diagnosis_bundle), "--out", str(tmp_path / "kept"), "--stage", "1",
                 "--keep-identifiers"]) == 0
    assert "DOE^JANE 0042" in (tmp_path / "kept" / "report.json").read_text()
