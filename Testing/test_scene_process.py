"""The background process runner (progress, errors, cancel of the whole process tree), the
command lines it builds, dependency checks and sample-data URIs. No Slicer needed."""

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "BINDS"))

from BINDSSlicerLib import install, process, sampledata  # noqa: E402
from BINDSSlicerLib.paths import bindsRootDir, resourcePath, rootDir  # noqa: E402


def script(tmp_path, body):
    path = tmp_path / "fake_binds.py"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return [sys.executable, str(path)]


def test_progress_lines_are_parsed():
    p = process.parseProgressLine("PROGRESS 3/12 stage 1: ultrasound\n")
    assert p == process.Progress(3, 12, "stage 1: ultrasound") and p.percent == 25
    assert process.parseProgressLine("PROGRESS 0/0") == process.Progress(0, 0, "")
    assert process.parseProgressLine("PROGRESS 0/0").fraction == 0.0
    assert process.parseProgressLine("INFO: PROGRESS 1/2") is None
    assert process.parseProgressLine("progress 1/2") is None


def test_error_message_is_the_binds_error_line():
    lines = ["PROGRESS 1/2 x", "WARNING: something", "binds diagnose: error: /x/study.json: invalid JSON", "trailer"]
    assert process.errorMessage(lines, 3) == "/x/study.json: invalid JSON"
    assert process.errorMessage(["binds risk: internal error: KeyError: 'a' (re-run with --debug)"], 1) == \
        "KeyError: 'a' (re-run with --debug)"
    assert process.errorMessage(["PROGRESS 1/2", "Traceback...", "ValueError: bad"], 1) == "ValueError: bad"
    assert "exit code 7" in process.errorMessage([], 7)


def test_commands_and_arguments():
    args = process.diagnoseArguments("/s", "/o", model="/models/b", device="cpu", stage="2",
                                     lesionMasks={"MR_DCE1": "/m/a.nrrd", "MG_L_CC": "/m/b.nrrd"})
    assert args == ["/s", "--out", "/o", "--device", "cpu", "--stage", "2", "--model", "/models/b",
                    "--lesion-mask", "MG_L_CC=/m/b.nrrd", "--lesion-mask", "MR_DCE1=/m/a.nrrd", "--overwrite"]
    assert process.bindsCommand("risk", ["a", 1], python="PythonSlicer") == ["PythonSlicer", "-m", "BINDSLib", "risk", "a", "1"]
    assert process.riskArguments(["/e1", "/e2"], "/o", device="auto", overwrite=False) == \
        ["/e1", "/e2", "--out", "/o", "--device", "auto"]
    assert process.riskArguments(["/e1"], "/o", sameWoman=True) == \
        ["/e1", "--out", "/o", "--device", "auto", "--same-woman", "--overwrite"]
    env = process.processEnvironment("/root/binds", {"PYTHONPATH": "/x", "HOME": "/h"})
    assert env["PYTHONPATH"] == "/root/binds" + os.pathsep + "/x" and env["HOME"] == "/h"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_the_command_line_parses_with_binds_own_parser():
    from BINDSLib.cli import build_parser

    args = build_parser().parse_args(["diagnose", *process.diagnoseArguments(
        "/s", "/o", stage="1", lesionMasks={"US_L": "/m.nrrd"}, summary=False)])
    assert args.studies == ["/s"] and args.out == "/o" and args.stage == "1"
    assert args.lesion_mask == ["US_L=/m.nrrd"] and args.overwrite and args.no_summary


def test_background_process_reports_progress_log_and_success(tmp_path):
    command = script(tmp_path, """
        import sys, time
        for i in range(1, 4):
            sys.stderr.write(f"PROGRESS {i}/3 step {i}\\n"); sys.stderr.flush()
            time.sleep(0.02)
        print("done: outputs in /x")
        sys.stderr.write("INFO: finished\\n")
    """)
    progress, log, finished = [], [], []
    p = process.BackgroundProcess(command, onProgress=progress.append, onLog=lambda s, l: log.append((s, l)),
                                  onFinished=finished.append).start()
    result = p.wait(timeout=30)
    assert [(x.done, x.total, x.message) for x in progress] == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    assert ("stdout", "done: outputs in /x") in log and ("stderr", "INFO: finished") in log
    assert finished == [result] and result.succeeded and result.message == ""
    assert not p.poll()  # finished: polling again does nothing


def test_background_process_failure_gives_the_short_message_and_details(tmp_path):
    command = script(tmp_path, """
        import sys
        sys.stderr.write("PROGRESS 0/1 reading\\n")
        sys.stderr.write("binds diagnose: error: /data/x.nrrd: file is empty (0 bytes)\\n")
        sys.exit(3)
    """)
    result = process.BackgroundProcess(command).start().wait(timeout=30)
    assert result.returncode == 3 and not result.succeeded
    assert result.message == "/data/x.nrrd: file is empty (0 bytes)"
    assert "PROGRESS 0/1 reading" in result.details


@pytest.mark.skipif(os.name == "nt", reason="checks POSIX process groups")
def test_cancel_stops_the_process_and_its_children(tmp_path):
    # like PythonSlicer, a launcher whose child does the work
    command = script(tmp_path, """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        sys.stderr.write("PROGRESS 0/1 working\\n"); sys.stderr.flush()
        child.wait()
    """)
    p, child = _started_launcher(command)
    start = time.monotonic()
    p.cancel()
    result = p.wait(timeout=20)
    assert time.monotonic() - start < 10
    assert result.cancelled and result.returncode == process.CANCELLED and result.message == "cancelled"
    _assert_ends(child)  # the child is gone too


@pytest.mark.skipif(os.name == "nt", reason="checks POSIX signals")
def test_cancel_never_blocks_and_a_process_that_ignores_it_is_killed_by_poll(tmp_path):
    """Cancel (the button, in the GUI thread) only asks; the polling that follows kills a process
    still there after the grace time, with its children."""
    command = script(tmp_path, """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c",
                                  "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    p, child = _started_launcher(command)
    start = time.monotonic()
    p.cancel(graceSeconds=1.0)
    assert time.monotonic() - start < 0.5  # asked, not waited for
    p.cancel(graceSeconds=1.0)  # a second click changes nothing
    assert p.poll() and p.proc.poll() is None  # it ignores SIGTERM: still running
    result = p.wait(timeout=20)
    assert 0.9 < time.monotonic() - start < 10
    assert result.cancelled and result.returncode == process.CANCELLED
    _assert_ends(child)  # the child is gone too


def _started_launcher(command):
    """A started process that prints its child's PID first (like PythonSlicer, a launcher whose
    child does the work), and that PID."""
    pids = []
    p = process.BackgroundProcess(command, onLog=lambda s, l: pids.append(int(l)) if s == "stdout" else None).start()
    deadline = time.monotonic() + 20
    while not pids and time.monotonic() < deadline:
        p.poll()
        time.sleep(0.02)
    assert pids, "the fake launcher did not start"
    return p, pids[0]


def _assert_ends(pid, seconds=5.0):
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


def alive(pid):
    """Whether a process runs (a zombie left for a non-reaping init does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():
        return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    return True


def test_wait_times_out_and_cancels(tmp_path):
    command = script(tmp_path, "import time; time.sleep(30)")
    p = process.BackgroundProcess(command).start()
    with pytest.raises(TimeoutError):
        p.wait(timeout=0.3)
    assert p.proc.poll() is not None


def test_requirements_are_compared_by_version():
    versions = {"monai": "1.4.0", "pydicom": "2.4.4", "numpy": None, "SimpleITK": "2.3.1"}
    missing = install.missingRequirements(("monai>=1.3", "pydicom>=3.0", "numpy>=1.24", "SimpleITK==2.3.1", "matplotlib"),
                                          versionOf=versions.get)
    assert missing == ["pydicom>=3.0", "numpy>=1.24", "matplotlib"]
    assert install.parseRequirement("monai >= 1.3") == ("monai", ">=", "1.3")
    with pytest.raises(ValueError):
        install.parseRequirement("monai<2")
    assert install.isSatisfied("monai>=1.10", {"monai": "1.9.0"}.get) is False  # not a string comparison


def test_requirements_match_pyproject():
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = {d.split(">")[0].split("=")[0].strip(): d.replace(" ", "") for d in pyproject["project"]["dependencies"]}
    deps = {name: spec.split("#")[0] for name, spec in deps.items()}
    for requirement in install.REQUIREMENTS:
        name = install.parseRequirement(requirement)[0]
        assert deps[name] == requirement, f"{requirement} differs from pyproject.toml ({deps[name]})"
    assert set(deps) - {install.parseRequirement(r)[0] for r in install.REQUIREMENTS} == {"torch"}
    assert deps["torch"] == "torch" + install.TORCH_REQUIREMENT


def test_install_message_names_what_is_installed():
    text = install.describeMissing(["monai>=1.3"], needTorch=True)
    assert "monai>=1.3" in text and "PyTorch" in text and "Install them now?" in text


def test_sample_uris_round_trip():
    uri = sampledata.sampleUri("study", 7, "malignant")
    assert sampledata.parseSampleUri(uri) == ("study", 7, "malignant")
    assert sampledata.parseSampleUri(sampledata.sampleUri("history", 3)) == ("history", 3, None)
    with pytest.raises(ValueError):
        sampledata.parseSampleUri("https://example.org/x.nrrd")


def test_paths_of_a_clone():
    assert rootDir() == str(REPO)
    assert bindsRootDir(str(REPO / "BINDS" / "BINDS.py")) == str(REPO)
    assert resourcePath("UI/BINDS.ui") == str(REPO / "Resources" / "UI" / "BINDS.ui")


def test_dependencies_are_installed_only_after_the_user_confirms(monkeypatch, tmp_path):
    pytest.importorskip("slicer")
    import slicer.util

    missing = ["monai>=1.3", "pydicom>=3.0"]
    installed, asked = [], []
    monkeypatch.setattr(install, "torchInstalled", lambda: True)
    monkeypatch.setattr(install, "tooOldTorch", lambda: None)

    def still_missing(requirements=install.REQUIREMENTS, **k):  # reads them as the real one does
        return [r for r in requirements if install.parseRequirement(r) and r in missing]

    monkeypatch.setattr(install, "missingRequirements", still_missing)

    def pip_ensure(requirements, prompt_install=True, requester=None):
        installed.append(([str(r) for r in requirements], prompt_install, requester))
        for r in requirements:
            missing.remove(str(r))

    monkeypatch.setattr(install, "_pipEnsureFunction", lambda: pip_ensure)
    private = []

    def pip_install(args):
        private.append(list(args))
        missing.remove("pydicom>=3.0")

    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    folder = str(tmp_path / "private")
    # the user declines: nothing is installed
    assert install.ensureDependencies(confirm=lambda text: asked.append(text) or False, privateFolder=folder) is False
    assert installed == [] and private == [] and "monai>=1.3" in asked[0]
    assert "pydicom>=3.0 (into a folder only BINDS uses" in asked[0]
    # the user accepts: pip_ensure gets the shared requirements, pydicom goes to the private
    # folder (Slicer's own pydicom is left alone), and it does not ask again
    assert install.ensureDependencies(requester="BINDS", confirm=lambda text: True, privateFolder=folder) is True
    assert installed == [(["monai>=1.3"], False, "BINDS")]
    assert private == [["--target", folder, "--no-deps", "--upgrade", "pydicom>=3.0"]]
    # nothing missing: no question at all
    assert install.ensureDependencies(confirm=lambda text: pytest.fail("asked although nothing is missing"),
                                      privateFolder=folder)
    # an older pip_ensure without the keywords gets the requirements only; an error inside
    # pip_ensure is not taken for an older signature (no second call, no second prompt)
    calls = []

    def old_pip_ensure(requirements):
        calls.append([str(r) for r in requirements])
        missing.remove("monai>=1.3")

    missing[:] = ["monai>=1.3"]
    monkeypatch.setattr(install, "_pipEnsureFunction", lambda: old_pip_ensure)
    assert install.ensureDependencies(confirm=lambda text: True, privateFolder=folder) is True
    assert calls == [["monai>=1.3"]]

    def failing_pip_ensure(requirements, prompt_install=True, requester=None):
        calls.append("failing")
        raise TypeError("inside pip")

    missing[:] = ["monai>=1.3"]
    calls.clear()
    monkeypatch.setattr(install, "_pipEnsureFunction", lambda: failing_pip_ensure)
    with pytest.raises(TypeError, match="inside pip"):
        install.ensureDependencies(confirm=lambda text: True, privateFolder=folder)
    assert calls == ["failing"]


def test_a_too_old_torch_is_named_before_anything_is_installed(monkeypatch, tmp_path):
    pytest.importorskip("slicer")
    assert install.tooOldTorch({"torch": "1.13.1+cu117"}.get) == "1.13.1+cu117"
    assert install.tooOldTorch({"torch": "2.5.1+cu121"}.get) is None
    assert install.tooOldTorch({}.get) is None
    monkeypatch.setattr(install, "torchInstalled", lambda: True)
    monkeypatch.setattr(install, "tooOldTorch", lambda: "1.13.1")
    with pytest.raises(RuntimeError, match="PyTorch 1.13.1 is installed; BINDS needs PyTorch >=2.2"):
        install.ensureDependencies(confirm=lambda text: pytest.fail("asked"), privateFolder=str(tmp_path))
    # reading a study needs no torch: an old one does not matter there
    monkeypatch.setattr(install, "missingRequirements", lambda *a, **k: [])
    assert install.ensureDependencies(requirements=install.LOAD_REQUIREMENTS, withTorch=False,
                                      privateFolder=str(tmp_path))


def test_pydicom_in_the_private_folder_counts_and_reaches_only_the_process(tmp_path):
    folder = tmp_path / "private"
    dist = folder / "pydicom-3.0.2.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pydicom\nVersion: 3.0.2\n")
    slicer_has = {"pydicom": "2.4.4", "monai": "1.4.0"}.get
    assert install.privateVersion("pydicom", str(folder)) == "3.0.2"
    assert install.missingRequirements(("pydicom>=3.0", "monai>=1.3"), versionOf=slicer_has) == ["pydicom>=3.0"]
    assert install.missingRequirements(("pydicom>=3.0", "monai>=1.3"), versionOf=slicer_has,
                                       privateFolder=str(folder)) == []
    # only packages meant for the private folder count there
    assert install.missingRequirements(("monai>=2.0",), versionOf=slicer_has, privateFolder=str(folder)) == ["monai>=2.0"]
    env = process.processEnvironment("/root/binds", {"PYTHONPATH": "/x"}, [str(folder)])
    assert env["PYTHONPATH"].split(os.pathsep) == ["/root/binds", str(folder), "/x"]
    assert install.privateSitePackages(str(tmp_path)).startswith(str(tmp_path / "BINDS" / "python3."))


def test_loading_a_study_never_asks_for_torch(monkeypatch, tmp_path):
    pytest.importorskip("slicer")
    asked_for = []
    monkeypatch.setattr(install, "torchInstalled", lambda: False)
    monkeypatch.setattr(install, "missingRequirements",
                        lambda requirements=install.REQUIREMENTS, **k: asked_for.append(tuple(requirements)) or [])
    assert install.ensureDependencies(requirements=install.LOAD_REQUIREMENTS, withTorch=False,
                                      confirm=lambda text: pytest.fail(f"asked: {text}"),
                                      privateFolder=str(tmp_path))
    assert asked_for == [install.LOAD_REQUIREMENTS]
    assert set(install.LOAD_REQUIREMENTS) <= set(install.REQUIREMENTS)
    # Apply still needs torch
    texts = []
    assert install.ensureDependencies(confirm=lambda text: texts.append(text) or False,
                                      privateFolder=str(tmp_path)) is False
    assert "PyTorch" in texts[0]
