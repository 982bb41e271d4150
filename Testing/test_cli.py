"""The ``binds`` command: help on every command, exit codes, inspect output."""

import json
import subprocess
import sys

import numpy as np
import pytest

from BINDSLib.cli import COMMANDS, build_parser, main
from BINDSLib.study import Geometry, Image, Role, Study
from BINDSLib.studyfolder import write_study_folder


def test_help_for_every_command(capsys):
    parser = build_parser()
    names = parser._subparsers._group_actions[0].choices
    assert "inspect" in names and "phantom" in names
    for name in names:
        assert name in COMMANDS
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage: binds " + name in capsys.readouterr().out


def test_python_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "BINDSLib", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("binds ")


def test_inspect_json_on_study_folder(tmp_path, capsys):
    st = Study("s1", [Image(np.zeros((1, 4, 5), np.float32), Geometry((0.1, 0.1, 1)), Role.parse("MG_R_MLO")),
                      Image(np.zeros((3, 4, 5), np.float32), Geometry(), Role.parse("MR_DCE2"))],
               patient_id="PID-42",
               comparison=[Image(np.zeros((1, 4, 5), np.float32), Geometry((0.1, 0.1, 1)), Role.parse("MG_L_MLO"))])
    write_study_folder(st, tmp_path / "s1")
    assert main(["inspect", str(tmp_path / "s1"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (s,) = doc["studies"]
    assert "PID-42" not in json.dumps(doc)
    mg, mr = s["images"]
    assert (mg["modality"], mg["role"], mg["laterality"], mg["view"]) == ("MG", "MG_R_MLO", "R", "MLO")
    assert (mr["modality"], mr["phase"], mr["sequence"]) == ("MR", 2, "DCE")
    assert mg["path"].endswith("MG_R_MLO.nrrd")
    (other,) = s["comparison_images"]  # the other breast, given for comparison only
    assert other["role"] == "MG_L_MLO" and other["path"].endswith("comparison/MG_L_MLO.nrrd")
    assert main(["inspect", str(tmp_path / "s1")]) == 0
    text = capsys.readouterr().out
    assert "MG_R_MLO" in text and "(for comparison only)" not in text.split("MG_L_MLO")[0]
    assert "MG_L_MLO" in text and "(for comparison only)" in text.split("MG_L_MLO")[1]
    # a lesion mask that is empty (a normal study's) says so
    mask = np.zeros((1, 4, 5), np.uint8)
    st.images[0].lesion_mask = mask
    st.images[1].lesion_mask = np.ones((3, 4, 5), np.uint8)
    write_study_folder(st, tmp_path / "s2")
    assert main(["inspect", str(tmp_path / "s2")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("MG_R_MLO" in ln and ln.endswith("+lesion mask (empty)") for ln in lines)
    assert any("MR_DCE2" in ln and ln.endswith("+lesion mask") for ln in lines)
    assert main(["inspect", str(tmp_path / "s2"), "--json"]) == 0
    assert [im["lesion_mask_voxels"] for im in json.loads(capsys.readouterr().out)["studies"][0]["images"]] == [0, 60]


def test_exit_codes_and_one_line_errors(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0] and "missing" in err[0]
    with pytest.raises(SystemExit) as e:  # argparse's own usage errors
        main(["diagnose", "x"])  # (no --out)
    assert e.value.code == 2


@pytest.mark.parametrize("argv", [
    ["diagnose", "--out", "o"],                                   # no study
    ["diagnose", "--role", "US_L", "--out", "o"],                 # ROLE=FILE without '='
    ["convert", "--out", "o"],                                    # nothing to convert
    ["inspect"],                                                  # nothing to inspect
    ["diagnose", "x", "--lesion-mask", "US_L", "--out", "o"],     # LABEL=FILE without '='
    ["cohort", "m.csv", "--out", "o", "--batch-size", "0"],
])
def test_command_line_mistakes_argparse_cannot_see_are_usage_errors(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv").write_text("exam_id,path\nE1,e1\n")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"binds {argv[0]}: error:")
    assert not (tmp_path / "o").exists()


def test_a_file_that_cannot_be_read_is_named_not_an_internal_error(tmp_path, monkeypatch, capsys):
    """Outputs are checked for permission before the work, so a permission error met later is
    an input that cannot be read: exit 3 naming it (a /proc link, another user's folder)."""
    import errno

    import BINDSLib.io.loader as loader

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/other-user/study")

    monkeypatch.setattr(loader, "load", denied)
    assert main(["inspect", str(tmp_path)]) == 3
    assert capsys.readouterr().err == "binds inspect: error: /data/other-user/study: permission denied (cannot read it)\n"
    # refused inside the command's output (a resumed run's folder): an output error
    import BINDSLib.commands.diagnose as diagnose_command

    def denied_out(args):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out" / "parts" / "x.csv"))

    monkeypatch.setattr(diagnose_command, "run", denied_out)
    assert main(["diagnose", str(tmp_path), "--out", str(tmp_path / "out")]) == 5
    assert "out/parts/x.csv: permission denied in the command's output" in capsys.readouterr().err
    # binds train chooses its run folder itself when --out is not given
    import BINDSLib.model.train as train_module

    def denied_run(settings, run_dir, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(run_dir / "train.log"))

    monkeypatch.setattr(train_module, "train", denied_run)
    monkeypatch.setattr(train_module, "load_settings", lambda path: None)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "cfg.json", "--resume"]) == 5
    assert "out/train/cfg/train.log: permission denied in the command's output" in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """``binds models --json | head -1``: the closed pipe is not an "internal error" (a bug),
    and nothing is printed about it; the status is SIGPIPE's, as other tools give."""
    import os

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    try:
        done = subprocess.run([sys.executable, "-m", "BINDSLib", "models", "--json"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert "internal error" not in done.stderr and "Exception ignored" not in done.stderr
    assert "BrokenPipe" not in done.stderr
    import socket  # the same when standard output is a socket whose peer went away (systemd, sshd)

    mine, theirs = socket.socketpair()
    theirs.close()
    try:
        done = subprocess.run([sys.executable, "-m", "BINDSLib", "models", "--json"], stdout=mine.fileno(),
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        mine.close()
    assert done.returncode == 141, done.stderr


def test_sigterm_removes_what_was_being_written_and_says_so(tmp_path):
    """kill (a scheduler's SIGTERM) while phantom writes: exit 143, one line, no output and no
    hidden .part folder left (before, the half-built folder stayed behind, without a word)."""
    import os
    import signal
    import time

    out = tmp_path / "ph"
    proc = subprocess.Popen([sys.executable, "-m", "BINDSLib", "phantom", "--out", str(out), "--cases", "40"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".ph.*.part")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "phantom finished before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().endswith("binds phantom: terminated") and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".ph.*"))
    assert os.listdir(tmp_path) == []


def test_a_sigterm_lost_inside_a_library_still_ends_the_run(tmp_path):
    """A signal handler's exception can be swallowed by the code it lands in (seen: numpy's lazy
    import of numpy.random, under load, and the phantom run went on to write its output with
    exit 0). The SIGTERM is remembered: the run ends at its next progress line or before its
    output is put in place, with exit 143 and nothing written."""
    import os

    out = tmp_path / "ph"
    code = ("import os, signal, sys\n"
            "import BINDSLib.synthetic.phantoms as ph\n"
            "real = ph.derive_seed\n"
            "def swallowing(*a, **k):\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        for _ in range(1000):\n"
            "            pass\n"
            "    except KeyboardInterrupt:\n"
            "        pass\n"
            "    return real(*a, **k)\n"
            "ph.derive_seed = swallowing\n"
            f"sys.argv = ['binds', 'phantom', '--out', {str(out)!r}, '--cases', '2']\n"
            "from BINDSLib.cli import main\n"
            "sys.exit(main())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().endswith("binds phantom: terminated") and "Traceback" not in done.stderr
    assert not out.exists() and os.listdir(tmp_path) == []


def test_a_full_or_read_only_disk_is_an_output_problem(tmp_path, monkeypatch, capsys):
    import errno

    import SimpleITK as sitk

    import BINDSLib.commands.phantom as phantom
    from BINDSLib.errors import OutputError
    from BINDSLib.io.files import write_image

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ph" / "a.nrrd"))

    monkeypatch.setattr(phantom, "run", full)  # (registered when main builds its parser)
    assert main(["phantom", "--out", str(tmp_path / "ph")]) == 5
    assert f"{tmp_path / 'ph' / 'a.nrrd'}: cannot be written: No space left on device" in capsys.readouterr().err
    # ITK says a failed write in a RuntimeError: an output error naming the file
    with pytest.raises(OutputError, match="cannot be written") as e:
        write_image(sitk.Image(4, 4, sitk.sitkUInt8), tmp_path / "no-such-folder" / "x.nrrd")
    assert "x.nrrd" in str(e.value)



def test_control_characters_from_input_files_reach_the_terminal_escaped(tmp_path, study_dir):
    """A study ID (or any text read from a file) may hold an escape sequence or a line break:
    printed raw it would recolour the terminal or forge a line; it is written escaped."""
    import json
    import shutil
    import subprocess
    import sys

    shutil.copytree(study_dir, tmp_path / "s")
    doc = json.loads((tmp_path / "s" / "study.json").read_text())
    doc["study_id"] = "case\x1b[2J\nPROGRESS 4/4 forged"
    (tmp_path / "s" / "study.json").write_text(json.dumps(doc))
    out = subprocess.run([sys.executable, "-m", "BINDSLib", "diagnose", str(tmp_path / "s"), "--out",
                          str(tmp_path / "o"), "--stage", "1", "--no-summary", "--model", "binds-diagnosis-demo",
                          "--lesion-mask", "nowhere\x1b[31m=x.nrrd"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 3 and "\x1b" not in out.stderr, out.stderr  # the error names the key escaped
    out = subprocess.run([sys.executable, "-m", "BINDSLib", "diagnose", str(tmp_path / "s"), "--out",
                          str(tmp_path / "o"), "--stage", "1", "--no-summary", "--model", "binds-diagnosis-demo"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout + out.stderr and "case\\x1b[2J\\nPROGRESS 4/4 forged: stage 1" in out.stdout
    assert not [ln for ln in out.stderr.splitlines() if ln.startswith("PROGRESS 4/4 forged")]


def test_inspect_takes_role_files_alone_as_convert_does(tmp_path, capsys):
    """binds inspect --role US_L=FILE with no PATH (as convert takes it), and the unknown-role
    hint gives a form that works."""
    import numpy as np
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.full((16, 16), 9, np.uint8)), str(tmp_path / "scan.png"))
    assert main(["inspect", "--role", f"US_L={tmp_path / 'scan.png'}", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [im["role"] for im in doc["studies"][0]["images"]] == ["US_L"]
    assert main(["inspect", str(tmp_path / "scan.png")]) == 3
    assert "give it (e.g. --role US_L=file.png or --role MG_L_CC=file.png)" in capsys.readouterr().err

