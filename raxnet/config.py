"""Run configuration: one TOML file per run (``configs/``), command-line flags override it.

Every module that needs settings declares its own ``DEFAULTS`` dict and reads its section with
:func:`section`, so a configuration file only lists what differs from the defaults and a typo in a key
is an error instead of being silently ignored.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any, Mapping

from raxnet.errors import ConfigError

#: Stage key -> the folder the stage writes under ``<work-dir>/`` (same names as the source folders).
STAGE_DIRS: dict[str, str] = {
    "dataset": "01_dataset",
    "split": "02_data_splitting",
    "convert": "03_moving_converting",
    "folds": "04_cross_validation",
    "arrays": "05_prepare_arrays",
    "model": "06_model",
    "train": "07_train",
    "fusion": "08_fusion",
    "predict": "09_predict",
}

#: Settings shared by all stages (section ``[run]``).
RUN_DEFAULTS: dict[str, Any] = {
    "data_root": "data/ATLAS_2",
    "work_dir": "work/default",
    "seed": 42,
    "jobs": 1,
}


def load_config(path: str | Path | None) -> dict[str, Any]:
    """Read a TOML configuration file (``None`` gives an empty configuration = all defaults)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        with path.open("rb") as fh:
            cfg = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    cfg.setdefault("_source", str(path))
    return cfg


def _merge(defaults: Mapping[str, Any], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(dict(defaults))
    for key, value in given.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise ConfigError(f"unknown setting '{where}.{key}' (known: {known})")
        if isinstance(defaults[key], Mapping) and isinstance(value, Mapping):
            out[key] = _merge(defaults[key], value, f"{where}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def section(cfg: Mapping[str, Any], name: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Return section ``name`` of ``cfg`` merged over ``defaults``; unknown keys raise ConfigError."""
    given = cfg.get(name, {})
    if not isinstance(given, Mapping):
        raise ConfigError(f"[{name}] must be a table in the configuration file")
    return _merge(defaults, given, name)


def override(values: dict[str, Any], **flags: Any) -> dict[str, Any]:
    """Apply command-line flags over a merged section: flags that are ``None`` are left alone."""
    for key, value in flags.items():
        if value is not None:
            if key not in values:
                raise ConfigError(f"unknown setting '{key}'")
            values[key] = value
    return values


def stage_dir(work_dir: str | Path, stage: str, create: bool = False) -> Path:
    """``<work-dir>/<stage folder>``; ``stage`` is a key of :data:`STAGE_DIRS`."""
    if stage not in STAGE_DIRS:
        raise KeyError(f"unknown stage {stage!r}")
    path = Path(work_dir) / STAGE_DIRS[stage]
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
