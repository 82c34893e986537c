"""Run configuration: one TOML file per run (``configs/``), command-line flags override it.

Every module that needs settings declares its own ``DEFAULTS`` dict and reads its section with
:func:`section`, so a configuration file only lists what differs from the defaults and a typo in a key
is an error instead of being silently ignored.
"""

from __future__ import annotations

import copy
import importlib
import math
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


#: Section -> ``"module:attribute"`` of the defaults that declare its keys and their types. Modules are
#: imported only to check a configuration; none of them imports TensorFlow at module level.
SECTIONS: dict[str, str] = {
    "run": "raxnet.config:RUN_DEFAULTS",
    "synthetic": "raxnet.synthetic:DEFAULTS",
    "dataset": "raxnet.dataset_info:DEFAULTS",
    "split": "raxnet.splitting:DEFAULTS",
    "convert": "raxnet.slices:DEFAULTS",
    "folds": "raxnet.folds:DEFAULTS",
    "arrays": "raxnet.batches:DEFAULTS",
    "augment": "raxnet.augment:DEFAULTS",
    "model": "raxnet.models:DEFAULTS",
    "train": "raxnet.training:DEFAULTS",
    "fusion": "raxnet.fusion:DEFAULTS",
    "predict": "raxnet.predict:DEFAULTS",
}

#: Settings that accept more than the type of their default (e.g. ``folds = 1`` or ``folds = [1, 3]``).
_ALSO_ACCEPTED: dict[tuple[str, str], tuple[type, ...]] = {
    ("train", "folds"): (int, list),
    ("train", "planes"): (list,),
    ("train", "model"): (list,),
    ("train", "loss"): (list,),
    ("convert", "planes"): (list,),
    ("predict", "bias_correct"): (bool,),  # "" = the weight set's
}
#: Settings naming planes: "all", a comma list or a list of axial / sagittal / coronal.
_PLANE_SETTINGS = {("train", "planes"), ("convert", "planes")}


def defaults_of(name: str) -> dict[str, Any]:
    """The defaults dict of configuration section ``name`` (see :data:`SECTIONS`)."""
    module, attr = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def _type_name(types: tuple[type, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a table"}
    if float in types:  # "a number" covers the integers
        types = tuple(t for t in types if t is not int)
    return " or ".join(names.get(t, t.__name__) for t in types)


def _accepted(default: Any, where: tuple[str, str]) -> tuple[type, ...]:
    if isinstance(default, bool):
        base: tuple[type, ...] = (bool,)
    elif isinstance(default, int):
        base = (int,)
    elif isinstance(default, float):
        base = (float, int)
    elif isinstance(default, str):
        base = (str,)
    elif isinstance(default, (list, tuple)):
        base = (list,)
    elif isinstance(default, Mapping):
        base = (dict,)
    else:  # None: any value
        return ()
    return base + _ALSO_ACCEPTED.get(where, ())


def _is(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # TOML true is not the integer 1
        return bool in types
    return isinstance(value, types)


def check_value(section_name: str, key: str, value: Any, default: Any) -> list[str]:
    """Problems (one line each) of ``value`` for setting ``[section_name] key`` whose default is ``default``."""
    where = f"[{section_name}] {key}"
    types = _accepted(default, (section_name, key))
    if types and not _is(value, types):
        return [f"{where} = {value!r}: expected {_type_name(types)} (default {default!r})"]
    problems: list[str] = []
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{where} = {value!r}: expected a finite number")
    if isinstance(default, (list, tuple)) and default and isinstance(value, list):
        inner = _accepted(default[0], ("", ""))
        if inner == (int,):  # lists of numbers (bin edges) may hold floats
            inner = (int, float)
        bad = [v for v in value if inner and not _is(v, inner)]
        if bad:
            problems.append(f"{where}: element {bad[0]!r} is not {_type_name(inner)}")
    if isinstance(default, Mapping) and isinstance(value, Mapping):
        for sub, v in value.items():
            if sub not in default:
                problems.append(f"{where}: unknown key '{sub}' (known: {', '.join(sorted(default))})")
            else:
                problems += check_value(section_name, f"{key}.{sub}", v, default[sub])
    if (section_name, key) in _PLANE_SETTINGS and _is(value, (str, list)):
        from raxnet.planes import PLANES

        names = value.split(",") if isinstance(value, str) else value
        bad = [str(p).strip() for p in names if str(p).strip() not in PLANES]
        if bad and value != "all":
            problems.append(f"{where} = {value!r}: expected 'all' or planes of {', '.join(PLANES)}")
    return problems


def validate(cfg: Mapping[str, Any], source: str | None = None) -> None:
    """Check a whole configuration: every section and key known, every value of the right type.

    Raises :class:`ConfigError` listing every problem, one per line, prefixed by the file name.
    """
    source = source or str(cfg.get("_source", "configuration"))
    problems: list[str] = []
    for name, given in cfg.items():
        if name == "_source":
            continue
        if name not in SECTIONS:
            problems.append(f"unknown section [{name}] (known: {', '.join(SECTIONS)})")
            continue
        if not isinstance(given, Mapping):
            problems.append(f"[{name}] must be a table of settings, got {given!r}")
            continue
        defaults = defaults_of(name)
        for key, value in given.items():
            if key not in defaults:
                problems.append(f"unknown setting [{name}] {key} (known: {', '.join(sorted(defaults))})")
            else:
                problems += check_value(name, key, value, defaults[key])
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])


class RunSettings(dict):
    """The ``[run]`` settings of one invocation; ``explicit`` names the keys the user gave (file or flag).

    A plain dict passed by an in-process caller counts as all-explicit (see :mod:`raxnet.record`).
    """

    def __init__(self, values: Mapping[str, Any], explicit: set[str] | frozenset[str] = frozenset()) -> None:
        super().__init__(values)
        self.explicit = frozenset(explicit)


def explicit_run_keys(run: Mapping[str, Any]) -> frozenset[str]:
    """Keys of ``run`` the user gave: all of them unless ``run`` is a :class:`RunSettings`."""
    return run.explicit if isinstance(run, RunSettings) else frozenset(run)


def with_flags(cfg: Mapping[str, Any], name: str, **flags: Any) -> dict[str, Any]:
    """``cfg`` with the non-``None`` ``flags`` set in section ``name`` (defaults are *not* merged in, so
    what the user gave stays distinguishable from defaults and from what earlier stages recorded)."""
    out = dict(cfg)
    given = dict(out.get(name) or {})
    defaults = defaults_of(name)
    for key, value in flags.items():
        if value is None:
            continue
        if key not in defaults:
            raise ConfigError(f"unknown setting '{name}.{key}'")
        given[key] = value
    out[name] = given
    return out


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
