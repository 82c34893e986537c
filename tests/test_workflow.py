"""The Snakemake workflow (workflow/Snakefile): the plan it builds, a dry run, the SLURM profile and a
tiny real run of every rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY_TOML

from raxnet.errors import ConfigError
from raxnet.workflow import plan

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"


def _snakemake(tmp_path: Path, config: Path, work: Path, data: Path, *extra: str, gpus: int = 1,
               timeout: int = 600):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(tmp_path), "--cores", "2",
           *extra, "--config", f"raxnet_config={config}", f"work_dir={work}", f"data_root={data}",
           "training_threads=1", f"gpus_per_training={gpus}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_plan_resolves_planes_folds_and_run_name(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[folds]\nn_folds = 3\n[train]\nfolds = "all"\nplanes = "coronal,axial"\nloss = "dice"\n')
    p = plan(config, tmp_path / "w", tmp_path / "d")
    assert p.planes == ("axial", "coronal") and p.folds == (1, 2, 3) and p.run_name == "raxnet-dice"
    assert p.trainings()[0] == ("axial", 1) and len(p.trainings()) == 6
    assert p.work_dir == str(tmp_path / "w") and p.data_root == str(tmp_path / "d")
    config.write_text('[folds]\nn_folds = 3\n[train]\nfolds = "4"\n')
    with pytest.raises(ConfigError, match="folds are 1..3"):
        plan(config, tmp_path / "w")
    config.write_text('[train]\nmodel = "raxnet,unet"\n')
    with pytest.raises(ConfigError, match="one model with one loss"):
        plan(config, tmp_path / "w")


def test_dry_run_lists_every_stage_and_one_training_per_plane_and_fold(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(TINY_TOML.replace('folds = "1"', 'folds = "all"'))  # n_folds = 3: 3 planes x 3 folds
    res = _snakemake(tmp_path, config, tmp_path / "work", tmp_path / "data", "--dry-run", timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = {}
    for line in res.stdout.rsplit("Job stats:", 1)[1].splitlines()[3:]:  # the "job  count" table
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    assert counts == {"all": 1, "arrays": 1, "convert": 1, "dataset": 1, "folds": 1, "fuse": 1, "model": 1,
                      "split": 1, "train": 9, "total": 17}
    assert "07_train/raxnet/sagittal/fold_3/run.json" in res.stdout
    assert "gpu=1" in res.stdout  # every training job declares its GPU


def test_slurm_profile_is_valid_for_the_workflow(tmp_path):
    """The documented cluster profile names real rules and is accepted by Snakemake (dry run; the SLURM
    executor itself is replaced by the local one, as no cluster is reachable here)."""
    profile = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"
    spec = yaml.safe_load(profile.read_text())
    assert spec["executor"] == "slurm" and spec["set-resources"]["train"]["slurm_partition"]
    rules = {line.split()[1].rstrip(":") for line in SNAKEFILE.read_text().splitlines() if line.startswith("rule ")}
    assert set(spec["set-resources"]) <= rules and set(spec["set-threads"]) <= rules
    config = tmp_path / "c.toml"
    config.write_text(TINY_TOML)
    res = _snakemake(tmp_path, config, tmp_path / "work", tmp_path / "data", "--dry-run", "--profile",
                     str(profile.parent), "--executor", "local", timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    # The profile's training resources reach the training jobs (string resources print as <TBD> here).
    train = [line for line in res.stdout.splitlines() if "gpu=1" in line]
    assert len(train) == 3 and all("mem_mb=32000" in line and "runtime=180" in line for line in train)


@pytest.mark.slow
def test_tiny_real_run_is_one_consistent_run(tiny_atlas, tmp_path):
    """Every rule for real on the tiny configuration (one plane, fold 1): the run's records agree."""
    import json

    config = tmp_path / "tiny.toml"
    # TINY_TOML ends with its [fusion] table: these keys extend it
    config.write_text(TINY_TOML.replace("[train]\n", '[train]\nplanes = "axial"\n')
                      + 'methods = ["axial"]\nselect = false\nqc = false\n')
    work = tmp_path / "work"
    # The fusion target: the stage-05 report (rule arrays) is not needed by it.
    res = _snakemake(tmp_path, config, work, tiny_atlas, str(work / "08_fusion" / "summary.csv"), gpus=0)
    assert res.returncode == 0, res.stderr[-4000:]
    summary = pd.read_csv(work / "08_fusion" / "summary.csv")
    assert set(summary["method"]) == {"axial"} and (summary.loc[summary["set"] == "holdout", "n"] == 2).all()
    info = json.loads((work / "07_train" / "raxnet" / "axial" / "fold_1" / "run.json").read_text())
    models = pd.read_csv(work / "06_model" / "models.csv").set_index(["model", "plane"])
    assert info["params"] == models.loc[("raxnet", "axial"), "params"] and info["config"]["model"]["width"] == 4
    for folder in ("01_dataset", "02_data_splitting", "03_moving_converting", "04_cross_validation", "06_model",
                   "08_fusion"):
        assert json.loads((work / folder / "record.json").read_text())["status"] == "done", folder
    again = _snakemake(tmp_path, config, work, tiny_atlas, str(work / "08_fusion" / "summary.csv"), "--dry-run",
                       gpus=0)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
