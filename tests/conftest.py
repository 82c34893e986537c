"""Test-wide settings: quiet TensorFlow, CPU only, TensorFlow backend unless told otherwise."""

import logging
import os
from contextlib import contextmanager
from typing import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

#: The tiny run configuration of the end-to-end tests (`raxnet demo`, the stage chain, the Snakemake run):
#: a 2 mm synthetic ATLAS of 8 subjects, tiny networks, one epoch of two steps, fold 1 only.
TINY_TOML = """
[run]
seed = 3
jobs = 1
[synthetic]
subjects = 8
spacing = 2
sites = 2
[split]
holdout_fraction = 0.25
[folds]
n_folds = 3
[model]
width = 4
depth = 2
[arrays]
batch_size = 4
steps_per_epoch = 2
[train]
epochs = 1
folds = "1"
[fusion]
min_size = 5
"""


def write_synthetic(root, subjects: int = 8, seed: int = 1):
    """A synthetic ATLAS (2 mm, 2 sites) under ``root``; returns its ground-truth table."""
    from raxnet.synthetic import generate_dataset

    return generate_dataset(root, subjects, seed, spacing=2, n_sites=2)


@pytest.fixture(scope="session")
def tiny_atlas(tmp_path_factory):
    """Eight synthetic 2 mm subjects (seed 1), written once per session: do not modify, copy it."""
    root = tmp_path_factory.mktemp("tiny_atlas") / "ATLAS_2"
    write_synthetic(root)
    return root


@pytest.fixture
def tiny_config(tmp_path):
    """``tiny.toml`` (:data:`TINY_TOML`) in the test's folder."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


def run_stage(main, argv, capsys):
    """Run a stage CLI in-process as ``run_cli`` would: ``(exit code, stdout, error lines)``."""
    from raxnet.cli_common import run_cli

    capsys.readouterr()
    try:
        run_cli(main, [str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]


@contextmanager
def log_records(name: str, level: int = logging.WARNING) -> Iterator[list[logging.LogRecord]]:
    """The log records of logger ``name`` at ``level`` or above, collected while the block runs (the raxnet
    logger does not propagate to pytest's caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level)
    handler.emit = records.append
    logger = logging.getLogger(name)
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, old or level))
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
