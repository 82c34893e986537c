"""raxnet.log: per-stage log files, the quiet TensorFlow import, progress bars off a terminal."""

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raxnet.log import LOG_NAME, get_logger, progress, setup_console, stage_log

log = get_logger("raxnet.test_log")


def test_stage_log_writes_plain_timestamped_lines(tmp_path):
    folder = tmp_path / "02_data_splitting"
    with stage_log(folder, "02_data_splitting") as path:
        log.info("colour \x1b[31mred\x1b[0m and a bar\r 50%|#####     |")
        log.warning("second line")
    log.info("after the stage: not in the file")
    text = (folder / LOG_NAME).read_text()
    assert path == folder / LOG_NAME
    lines = text.splitlines()
    assert "02_data_splitting started" in lines[0] and lines[-1].endswith("=== 02_data_splitting finished")
    assert "\x1b" not in text and "\r" not in text
    assert "colour red and a bar 50%|#####     |" in text and "WARNING" in text and "second line" in text
    assert "after the stage" not in text
    assert lines[1][:4].isdigit() and lines[1][10] == " "  # 2026-01-01 12:00:00 ...
    with stage_log(folder, "02_data_splitting"):  # a second run appends
        log.info("run two")
    text = (folder / LOG_NAME).read_text()
    assert text.count("started") == 2 and "run two" in text
    assert not any(isinstance(h, logging.FileHandler) for h in logging.getLogger("raxnet").handlers)


def test_failed_stage_without_outputs_leaves_no_folder(tmp_path):
    folder = tmp_path / "work" / "06_model"
    with pytest.raises(RuntimeError, match="no grid"):
        with stage_log(folder, "06_model"):
            (folder / "sub").mkdir()  # empty sub-folders are not outputs
            log.info("about to fail")
            raise RuntimeError("no grid")
    assert not folder.exists()


def test_failed_stage_with_outputs_keeps_its_log(tmp_path):
    folder = tmp_path / "07_train"
    with pytest.raises(KeyboardInterrupt):
        with stage_log(folder, "07_train"):
            (folder / "history.csv").write_text("epoch\n1\n")
            raise KeyboardInterrupt
    text = (folder / LOG_NAME).read_text()
    assert "ERROR" in text and "07_train failed: KeyboardInterrupt" in text
    folder2 = tmp_path / "08_fusion"
    folder2.mkdir()  # existed before: kept, with the failure in its log
    with pytest.raises(ValueError):
        with stage_log(folder2, "08_fusion"):
            raise ValueError("bad")
    assert "08_fusion failed: bad" in (folder2 / LOG_NAME).read_text()


def test_progress_is_off_when_not_on_a_terminal(capsys):
    bar = progress(range(3), desc="x", file=sys.stderr)  # pytest's captured stderr is no TTY
    assert bar.disable and list(bar) == [0, 1, 2]
    assert not progress(range(3), disable=False).disable  # an explicit choice wins


def test_setup_console_levels():
    setup_console(verbose=True)
    assert get_logger("raxnet").level == logging.DEBUG and logging.getLogger("tensorflow").level == logging.NOTSET
    setup_console(verbose=False)
    assert get_logger("raxnet").level == logging.INFO and logging.getLogger("tensorflow").level == logging.ERROR


FAKE_TF = """
import os
os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on\\n")
if os.environ.get("FAKE_TF_FAIL"):
    raise ImportError("libcudart.so: cannot open shared object file")
VALUE = 42
"""

RUNNER = """
import sys
from raxnet.log import setup_console
setup_console(verbose="-v" in sys.argv)
import tensorflow
print("imported", tensorflow.VALUE, tensorflow.__loader__.__class__.__name__)
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_tensorflow_banner_hidden_unless_verbose(tmp_path, verbose):
    """What TensorFlow's C++ runtime writes to fd 2 on import is dropped (shown with -v, or if the import fails)."""
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(textwrap.dedent(FAKE_TF))
    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": f"{tmp_path}:{repo}", "PATH": "/usr/bin:/bin"}
    args = [sys.executable, "-c", RUNNER] + (["-v"] if verbose else [])
    res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "imported 42" in res.stdout and "_QuietLoader" not in res.stdout
    assert ("oneDNN" in res.stderr) == verbose
    failed = subprocess.run(args[:3], capture_output=True, text=True, env={**env, "FAKE_TF_FAIL": "1"}, timeout=60)
    assert failed.returncode == 1 and "oneDNN" in failed.stderr and "libcudart" in failed.stderr


def test_command_line_names_the_command(monkeypatch):
    from raxnet.log import command_line

    monkeypatch.setattr(sys, "argv", ["/x/raxnet/__main__.py", "split", "--work-dir", "w"])
    assert command_line() == "raxnet split --work-dir w"
    monkeypatch.setattr(sys, "argv", ["/repo/02_data_splitting/split_subjects.py", "--seed", "3"])
    assert command_line() == "split_subjects.py --seed 3"
