"""What the Snakemake workflow (``workflow/Snakefile``) runs: the (plane, fold) trainings and the files
each stage leaves, resolved from the run's configuration exactly as the stages resolve it.

The Snakefile stays a thin list of rules that call the numbered stage scripts; this module decides which
planes and folds the configuration asks for, the stage-07 run name, and the marker files of each stage.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raxnet.config import RUN_DEFAULTS, load_config, validate
from raxnet.errors import ConfigError
from raxnet.planes import PLANES, parse_planes
from raxnet.record import full_defaults, read_run_config


@dataclass(frozen=True)
class WorkflowPlan:
    """The trainings and paths of one run."""

    config_file: str
    work_dir: str
    data_root: str
    planes: tuple[str, ...]
    folds: tuple[int, ...]
    models: tuple[str, ...]
    run_name: str

    def trainings(self) -> list[tuple[str, int]]:
        """One (plane, fold) per stage-07 job."""
        return [(p, f) for p in self.planes for f in self.folds]


def _folds(value: Any, n_folds: int) -> tuple[int, ...]:
    available = list(range(1, int(n_folds) + 1))
    if isinstance(value, str) and value.strip() == "all":
        return tuple(available)
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    try:
        folds = tuple(dict.fromkeys(int(str(v).strip()) for v in items if str(v).strip()))
    except ValueError:
        raise ConfigError(f"[train] folds = {value!r}: expected 'all' or fold numbers") from None
    bad = [f for f in folds if f not in available]
    if bad or not folds:
        raise ConfigError(f"[train] folds = {value!r}: folds are 1..{n_folds} ([folds] n_folds)")
    return folds


def plan(config_file: str | Path, work_dir: str | Path | None = None, data_root: str | Path | None = None) -> WorkflowPlan:
    """The run ``config_file`` describes (``work_dir``/``data_root`` override its ``[run]``); once a stage
    has run, the work dir's ``config.toml`` is the base, as for the stages themselves."""
    from raxnet.runs import run_name
    from raxnet.training import split_names  # names only: the stages check them (without Keras here)

    given = load_config(config_file)
    validate(given)
    run = {**RUN_DEFAULTS, **given.get("run", {})}
    work = Path(work_dir or run["work_dir"])
    cfg = read_run_config(work) or full_defaults()
    cfg = copy.deepcopy(cfg)
    for name, values in given.items():
        if name != "_source":
            cfg[name].update(values)
    planes = tuple(parse_planes(cfg["train"]["planes"]))
    folds = _folds(cfg["train"]["folds"], cfg["folds"]["n_folds"])
    models = split_names(cfg["train"]["model"]) or [cfg["model"]["name"]]
    losses = split_names(cfg["train"]["loss"])
    if len(models) * len(losses) > 1:
        raise ConfigError("the workflow trains one model with one loss ([train] model, loss); run compare mode "
                          "with 07_train/train.py directly")
    return WorkflowPlan(
        config_file=str(config_file), work_dir=str(work), data_root=str(data_root or cfg["run"]["data_root"]),
        planes=tuple(p for p in PLANES if p in planes), folds=folds, models=tuple(models),
        run_name=run_name(models[0], losses[0]),
    )
