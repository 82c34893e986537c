"""raxnet.cli and the stage scripts: ``--help`` answers without TensorFlow, names the defaults."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from raxnet.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(str(p.relative_to(REPO)) for p in REPO.glob("0[1-8]_*/*.py"))

# One interpreter for every --help: TensorFlow and Keras are made unimportable first, so any import of
# them (at module level or while building a parser) fails the run.
HELP_ALL = """
import contextlib, io, json, runpy, sys
sys.modules["tensorflow"] = None
sys.modules["keras"] = None
from raxnet.cli import main as raxnet_main
out = {}
def capture(key, fn):
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            fn()
        code = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:
        code, buf = repr(exc), io.StringIO(repr(exc))
    out[key] = [code, buf.getvalue()]
for name in json.loads(sys.argv[1]):
    capture(name, lambda: raxnet_main([name, "--help"]))
for script in json.loads(sys.argv[2]):
    sys.argv = [script, "--help"]
    capture(script, lambda: runpy.run_path(script, run_name="__main__"))
print(json.dumps(out))
"""


def test_help_of_every_stage_without_tensorflow():
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HELP_ALL), json.dumps(list(COMMANDS)), json.dumps(SCRIPTS)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out) == set(COMMANDS) | set(SCRIPTS) and len(SCRIPTS) >= 9
    for key, (code, text) in out.items():
        assert code == 0, f"{key}: {code} {text[-500:]}"
        assert text.startswith("usage:"), key
    for name in ("dataset", "split", "convert", "folds", "arrays", "model", "train", "fuse", "demo", "report"):
        text = " ".join(out[name][1].split())
        assert f"usage: raxnet {name}" in text, name
        assert "else work/default)" in text and "-v, --verbose" in text, name  # the default work dir is named
    assert "else data/ATLAS_2)" in " ".join(out["dataset"][1].split())
    assert "TensorFlow" not in res.stderr and "oneDNN" not in res.stderr
