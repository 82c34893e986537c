"""One record per run: the run's configuration, what every stage used, and whether its inputs are current.

* ``<work>/config.toml`` -- the run's resolved configuration (every section, every key). The first stage
  that runs in a work directory writes it from ``--config`` + flags + defaults; later stages start from it,
  so ``--work-dir`` alone carries a run's settings from stage to stage. A setting given later for a key no
  earlier stage has used is added to it (logged).
* ``<work>/<stage folder>/record.json`` -- what the stage used: its settings, the fingerprints (SHA-256) of
  the earlier stages' tables it read, of the tables it wrote, stage 01 also of every image (size, mtime,
  SHA-256), package versions, times and ``status`` (``running`` until the stage has finished).

Before a stage runs, :func:`begin` refuses (one ``error:`` line per problem):

* a setting that contradicts what an earlier stage recorded (e.g. ``--width 32`` for stage 07 after
  stage 06 described width 8): drop the setting, or start a fresh run in another ``--work-dir``;
* an earlier stage that is out of date: it did not finish, one of its tables was changed after it wrote
  it, one of its inputs was rewritten after it ran, or the run's configuration changed under it.

A refused command leaves ``config.toml`` as it was: the invocation's settings are stored only after the
checks (stage 07's, of its trained folds, included) have passed.

Stage-internal staleness (stage 03's stacks, stage 07's runs) uses the same fingerprints.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import math
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from raxnet.config import (
    RUN_DEFAULTS,
    SECTIONS,
    STAGE_DIRS,
    RunSettings,
    defaults_of,
    explicit_run_keys,
    load_config,
    validate,
)
from raxnet.errors import ConfigError, StageInputError
from raxnet.io import clean_temp_files, make_dirs, save_json
from raxnet.log import get_logger

log = get_logger(__name__)

CONFIG_FILE = "config.toml"
RECORD_FILE = "record.json"

#: Stages in run order: the earlier stages each one reads, and the settings it uses ("*" = the whole
#: section). Stage 07 trains in parallel jobs, so its records are per run folder (``run.json``).
STAGES: dict[str, dict[str, Any]] = {
    "dataset": {"after": (), "uses": {"dataset": "*"}},
    "split": {"after": ("dataset",), "uses": {"split": "*", "run": ("seed",)}},
    "convert": {"after": ("dataset", "split"), "uses": {"convert": "*"}},
    "folds": {"after": ("dataset", "split"), "uses": {"folds": "*", "run": ("seed",)}},
    "arrays": {"after": ("convert", "folds"),
               "uses": {"arrays": "*", "augment": "*", "model": ("depth",), "run": ("seed",)}},
    "model": {"after": ("dataset",), "uses": {"model": "*"}},
    "train": {"after": ("convert", "folds", "model"),
              "uses": {"train": "*", "model": "*", "arrays": "*", "augment": "*", "run": ("seed",)}},
    "fusion": {"after": ("dataset", "split", "folds"), "uses": {"fusion": "*"}},
}

#: Settings that change how a stage runs, not what it computes: never recorded or refused, and a flag
#: for them applies to one invocation only. ``data_root`` may change: a dataset can move.
RUNTIME: dict[str, frozenset[str]] = {
    "run": frozenset({"work_dir", "data_root", "jobs"}),
    "dataset": frozenset({"dpi"}),
    "arrays": frozenset({"workers", "use_multiprocessing", "max_queue_size", "max_open_stacks"}),
    "train": frozenset({"planes", "folds", "resume", "verbose", "predict_batch_size"}),
    "fusion": frozenset({"batch_size", "evaluate_only", "qc", "save_probabilities"}),
}
_UNRECORDED_SECTIONS = ("synthetic", "predict")


def stage_number(stage: str) -> str:
    return STAGE_DIRS[stage][:2]


def _hint(stage: str) -> str:
    from raxnet.tables import rerun_hint

    return rerun_hint(stage)


# ------------------------------------------------------------------------------------ fingerprints


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_identity(path: str | Path) -> dict[str, Any]:
    """``{size, mtime_ns, sha256}`` of an input file (images: size + mtime are checked first)."""
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}


def same_file(path: str | Path, identity: Mapping[str, Any]) -> bool:
    """True when ``path`` still holds the bytes ``identity`` describes: same size and modification time,
    or (a copied or touched file) the same SHA-256."""
    try:
        st = Path(path).stat()
    except OSError:
        return False
    if st.st_size != identity.get("size"):
        return False
    if st.st_mtime_ns == identity.get("mtime_ns"):
        return True
    return sha256_file(path) == identity.get("sha256")


def versions() -> dict[str, str]:
    """Python and the versions of the packages whose behaviour the outputs depend on."""
    from raxnet import __version__

    out = {"raxnet": __version__, "python": platform.python_version()}
    for dist in ("numpy", "scipy", "pandas", "nibabel", "nilearn", "scikit-learn", "keras", "tensorflow",
                 "tensorflow-cpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


# -------------------------------------------------------------------------------- configuration file


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(cfg: Mapping[str, Mapping[str, Any]], header: str = "") -> str:
    """TOML text of a configuration of flat sections (nested tables are written inline)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for name, values in cfg.items():
        if name.startswith("_"):
            continue
        lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def full_defaults() -> dict[str, dict[str, Any]]:
    """Every section of the configuration with its defaults."""
    return {name: copy.deepcopy(defaults_of(name)) for name in SECTIONS}


def _merge_value(base: Any, given: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(given, Mapping):
        out = copy.deepcopy(dict(base))
        out.update(copy.deepcopy(dict(given)))
        return out
    return copy.deepcopy(given)


def read_run_config(work_dir: str | Path) -> dict[str, dict[str, Any]] | None:
    """The stored configuration of the run in ``work_dir`` (None before any stage has run there)."""
    path = Path(work_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    cfg = load_config(path)
    validate(cfg, str(path))
    stored = full_defaults()
    for name, values in cfg.items():
        if name != "_source":
            for key, value in values.items():
                stored[name][key] = _merge_value(stored[name][key], value)
    return stored


def _write_run_config(work: Path, cfg: Mapping[str, Mapping[str, Any]], stage: str) -> None:
    from raxnet.io import atomic_path

    stored = {name: dict(values) for name, values in cfg.items() if not name.startswith("_")}
    stored["run"] = {k: v for k, v in stored["run"].items() if k != "work_dir"}
    header = (f"The configuration of the run in this work directory, written by stage {stage_number(stage)} "
              f"({_now()}).\nLater stages start from it; each stage's record.json lists what it used. To change "
              "settings that a stage\nhas used, start a fresh run with another --work-dir.")
    with atomic_path(work / CONFIG_FILE, suffix=".toml") as tmp:
        tmp.write_text(dump_toml(stored, header))


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def run_data_root(work_dir: str | Path) -> Path | None:
    """The data root the run in ``work_dir`` reads (its ``config.toml``), or None."""
    stored = read_run_config(work_dir)
    return Path(stored["run"]["data_root"]) if stored is not None else None


# ------------------------------------------------------------------------------------------ records


def used_keys(stage: str, cfg: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The settings ``stage`` uses (runtime settings excepted), with their values in ``cfg``."""
    out: dict[str, dict[str, Any]] = {}
    for name, keys in STAGES[stage]["uses"].items():
        section = cfg[name]
        names = list(section) if keys == "*" else list(keys)
        skip = RUNTIME.get(name, frozenset())
        out[name] = {k: copy.deepcopy(section[k]) for k in names if k not in skip}
    return out


def read_record(work_dir: str | Path, stage: str) -> dict[str, Any] | None:
    """A stage's ``record.json`` (None when the stage has not run, or ran before records existed)."""
    path = Path(work_dir) / STAGE_DIRS[stage] / RECORD_FILE
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StageInputError(f"{path}: unreadable record ({exc}); {_hint(stage)}") from None
    if not isinstance(rec, dict) or rec.get("stage") != stage:
        raise StageInputError(f"{path}: not a stage-{stage_number(stage)} record; {_hint(stage)}")
    return rec


def _closure(stage: str) -> list[str]:
    seen: list[str] = []

    def visit(s: str) -> None:
        for up in STAGES[s]["after"]:
            if up not in seen:
                visit(up)
                seen.append(up)

    visit(stage)
    return seen


def _rel(work: Path, path: str | Path) -> str:
    path = Path(path)
    try:
        return path.resolve().relative_to(work.resolve()).as_posix()
    except ValueError:
        return str(path)


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def check_current(work: Path, stage: str, cfg: Mapping[str, Mapping[str, Any]], *, what: str) -> None:
    """Refuse when the recorded ``stage`` is out of date for the run's configuration ``cfg``."""
    rec = read_record(work, stage)
    if rec is None:
        return
    folder = STAGE_DIRS[stage]
    if rec.get("status") != "done":
        raise StageInputError(f"{work / folder}: stage {stage_number(stage)} did not finish "
                              f"({RECORD_FILE} says {rec.get('status')!r}); {_hint(stage)}")
    now = used_keys(stage, cfg)
    for name, values in rec.get("settings", {}).items():
        for key, value in values.items():
            if name in now and key in now[name] and not _same(now[name][key], value):
                raise StageInputError(
                    f"{work / folder}: stage {stage_number(stage)} ran with [{name}] {key} = {value!r} but the run's "
                    f"configuration ({work / CONFIG_FILE}) now says {now[name][key]!r}; {_hint(stage)} before {what}")
    for rel, digest in rec.get("outputs", {}).items():
        path = work / rel
        if not path.is_file():
            raise StageInputError(f"{path}: missing (written by stage {stage_number(stage)}); {_hint(stage)}")
        if sha256_file(path) != digest:
            raise StageInputError(f"{path}: changed after stage {stage_number(stage)} wrote it; {_hint(stage)} "
                                  "(or start a fresh run in another --work-dir)")
    for rel, digest in rec.get("inputs", {}).items():
        path = work / rel
        if not path.is_file() or sha256_file(path) != digest:
            raise StageInputError(f"{work / folder}: stage {stage_number(stage)} is out of date ({path} was "
                                  f"rewritten after it ran); {_hint(stage)} before {what}")


@dataclass
class StageRun:
    """A stage between :func:`begin` and :meth:`finish`: the effective ``cfg`` and ``run`` to use."""

    stage: str
    work: Path
    cfg: dict[str, dict[str, Any]]
    run: RunSettings
    inputs: dict[str, str] = field(default_factory=dict)
    started: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: ``(section, key)`` the user gave for this invocation (file or flag), as opposed to recorded/defaults.
    explicit: frozenset[tuple[str, str]] = frozenset()
    #: the run configuration to store, its changes and whether it is the first (see :meth:`save_config`)
    _pending: tuple[dict[str, dict[str, Any]], list[str], bool] | None = None

    def save_config(self) -> None:
        """Write this invocation's settings into the run's ``config.toml`` (once; nothing when unchanged)."""
        if self._pending is None:
            return
        to_store, changes, first = self._pending
        self._pending = None
        if first:
            _write_run_config(self.work, to_store, self.stage)
            log.info("%s: the run's configuration (stage %s)", self.work / CONFIG_FILE, stage_number(self.stage))
        elif changes:
            _write_run_config(self.work, to_store, self.stage)
            log.info("%s updated by stage %s: %s", self.work / CONFIG_FILE, stage_number(self.stage),
                     "; ".join(changes))

    @property
    def folder(self) -> Path:
        return self.work / STAGE_DIRS[self.stage]

    def _write(self, status: str, outputs: Mapping[str, str]) -> None:
        rec = {
            "stage": self.stage, "folder": STAGE_DIRS[self.stage], "status": status,
            "started": self.started, "finished": _now() if status == "done" else None,
            "settings": used_keys(self.stage, self.cfg), "inputs": self.inputs, "outputs": dict(outputs),
            "data_root": str(self.run.get("data_root", "")), "versions": versions(), **self.extra,
        }
        save_json(rec, self.folder / RECORD_FILE)

    def finish(self, outputs: Iterable[str | Path] = (), **extra: Any) -> None:
        """Record the finished stage: its settings, inputs, the SHA-256 of ``outputs`` (tables) and ``extra``."""
        self.extra.update(extra)
        digests = {_rel(self.work, p): sha256_file(p) for p in outputs if Path(p).is_file()}
        self._write("done", digests)


def _explicit(cfg: Mapping[str, Any], run: Mapping[str, Any]) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    for name, values in cfg.items():
        if name.startswith("_") or name == "run" or not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            out[(name, key)] = value
    for key in explicit_run_keys(run):
        if key in RUN_DEFAULTS:
            out[("run", key)] = run[key]
    return out


def begin(stage: str, cfg: Mapping[str, Any], run: Mapping[str, Any], *, defer_config: bool = False) -> StageRun:
    """Start ``stage`` in ``run['work_dir']``: settle the run's configuration, refuse contradictions and
    out-of-date earlier stages, clean stale temporary files, mark the stage as running.

    ``cfg`` holds what the user gave (sections without defaults merged in, as :func:`raxnet.config.with_flags`
    builds them; an in-process caller's full sections count as given); ``run`` likewise (see
    :class:`raxnet.config.RunSettings`). Returns the effective configuration and ``[run]`` settings.

    The run's ``config.toml`` takes this invocation's settings only once every check has passed, so that a
    refused command leaves the run as it was; ``defer_config`` leaves that to the stage
    (:meth:`StageRun.save_config`), for stages with checks of their own (stage 07's checkpoints).
    """
    if stage not in STAGES:
        raise KeyError(stage)
    validate(cfg)
    work = make_dirs(Path(run["work_dir"]))
    stored = read_run_config(work)
    explicit = _explicit(cfg, run)
    base = stored if stored is not None else full_defaults()
    if stored is None:
        base["run"].update({k: v for k, v in run.items() if k in RUN_DEFAULTS})
    effective = copy.deepcopy(base)
    for (name, key), value in explicit.items():
        effective[name][key] = _merge_value(effective[name][key], value)

    # A setting may not contradict what an earlier stage recorded.
    order = list(STAGE_DIRS)
    problems = []
    for earlier in order[: order.index(stage)]:
        if earlier not in STAGES:
            continue
        rec = read_record(work, earlier)
        if rec is None:
            continue
        for name, values in rec.get("settings", {}).items():
            for key, value in values.items():
                if (name, key) in explicit and not _same(effective[name][key], value):
                    problems.append(
                        f"[{name}] {key} = {effective[name][key]!r} contradicts {value!r}, which stage "
                        f"{stage_number(earlier)} used ({work / STAGE_DIRS[earlier] / RECORD_FILE}); drop the "
                        f"setting to keep the run's value, or start a fresh run with another --work-dir")
    if problems:
        raise ConfigError(problems)

    # The run's configuration: written by the first stage, completed by later ones (runtime flags excepted).
    to_store = copy.deepcopy(base)
    changes = []
    for (name, key), value in explicit.items():
        if key in RUNTIME.get(name, frozenset()) and stored is not None and not (name == "run" and key == "data_root"):
            continue
        new = effective[name][key]
        if name == "run" and key == "data_root":
            new = str(Path(new).resolve())
        if not _same(to_store[name][key], new):
            changes.append(f"[{name}] {key}: {to_store[name][key]!r} -> {new!r}")
            to_store[name][key] = new
    if stored is None:
        to_store["run"]["data_root"] = str(Path(to_store["run"]["data_root"]).resolve())
    pending = (to_store, changes, stored is None)

    # Earlier stages must be current: finished, tables untouched, inputs not rewritten since.
    inputs: dict[str, str] = {}
    for up in _closure(stage):
        check_current(work, up, effective, what=f"stage {stage_number(stage)}")
    for up in STAGES[stage]["after"]:
        rec = read_record(work, up)
        if rec is not None:
            inputs.update(rec.get("outputs", {}))
        elif (work / STAGE_DIRS[up]).is_dir():
            log.warning("%s has no %s (made by hand or by an older version): its provenance is not checked",
                        work / STAGE_DIRS[up], RECORD_FILE)

    run_out = RunSettings({**effective["run"], "work_dir": str(run["work_dir"])}, explicit_run_keys(run))
    if "jobs" in run:
        run_out["jobs"] = run["jobs"]
    st = StageRun(stage, work, effective, run_out, inputs, _now(), explicit=frozenset(explicit), _pending=pending)
    if not defer_config:
        st.save_config()
    if stage != "train":  # stage 07 runs as parallel jobs: records and clean-up per run folder
        removed = clean_temp_files(st.folder)
        if removed:
            log.info("removed %d stale temporary file(s) under %s", len(removed), st.folder)
        make_dirs(st.folder)
        st._write("running", {})
    return st


# ------------------------------------------------------------------------------------------- images


def check_images(work: str | Path, data_root: str | Path, subjects: Iterable[str],
                 what: str) -> dict[str, dict[str, Any]]:
    """Check the images of ``subjects`` under ``data_root`` against what stage 01 recorded; returns the
    recorded ``{subject: {"t1": identity, "mask": identity}}`` (empty when stage 01 has no record).

    A missing data root, or an image that is missing or changed since stage 01 read it, is refused.
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise StageInputError(f"{data_root}: data root not found (--data-root: the folder that contains Training/)")
    rec = read_record(work, "dataset")
    if rec is None:
        return {}
    images = rec.get("images", {})
    for subject in subjects:
        for kind, ident in images.get(subject, {}).items():
            path = data_root / ident["path"]
            if not path.is_file():
                raise StageInputError(f"{path}: not found under the data root ({data_root}); pass the --data-root "
                                      "that holds the dataset stage 01 read")
            if not same_file(path, ident):
                raise StageInputError(f"{path}: changed since stage 01 read it; {_hint('dataset')} on this dataset "
                                      f"before {what}, or start a fresh run with another --work-dir")
    return images
