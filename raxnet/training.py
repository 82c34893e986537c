"""Stage 07 — train one 2D model per plane and outer validation fold, evaluate it, compare rivals.

For every (plane, fold k) the model is trained on the stage-05 sets of the subjects outside fold k
(balanced lesion / normal batches), with early stopping, learning-rate schedule and best checkpoint
chosen on the INNER validation subjects (~10 % of the training subjects) — fold k itself is never
looked at during training. Fold k is then used once, for the outer metrics:

* ``lesion_slice_dice`` — mean per-slice Dice over the fold's slices that contain lesion;
* ``all_slice_dice`` — mean per-slice Dice over all of the fold's validation slices (lesion + normal),
  an empty prediction on an empty slice counting as 1 (the original RAX-Net's figure);
* ``dice_3d`` — per subject, every slice of the volume predicted with
  :func:`raxnet.inference.predict_plane`, restacked, thresholded and compared in 3D.

Run folders are ``<work>/07_train/<run name>/<plane>/fold_<k>/`` where the run name is the model name
for the default loss (``tversky_focal``) and ``<model>-<loss>`` for any other loss (see :func:`raxnet.runs.run_name`, which owns the layout).
Each holds ``model.keras`` (the best model, uncompiled: loads with plain ``keras.saving.load_model``),
``history.csv``, ``metrics.csv`` (one summary row), ``subject_dice.csv`` (one row per validation
subject), ``run.json`` and the resume checkpoint: ``last_e<NNNN>.keras`` (model + optimizer after epoch
N), ``best_e<NNNN>.weights.h5`` (the best inner-validation epoch so far) and ``state.json``, which names
them and is written last: an epoch is committed only when ``state.json`` points at its files, so a run
killed at any moment resumes from a consistent checkpoint (files it does not name, and stale temporary
files, are removed when the run starts). An interrupted run continues from its checkpoint; a finished
run (epoch budget reached or stopped early) is skipped unless ``force``; asking for more epochs continues
a finished run. A checkpoint or finished run made with other settings or from other stage-03/04 tables
is refused (``--force`` retrains it).

``epochs = 0`` with ``init_weights`` adopts a weight set's networks untrained: each fold's model is that
set's plane model, evaluated on the fold as above (its inner-validation loss recorded as ``best_val_loss``)
and marked ``"adopted": true`` in ``run.json``, so that stage 08 can choose post-processing for existing
networks on this run's out-of-fold subjects (:func:`check_adoptable` refuses subjects they trained on).

Settings come from the run's configuration (:mod:`raxnet.record`): the model is the one stage 06
described, and a flag that contradicts what an earlier stage used is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from raxnet import record
from raxnet.cli_common import resolve, stage_parser
from raxnet.config import section, stage_dir, with_flags
from raxnet.errors import ConfigError, InputError, RaxnetError, StageInputError
from raxnet.io import atomic_path, clean_temp_files, make_dirs, save_csv, save_figure, save_json
from raxnet.log import get_logger, progress
from raxnet.planes import channels_for, from_slices, parse_planes
from raxnet.runs import DEFAULT_LOSS, read_subject_folds, run_dir, run_name
from raxnet.stage import stage_run

log = get_logger(__name__)

#: Section ``[train]``.
DEFAULTS: dict[str, Any] = {
    "model": "raxnet",  # model(s) to train, comma-separated for compare mode (raxnet.models.MODEL_NAMES)
    "loss": DEFAULT_LOSS,  # loss(es), comma-separated for compare mode (raxnet.losses.LOSS_NAMES)
    "epochs": 60,  # maximum epochs (early stopping usually ends sooner); 0 adopts the init_weights networks
    # as they are, untrained: stage 08 then fuses them and chooses their post-processing on this run's
    # out-of-fold subjects
    "validation_steps": 0,  # inner-validation batches per epoch; 0 = all
    "optimizer": "adamw",  # adam | adamw
    "learning_rate": 1e-3,  # initial learning rate
    "weight_decay": 1e-4,  # AdamW decoupled weight decay (ignored by adam)
    "clipnorm": 1.0,  # gradient norm clipping; 0 = off
    "schedule": "cosine",  # cosine (warm-up, then cosine decay to min_lr over the step budget) | plateau | constant
    "warmup_fraction": 0.05,  # cosine: share of the step budget spent warming up linearly from lr/10
    "bn_recalibration_batches": 32,  # before every inner validation, re-estimate batch-norm statistics on
    # this many un-augmented training batches (precise BN); 0 = Keras' moving averages only
    "lr_factor": 0.5,  # plateau: multiply the learning rate by this ...
    "lr_patience": 4,  # ... after this many epochs without inner val-loss improvement
    "min_lr": 1e-6,  # plateau floor / cosine final learning rate
    "patience": 10,  # early stopping: epochs without inner val-loss improvement
    "min_delta": 1e-4,  # smallest val-loss decrease that counts as an improvement
    "restore_best": True,  # model.keras = best inner-val epoch (False: last epoch)
    "planes": "all",  # all | axial,sagittal,coronal
    "folds": "all",  # all | 1 | 1,3 (outer validation folds from stage 04)
    "mixed_precision": False,  # mixed_float16 policy (GPU)
    "xla": False,  # jit_compile=True (GPU); False leaves Keras' default
    "deterministic": True,  # tf.config.experimental.enable_op_determinism (reproducible re-runs)
    "predict_batch_size": 32,  # slices per batch for the outer-fold prediction
    "threshold": 0.5,  # probability >= threshold = lesion (outer metrics; raxnet.postprocess.binarise)
    "resume": True,  # continue an interrupted run from its last checkpoint
    "init_weights": "",  # weight set folder (raxnet export-weights) to start each plane from: fine-tuning; "" = random
    "verbose": 0,  # Keras fit's own output (1 = progress bar, 2 = a line per epoch); raxnet logs every epoch
}

_SCHEDULES = ("plateau", "cosine", "constant")
_OPTIMIZERS = ("adam", "adamw")
#: [train] keys that change what a run computes: a checkpoint made with other values is not resumed.
_FINGERPRINT_KEYS = (
    "validation_steps", "optimizer", "learning_rate", "weight_decay", "clipnorm",
    "schedule", "lr_factor", "lr_patience", "min_lr", "mixed_precision", "warmup_fraction",
    "bn_recalibration_batches",
)
#: [arrays] keys that only change how batches are served, not which: free to change on resume.
_ARRAYS_RUNTIME_KEYS = ("workers", "use_multiprocessing", "max_queue_size", "max_open_stacks")
HISTORY_COLUMNS = ["epoch", "loss", "val_loss", "dice", "val_dice", "lr", "time"]
METRIC_COLUMNS = ["lesion_slice_dice", "all_slice_dice", "dice_3d_mean"]
COMPARISON_COLUMNS = [
    "model", "loss", "plane", "fold", "params", "best_epoch", "time_to_best_s", "predict_ms_per_slice",
    "lesion_slice_dice", "all_slice_dice", "dice_3d_mean",
]


def split_names(value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    names = [str(v).strip() for v in value if str(v).strip()]
    return list(dict.fromkeys(names))  # keep order, drop repeats


def parse_folds(value: str | int | Sequence[int], available: Sequence[int]) -> list[int]:
    """'all' -> every fold of stage 04; '1,3' / 2 / [1, 2] -> those folds (must exist)."""
    available = sorted(int(f) for f in available)
    if isinstance(value, str):
        if value.strip() == "all":
            return available
        try:
            folds = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"[train].folds: expected 'all' or fold numbers, got {value!r}") from None
    elif isinstance(value, (int, np.integer)):
        folds = [int(value)]
    else:
        folds = [int(v) for v in value]
    missing = [f for f in folds if f not in available]
    if missing or not folds:
        raise ConfigError(f"fold(s) {missing or value} not in stage-04 folds {available}")
    return list(dict.fromkeys(folds))


# --------------------------------------------------------------------------------------- settings


def settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """Merged and validated ``[train]`` section."""
    t = section(cfg, "train", DEFAULTS)
    if t["schedule"] not in _SCHEDULES:
        raise ConfigError(f"[train].schedule: {t['schedule']!r} not one of {', '.join(_SCHEDULES)}")
    if str(t["optimizer"]).lower() not in _OPTIMIZERS:
        raise ConfigError(f"[train].optimizer: {t['optimizer']!r} not one of {', '.join(_OPTIMIZERS)}")
    if int(t["epochs"]) < 0:
        raise ConfigError("[train].epochs must be >= 0")
    if int(t["epochs"]) == 0 and not str(t["init_weights"]):
        raise ConfigError("[train].epochs = 0 adopts the [train].init_weights networks without training: "
                          "set init_weights to a weight set (raxnet export-weights), or epochs >= 1")
    for key in ("validation_steps", "patience", "lr_patience"):
        if int(t[key]) < 0:
            raise ConfigError(f"[train].{key} must be >= 0")
    if not (0.0 < float(t["lr_factor"]) < 1.0):
        raise ConfigError("[train].lr_factor must be in (0, 1)")
    if not (0.0 <= float(t["warmup_fraction"]) < 1.0):
        raise ConfigError("[train].warmup_fraction must be in [0, 1)")
    if float(t["learning_rate"]) <= 0:
        raise ConfigError("[train].learning_rate must be > 0")
    return t


def _model_and_arrays(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from raxnet import batches, models

    return section(cfg, "model", models.DEFAULTS), section(cfg, "arrays", batches.DEFAULTS)


def model_names(cfg: dict[str, Any]) -> list[str]:
    """Models to train ([train].model, default [model].name), validated against MODEL_NAMES."""
    from raxnet import models

    names = split_names(settings(cfg)["model"]) or [_model_and_arrays(cfg)[0]["name"]]
    bad = [n for n in names if n not in models.MODEL_NAMES]
    if bad:
        raise ConfigError(f"unknown model(s) {', '.join(bad)}; expected {', '.join(models.MODEL_NAMES)}")
    return names


def loss_names(cfg: dict[str, Any]) -> list[str]:
    """Losses to train with ([train].loss), validated against LOSS_NAMES."""
    from raxnet import losses

    names = split_names(settings(cfg)["loss"])
    bad = [n for n in names if n not in losses.LOSS_NAMES]
    if bad or not names:
        raise ConfigError(f"unknown loss(es) {', '.join(bad) or '(none)'}; expected {', '.join(losses.LOSS_NAMES)}")
    return names


def _fingerprint(train: dict, model_cfg: dict, arrays: dict, model_name: str, loss_name: str, seed: int,
                 augment: dict | None = None, init: dict | None = None) -> str:
    key = {
        "model_name": model_name,
        "loss": loss_name,
        "seed": int(seed),
        "model": model_cfg,
        "arrays": {k: v for k, v in arrays.items() if k not in _ARRAYS_RUNTIME_KEYS},
        "train": {k: train[k] for k in _FINGERPRINT_KEYS},
    }
    if augment is not None:  # the augmentation strengths change what is trained on ([augment])
        key["augment"] = augment
    if init:  # a warm start is another run, and so are other starting weights (by content: the folder may move)
        key["init_sha256"] = init["sha256"]
    if int(train["epochs"]) == 0:  # an adopted network is not a trained run cut short, nor the reverse
        key["adopted"] = True
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_digests(work_dir: str | Path, plane: str) -> dict[str, str]:
    """SHA-256 of the earlier stages' tables a (plane, fold) run is trained from: stage 03's index (which
    carries each stack's source digest) and stage 04's fold tables. A finished run or checkpoint made from
    other tables is stale."""
    from raxnet.record import sha256_file

    work = Path(work_dir)
    paths = [stage_dir(work, "convert") / "index.csv", stage_dir(work, "folds") / "subject_folds.csv",
             stage_dir(work, "folds") / f"{plane}_folds.csv"]
    return {p.relative_to(work).as_posix(): sha256_file(p) for p in paths if p.is_file()}


def _stale_reason(made: dict[str, Any], fp: str, inputs: dict[str, str]) -> str | None:
    """Why a checkpoint or finished run (its state.json / run.json dict) does not match this run."""
    if made.get("fingerprint") != fp:
        return "with other settings (model/loss/arrays/optimizer/seed)"
    if "inputs" not in made:
        return "by an older version (no record of its input tables)"
    changed = [k for k in sorted(set(inputs) | set(made["inputs"])) if inputs.get(k) != made["inputs"].get(k)]
    if changed:
        return f"from other stage-03/04 tables ({changed[0]} changed since)"
    return None


def init_source(weights_dir: str | Path, plane: str) -> dict[str, Any] | None:
    """Where a warm start of ``plane`` comes from (``[train] init_weights``), without loading Keras.

    ``None`` for ``""`` (random initialisation); else the plane's model file in the weight set, its SHA-256
    and the seed(s) that weight set was trained on (``training_data``), so that an evaluation of the
    fine-tuned models can refuse those seeds too. ConfigError for a folder that is not a weight set, lacks
    the plane or holds a fold ensemble (several models for it).
    """
    if not str(weights_dir):
        return None
    from raxnet.record import sha256_file
    from raxnet.weights import plane_files, read_manifest

    try:
        manifest = read_manifest(weights_dir)
    except InputError as exc:
        raise ConfigError(f"[train].init_weights: {exc}") from None
    entry = manifest["planes"].get(plane)
    if entry is None:
        raise ConfigError(f"[train].init_weights: {Path(weights_dir) / 'weights.json'} has no {plane} model")
    files = plane_files(manifest, plane)
    if len(files) > 1:
        raise ConfigError(f"[train].init_weights: {Path(weights_dir) / 'weights.json'} holds {len(files)} {plane} "
                          "models (a fold ensemble); a warm start needs one: export the run without --ensemble")
    path = Path(weights_dir) / files[0]
    seed = manifest.get("training_data", {}).get("seed")
    return {"weights": str(weights_dir), "file": str(path), "sha256": sha256_file(path),
            "training_data": {"seed": seed} if seed is not None else {}}


def check_init_inputs(weights_dir: str | Path, work_dir: str | Path) -> None:
    """ConfigError when the warm-start weight set was trained on inputs prepared otherwise than this run's
    stage 03 prepared its stacks (brain-mask step, N4 bias correction): fine-tuning would silently mix two
    input distributions, and ``export-weights`` would record only this run's."""
    from raxnet.brainmask import read_steps
    from raxnet.weights import read_manifest

    convert_dir = stage_dir(work_dir, "convert")
    ours = read_steps(convert_dir)
    if ours is None:
        return  # stacks made before stage 03 kept a record: nothing to compare
    theirs = read_manifest(weights_dir)["inference"]
    differ = [f"{k} {theirs[k]!r} there, {ours[k]!r} here" for k in ours if theirs[k] != ours[k]]
    if differ:
        raise ConfigError(f"[train].init_weights: {Path(weights_dir) / 'weights.json'} was trained on inputs prepared "
                          f"otherwise than {convert_dir / 'convert.json'} ({'; '.join(differ)}): set [convert] to match")


def _training_records(weights_dir: str | Path) -> Iterator[tuple[Path, list, list[str] | None]]:
    """``(manifest, seeds, subjects or None)`` for a weight set and, through ``training_data.init_weights``, for
    the weight sets it was fine-tuned from (``None``: that set's manifest is gone, its subjects unknown)."""
    from raxnet.weights import MANIFEST, read_manifest

    data = read_manifest(weights_dir).get("training_data", {})
    seeds = data.get("seed")
    yield Path(weights_dir) / MANIFEST, seeds if isinstance(seeds, list) else [seeds], data.get("subjects_trained_on")
    starts: dict[str, list] = {}  # starting weight set -> the seeds its planes record
    for entry in data.get("init_weights", {}).values():
        starts.setdefault(str(entry.get("weights", "")), []).append(entry.get("training_data", {}).get("seed"))
    for folder, seeds in sorted(starts.items()):
        if folder and (Path(folder) / MANIFEST).is_file():
            yield from _training_records(folder)
        elif folder:
            yield Path(folder) / MANIFEST, seeds, None


def check_adoptable(weights_dir: str | Path, seed: int, val_subjects: Sequence[str]) -> None:
    """ConfigError when networks adopted without training (``epochs = 0``) would be evaluated on subjects they
    were trained on: the weight set, or one it was fine-tuned from, records this run's seed and lists some of
    these outer-validation subjects among its training subjects (the same synthetic subjects, or the same scans).
    A starting weight set with this seed whose subject list is gone gets a warning: it cannot be checked."""
    for manifest, seeds, subjects in _training_records(weights_dir):
        if int(seed) not in seeds:
            continue
        if subjects is None:
            log.warning("%s: trained on seed %d, like this run, and its subject list is not at hand: make sure "
                        "it did not train on this fold's outer-validation subjects", manifest, seed)
            continue
        seen = sorted(set(map(str, subjects)) & set(map(str, val_subjects)))
        if seen:
            raise ConfigError(f"[train].init_weights: {manifest} was trained on seed {seed} and on {len(seen)} of "
                              f"this fold's outer-validation subjects (e.g. {seen[0]}): adopting it would score and "
                              "choose post-processing on its own training data")


def initialise_from(model: Any, init: Mapping[str, Any]) -> None:
    """Copy the weights of ``init['file']`` (a plane model of a weight set) into ``model``, layer for layer.

    A 2D model can start a 2.5D one (``[arrays] context``): a kernel that reads the input image gets the 2D
    kernel on its centre-slice channel and zeros on the neighbour channels, so the new model starts out
    predicting exactly what the 2D one does and learns from there what the neighbours add. ConfigError
    naming the file when the architectures differ otherwise ([model] width/depth/options, or the grid).
    """
    from raxnet.inference import load_model

    src = load_model(init["file"]).get_weights()
    dst = model.get_weights()
    if len(src) == len(dst):
        inflated = [inflate_input_kernel(a, b.shape) for a, b in zip(src, dst)]
        if any(a is not b for a, b in zip(src, inflated)):
            log.info("%s: 2D model -> %d input channels (neighbour slices start at weight 0)", init["file"],
                     int(model.input_shape[-1]))
        src = inflated
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src, dst)):
        shapes = next(((a.shape, b.shape) for a, b in zip(src, dst) if a.shape != b.shape), (len(src), len(dst)))
        raise ConfigError(f"{init['file']}: [train].init_weights model does not match the [model] being trained "
                          f"(first difference: {shapes[0]} vs {shapes[1]}; same name, width, depth, options, grid "
                          "and input channels?)")
    model.set_weights(src)


def inflate_input_kernel(kernel: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A 2D model's convolution kernel ``(kh, kw, 1, F)`` as a ``(kh, kw, C, F)`` kernel of a 2.5D model (C odd):
    the 2D kernel on the centre channel, zeros elsewhere. Any other weight is returned unchanged."""
    shape = tuple(int(s) for s in shape)
    if (kernel.ndim != 4 or len(shape) != 4 or kernel.shape[2] != 1 or shape[2] % 2 == 0 or shape[2] == 1
            or kernel.shape[:2] + kernel.shape[3:] != shape[:2] + shape[3:]):
        return kernel
    out = np.zeros(shape, dtype=kernel.dtype)
    out[:, :, shape[2] // 2] = kernel[:, :, 0]
    return out


# ------------------------------------------------------------------------------------ keras bits


class _Limited:
    """A PyDataset view limited to its first ``n`` batches (``validation_steps``)."""

    def __new__(cls, ds: Any, n: int) -> Any:
        import keras

        if n <= 0 or n >= len(ds):
            return ds

        class Limited(keras.utils.PyDataset):
            def __init__(self) -> None:
                super().__init__()
                self.ds = ds

            def __len__(self) -> int:
                return n

            def __getitem__(self, i: int) -> Any:
                return self.ds[i]

            def on_epoch_begin(self) -> None:
                if hasattr(self.ds, "on_epoch_begin"):
                    self.ds.on_epoch_begin()

            def on_epoch_end(self) -> None:
                if hasattr(self.ds, "on_epoch_end"):
                    self.ds.on_epoch_end()

        return Limited()


def _optimizer(train: dict[str, Any], total_steps: int) -> Any:
    import keras

    lr: Any = float(train["learning_rate"])
    if train["schedule"] == "cosine":
        alpha = min(1.0, float(train["min_lr"]) / lr)
        warmup = int(round(float(train["warmup_fraction"]) * total_steps))
        lr = keras.optimizers.schedules.CosineDecay(
            lr / 10.0 if warmup else lr, decay_steps=max(1, total_steps - warmup), alpha=alpha,
            warmup_target=lr if warmup else None, warmup_steps=warmup,
        )
    clip = {"clipnorm": float(train["clipnorm"])} if float(train["clipnorm"]) > 0 else {}
    if str(train["optimizer"]).lower() == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=float(train["weight_decay"]), **clip)
    return keras.optimizers.Adam(learning_rate=lr, **clip)


def _current_lr(model: Any) -> float:
    return float(np.asarray(model.optimizer.learning_rate))


def _strategy_scope() -> Any:
    """MirroredStrategy scope when the TF backend sees more than one GPU, else a no-op."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        log.info("MirroredStrategy over %d GPUs", len(gpus))
        return tf.distribute.MirroredStrategy().scope()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _precision(mixed: bool) -> Iterator[None]:
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _seed_everything(seed: int, deterministic: bool) -> None:
    import keras

    keras.utils.set_random_seed(int(seed))
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _save_keras(model: Any, path: Path) -> None:
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def _save_weights(model: Any, path: Path) -> None:
    with atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)


def _metric_key(logs: dict[str, Any]) -> str | None:
    for key in logs:
        if not key.startswith("val_") and key not in ("loss", "learning_rate") and f"val_{key}" in logs:
            return key
    return None


def _monitor_class() -> type:
    import keras

    class TrainingMonitor(keras.callbacks.Callback):
        """Per-epoch bookkeeping that survives interruption.

        Tracks the best inner validation loss (saves ``best_e<N>.weights.h5``), early stopping and the
        plateau learning-rate schedule with their counters in ``state.json``, appends ``history.csv`` and
        saves ``last_e<N>.keras`` (model + optimizer) under names of their own, then commits the epoch by
        writing ``state.json`` (which names them) and only then removes the previous epoch's files. A kill
        at any point leaves ``state.json`` naming a complete, consistent checkpoint. Keras' own
        EarlyStopping/ReduceLROnPlateau would forget their counters on resume.
        """

        def __init__(self, out: Path, state: dict[str, Any], history: list[dict], train: dict[str, Any]):
            super().__init__()
            self.out, self.state, self.history, self.train = out, state, history, train
            self._t0 = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = dict(logs or {})
            st, tr = self.state, self.train
            seconds = time.perf_counter() - self._t0
            lr = _current_lr(self.model)
            key = _metric_key(logs)
            val_loss = float(logs.get("val_loss", np.nan))
            row = {
                "epoch": epoch + 1,
                "loss": float(logs.get("loss", np.nan)),
                "val_loss": val_loss,
                "dice": float(logs[key]) if key else np.nan,
                "val_dice": float(logs[f"val_{key}"]) if key else np.nan,
                "lr": lr,
                "time": round(seconds, 3),
            }
            self.history.append(row)
            log.info("epoch %d: loss %.4f, inner-val loss %.4f, Dice %.4f, inner-val Dice %.4f, lr %.3g, %.1f s",
                     row["epoch"], row["loss"], row["val_loss"], row["dice"], row["val_dice"], lr, seconds)
            st["epoch"] = epoch + 1
            st["train_time_s"] = round(st["train_time_s"] + seconds, 3)
            delta = float(tr["min_delta"])
            if np.isfinite(val_loss) and val_loss < st["best_val_loss"] - delta:
                st.update(best_val_loss=val_loss, best_epoch=epoch + 1, wait=0, time_to_best_s=st["train_time_s"])
                st["best_weights"] = checkpoint_name("best", epoch + 1)
                _save_weights(self.model, self.out / st["best_weights"])
            else:
                st["wait"] += 1
            if tr["schedule"] == "plateau":
                if np.isfinite(val_loss) and val_loss < st["plateau_best"] - delta:
                    st["plateau_best"], st["plateau_wait"] = val_loss, 0
                else:
                    st["plateau_wait"] += 1
                    if st["plateau_wait"] >= int(tr["lr_patience"]) > 0:
                        new_lr = max(lr * float(tr["lr_factor"]), float(tr["min_lr"]))
                        if new_lr < lr:
                            self.model.optimizer.learning_rate.assign(new_lr)
                            log.info("epoch %d: learning rate %.3g -> %.3g", epoch + 1, lr, new_lr)
                        st["plateau_wait"] = 0
            if int(tr["patience"]) > 0 and st["wait"] >= int(tr["patience"]):
                st["stopped_early"] = True
                self.model.stop_training = True
                log.info("early stop after epoch %d (best epoch %d)", epoch + 1, st["best_epoch"])
            save_csv(pd.DataFrame(self.history, columns=HISTORY_COLUMNS), self.out / "history.csv")
            st["checkpoint"] = checkpoint_name("last", epoch + 1)
            _save_keras(self.model, self.out / st["checkpoint"])
            save_json(st, self.out / "state.json")  # the commit: the epoch counts from here on
            remove_uncommitted(self.out, st)

    return TrainingMonitor


def _precise_bn_class() -> type:
    import keras

    class PreciseBatchNorm(keras.callbacks.Callback):
        """Re-estimate every batch-norm layer's statistics before each inner validation ("precise BN").

        Keras' moving averages (momentum 0.9) follow the last few augmented, half-lesion batches: measured on
        the 2 mm synthetic set, an epoch's inference-mode inner-validation Dice fell from 0.81 to 0.51 while
        the same weights with re-estimated statistics gave 0.82. Here the statistics are the exact means
        over ``n`` un-augmented training batches of the current epoch's plan (deterministic, so a resumed
        run repeats an uninterrupted one), computed with the weights frozen.
        """

        def __init__(self, train_ds: Any, n: int):
            super().__init__()
            self.ds, self.n = train_ds, int(n)
            self.epoch: int | None = None

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            # fit's epoch, not the dataset's own counter: stage 07 feeds fit through raxnet.datasets.as_tf_data,
            # which addresses batches by (epoch, index) and never advances that counter
            self.epoch = epoch

        def on_test_begin(self, logs: dict | None = None) -> None:
            recalibrate_batch_norm(self.model, self.ds, self.n, self.epoch)

    return PreciseBatchNorm


def recalibrate_batch_norm(model: Any, train_ds: Any, n_batches: int, epoch: int | None = None) -> int:
    """Set each BatchNormalization's moving mean/variance to their average over ``n_batches`` batches.

    Batches are read without augmentation (``inputs``) when the dataset offers it, from ``epoch``'s
    plan when given (else the dataset's current epoch). Returns the number of batches used (0: no
    batch-norm layer or no batch).
    """
    import keras

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    n = min(int(n_batches), len(train_ds))
    if not bns or n <= 0:
        return 0
    momenta = [layer.momentum for layer in bns]
    try:
        for i in range(n):
            if hasattr(train_ds, "inputs"):
                items = train_ds.batch_items(i) if epoch is None else train_ds.batch_items(i, epoch)
                x = train_ds.inputs(items)
            else:
                x = train_ds[i][0]
            for layer in bns:
                # new = m * old + (1 - m) * batch with m = i / (i + 1): the running mean of the batches.
                layer.momentum = i / (i + 1.0)
            model(np.asarray(x, np.float32), training=True)
    finally:
        for layer, m in zip(bns, momenta):
            layer.momentum = m
    return n


def _new_state(fingerprint: str, inputs: dict[str, str]) -> dict[str, Any]:
    return {
        "epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "wait": 0, "plateau_best": math.inf,
        "plateau_wait": 0, "train_time_s": 0.0, "time_to_best_s": 0.0, "stopped_early": False,
        "fingerprint": fingerprint, "inputs": inputs, "checkpoint": None, "best_weights": None,
    }


def checkpoint_name(kind: str, epoch: int) -> str:
    """``last_e0003.keras`` (model + optimizer after epoch 3) or ``best_e0002.weights.h5``."""
    return f"last_e{epoch:04d}.keras" if kind == "last" else f"best_e{epoch:04d}.weights.h5"


_CHECKPOINT = re.compile(r"^(last_e\d{4}\.keras|best_e\d{4}\.weights\.h5)$")


def remove_uncommitted(out: Path, state: dict[str, Any] | None) -> list[Path]:
    """Remove checkpoint files ``state`` does not name (an older epoch's, or those of an epoch killed
    before its commit) and the pre-commit names ``last.keras`` / ``best.weights.h5``."""
    keep = {state.get("checkpoint"), state.get("best_weights")} if state else set()
    removed = []
    for path in out.iterdir() if out.is_dir() else ():
        if (_CHECKPOINT.match(path.name) or path.name in ("last.keras", "best.weights.h5")) and path.name not in keep:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _read_state(out: Path) -> dict[str, Any] | None:
    """The committed state of a run, or None (no checkpoint, unreadable, or its files missing)."""
    path = out / "state.json"
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s: unreadable, starting the run again", path)
        return None
    if not state.get("checkpoint") or not (out / state["checkpoint"]).is_file():
        return None  # made before checkpoints were committed with the state, or removed by hand
    if state.get("best_weights") and not (out / state["best_weights"]).is_file():
        return None
    for key in ("best_val_loss", "plateau_best"):  # json has no infinity: save_json writes Infinity
        state[key] = float(state[key])
    return state


_RUN_FILES = (
    "model.keras", "history.csv", "curves.png", "metrics.csv", "subject_dice.csv", "run.json", "state.json",
    "errors.csv",
)


def _clear_run(out: Path) -> None:
    for name in _RUN_FILES:
        (out / name).unlink(missing_ok=True)
    remove_uncommitted(out, None)


def write_curves(out: Path, history: Sequence[Mapping[str, Any]], title: str) -> Path | None:
    """``curves.png`` next to ``history.csv``: loss, Dice and learning rate per epoch, best epoch marked."""
    if not history:
        return None
    from raxnet.plotting import plot_training_curves

    fig = plot_training_curves(pd.DataFrame(list(history), columns=HISTORY_COLUMNS), title=f"{title}: training curves")
    return save_figure(fig, out / "curves.png")


# ------------------------------------------------------------------------------------ evaluation


def evaluate_fold(
    model: Any, cfg: dict[str, Any], run: dict[str, Any], plane: str, fold: int, depth: int,
    val_subjects: Sequence[str], train: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, list[dict[str, str]]]:
    """Outer-fold metrics of a plane model: (summary, per-subject 3D Dice table, errors)."""
    from raxnet import batches
    from raxnet.inference import model_context, model_slice_shape, predict_probabilities
    from raxnet.metrics import dice, slice_dice
    from raxnet.postprocess import binarise
    from raxnet.slices import open_stack

    thr = float(train["threshold"])
    ds = batches.outer_validation_slices(cfg, run, plane, fold, depth)
    dices, has_lesion = [], []
    for i in progress(range(len(ds)), desc=f"{plane} fold {fold} slices", leave=False):
        x, y = ds[i][:2]
        p = np.asarray(model.predict_on_batch(np.asarray(x, np.float32)), np.float32)
        t = np.asarray(y) > 0.5
        dices.append(slice_dice(binarise(p, thr), t))
        has_lesion.append(t.reshape(len(t), -1).any(axis=1))
    d = np.concatenate(dices) if dices else np.zeros(0)
    les = np.concatenate(has_lesion) if has_lesion else np.zeros(0, bool)

    bs = int(train["predict_batch_size"])
    h, w = model_slice_shape(model)
    channels = channels_for(model_context(model))
    model.predict_on_batch(np.zeros((bs, h, w, channels), np.float32))  # builds the predict graph; not timed
    rows, errors = [], []
    seconds, n_pred = 0.0, 0
    for subject in progress(list(val_subjects), desc=f"{plane} fold {fold} 3D", leave=False):
        try:
            image, mask = open_stack(run["work_dir"], subject, plane)
            volume = from_slices(np.asarray(image, np.float32), plane)
            truth = from_slices(np.asarray(mask) > 0, plane)
            if volume.shape != truth.shape:
                raise InputError(f"{subject}: image {volume.shape} and mask {truth.shape} stacks differ")
        except (RaxnetError, OSError, ValueError) as exc:
            log.error("%s", exc)
            errors.append({"subject": subject, "error": str(exc)})
            continue
        t0 = time.perf_counter()
        # the stage-03 stacks are already normalised
        prob = predict_probabilities(volume, {plane: [model]}, batch_size=bs, normalised=True, source=subject)[plane]
        seconds += time.perf_counter() - t0
        n_pred += int((np.asarray(image).reshape(len(image), -1).max(axis=1) > 0).sum())
        pred = binarise(prob, thr)
        rows.append({
            "subject": subject,
            "lesion_voxels": int(truth.sum()),
            "predicted_voxels": int(pred.sum()),
            "dice_3d": dice(pred, truth),
        })
    subj = pd.DataFrame(rows, columns=["subject", "lesion_voxels", "predicted_voxels", "dice_3d"])
    d3 = subj["dice_3d"].to_numpy(float)
    summary = {
        "n_subjects": int(len(subj)),
        "lesion_slices": int(les.sum()),
        "all_slices": int(d.size),
        "lesion_slice_dice": float(d[les].mean()) if les.any() else float("nan"),
        "all_slice_dice": float(d.mean()) if d.size else float("nan"),
        "dice_3d_mean": float(d3.mean()) if d3.size else float("nan"),
        "dice_3d_sd": float(d3.std(ddof=1)) if d3.size > 1 else float("nan"),
        "dice_3d_median": float(np.median(d3)) if d3.size else float("nan"),
        "predict_ms_per_slice": 1000.0 * seconds / n_pred if n_pred else float("nan"),
    }
    return summary, subj, errors


# -------------------------------------------------------------------------------------- training


def _identity(cfg: dict[str, Any], run: dict[str, Any], plane: str, model_name: str, loss_name: str,
              ) -> tuple[str, dict[str, str], dict[str, Any] | None]:
    """A run's settings fingerprint, the digests of the stage-03/04 tables it reads and its warm start."""
    from raxnet.augment import DEFAULTS as AUGMENT_DEFAULTS

    train = settings(cfg)
    model_cfg, arrays = _model_and_arrays(cfg)
    augment = section(cfg, "augment", AUGMENT_DEFAULTS) if arrays.get("augment") else None
    init = init_source(train["init_weights"], plane)
    if init is not None:
        check_init_inputs(train["init_weights"], run["work_dir"])
    fp = _fingerprint(train, model_cfg, arrays, model_name, loss_name, int(run["seed"]), augment, init)
    return fp, input_digests(run["work_dir"], plane), init


def _check_not_stale(out: Path, state: dict[str, Any] | None, fp: str, inputs: dict[str, str],
                     epochs: int) -> dict[str, Any] | None:
    """StageInputError when the run folder's checkpoint or finished run was made with other settings or
    tables; the run.json of a finished run whose checkpoint was removed (it is skipped), else None."""
    if state is None and (out / "run.json").is_file() and (out / "model.keras").is_file():
        # A finished run whose checkpoint was removed (e.g. to save disk) is still finished.
        info = json.loads((out / "run.json").read_text())
        if info.get("stopped_early") or info.get("epochs_run", 0) >= epochs:
            why = _stale_reason(info, fp, inputs)
            if why:
                raise StageInputError(f"{out}: this run was trained {why}; pass --force to retrain it, or start "
                                      "a fresh run with another --work-dir")
            return info
    if state is not None:
        why = _stale_reason(state, fp, inputs)
        if why:
            raise StageInputError(f"{out}: checkpoint was made {why}; pass --force to retrain it, or start a "
                                  "fresh run with another --work-dir")
    return None


def check_runs(cfg: dict[str, Any], run: dict[str, Any], jobs: Sequence[tuple[str, int, str, str]],
               *, force: bool = False) -> None:
    """Refuse, before anything is trained or recorded, what :func:`train_one` would refuse on reaching a job:
    a run folder holding a checkpoint or finished run made with other settings or tables, or networks to adopt
    that were trained on the fold's outer-validation subjects (:func:`check_adoptable`)."""
    train = settings(cfg)
    if int(train["epochs"]) == 0:
        subject_folds = read_subject_folds(run["work_dir"])
        for fold in sorted({f for _, f, _, _ in jobs}):
            val = subject_folds.loc[subject_folds["fold"] == fold, "subject"].astype(str)
            check_adoptable(train["init_weights"], int(run["seed"]), list(val))
    if force or not train["resume"]:
        return  # those runs start afresh
    for plane, fold, model_name, loss_name in jobs:
        out = run_dir(run["work_dir"], model_name, loss_name, plane, fold)
        if out.is_dir():
            fp, inputs, _ = _identity(cfg, run, plane, model_name, loss_name)
            _check_not_stale(out, _read_state(out), fp, inputs, int(train["epochs"]))


def train_one(
    cfg: dict[str, Any], run: dict[str, Any], plane: str, fold: int, model_name: str, loss_name: str,
    *, force: bool = False,
) -> dict[str, Any]:
    """Train, checkpoint and evaluate one (plane, outer fold, model, loss) run; returns its run.json dict.

    Skips a finished run (reads its run.json) unless ``force``; resumes an unfinished one from
    its committed checkpoint (``state.json``) when ``[train].resume``. Skipping does not import Keras.
    """
    train = settings(cfg)
    model_cfg, arrays = _model_and_arrays(cfg)
    seed = int(run["seed"])
    out = make_dirs(run_dir(run["work_dir"], model_name, loss_name, plane, fold))
    fp, inputs, init = _identity(cfg, run, plane, model_name, loss_name)
    epochs = int(train["epochs"])
    adopt = epochs == 0  # settings() made sure init_weights names the networks to adopt
    tag = f"{run_name(model_name, loss_name)}/{plane}/fold_{fold}"

    removed = clean_temp_files(out, recursive=False)  # left by a killed run
    if force or not train["resume"]:
        _clear_run(out)
    state = _read_state(out)
    removed += remove_uncommitted(out, state)
    if removed:
        log.info("%s: removed %d stale or uncommitted file(s)", tag, len(removed))
    info = _check_not_stale(out, state, fp, inputs, epochs)
    if info is not None:
        log.info("%s: finished (%d epochs, no checkpoint kept), skipped; --force retrains", tag, info["epochs_run"])
        return info
    done = state is not None and (state["stopped_early"] or state["epoch"] >= epochs)
    if done and (out / "run.json").is_file() and (out / "model.keras").is_file():
        log.info("%s: finished (%d epochs), skipped; --force retrains", tag, state["epoch"])
        if not (out / "curves.png").is_file() and (out / "history.csv").is_file():  # trained before curves existed
            write_curves(out, pd.read_csv(out / "history.csv").to_dict("records"), tag)
        return json.loads((out / "run.json").read_text())
    if state is None:
        _clear_run(out)
        state = _new_state(fp, inputs)
        history: list[dict] = []
    else:
        hist_path = out / "history.csv"
        hist = (pd.read_csv(hist_path, float_precision="round_trip") if hist_path.is_file()
                else pd.DataFrame(columns=HISTORY_COLUMNS))
        history = hist[hist["epoch"] <= state["epoch"]].to_dict("records")
        log.info("%s: resuming after epoch %d", tag, state["epoch"])
    for stale in ("run.json", "metrics.csv", "subject_dice.csv", "model.keras"):
        (out / stale).unlink(missing_ok=True)

    import keras

    from raxnet import batches, losses, models

    _seed_everything(seed, bool(train["deterministic"]))
    depth = int(model_cfg["depth"])
    # an adopted network trains on nothing: its training set only gives the input shape and the subjects' roles,
    # so it is drawn as one pass over the lesion slices (no "steps_per_epoch < lesion slices" warning)
    sets = batches.build_training_sets(with_flags(cfg, "arrays", steps_per_epoch=0) if adopt else cfg, run, plane,
                                       fold, depth)
    train_ds = sets.train
    if state["epoch"] and hasattr(train_ds, "set_epoch"):
        train_ds.set_epoch(state["epoch"])  # epoch e's batches are drawn from (seed, e): same as uninterrupted
    val_ds = _Limited(sets.inner_val, int(train["validation_steps"]))
    roles = sets.subjects
    val_subjects = sorted(roles.loc[roles["role"] == "val", "subject"].astype(str))
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise StageInputError(f"{tag}: empty training or inner validation set")
    if adopt:
        check_adoptable(train["init_weights"], seed, val_subjects)
    input_shape = tuple(int(s) for s in sets.input_shape)

    with _precision(bool(train["mixed_precision"])), _strategy_scope():
        if state["epoch"] > 0:
            model = keras.saving.load_model(str(out / state["checkpoint"]), compile=True)
            if getattr(model, "optimizer", None) is None:
                raise StageInputError(f"{out / state['checkpoint']}: checkpoint has no optimizer state; pass --force")
        else:
            model = models.build_model(
                model_name, input_shape,
                width=int(model_cfg["width"]), depth=depth, attention=bool(model_cfg["attention"]),
                residual=bool(model_cfg["residual"]), separable=bool(model_cfg["separable"]),
                dropout=float(model_cfg["dropout"]),
            )
            if init:
                initialise_from(model, init)
                log.info("%s: %s", tag, f"adopted as is (epochs = 0, no training): {init['file']}" if adopt
                         else f"initialised from {init['file']} (fine-tuning)")
            if not adopt:  # an adopted network is only evaluated and saved
                model.compile(
                    optimizer=_optimizer(train, epochs * len(train_ds)),
                    loss=losses.get_loss(loss_name),
                    metrics=[losses.DiceMetric(name="dice")],
                )
        if train["xla"] and not adopt:
            model.jit_compile = True
        remaining = 0 if state["stopped_early"] else max(0, epochs - state["epoch"])
        log.info(
            "%s: %d params, input %s, %d train / %d inner-val batches per epoch, %s", tag, model.count_params(),
            input_shape, len(train_ds), len(val_ds),
            "no training" if adopt else f"epochs {state['epoch'] + 1}..{epochs}",
        )
        from raxnet.datasets import as_tf_data

        parallel = int(section(cfg, "arrays", batches.DEFAULTS)["workers"])
        tf_feeds = keras.backend.backend() == "tensorflow"  # other backends read the PyDatasets themselves
        val_feed = as_tf_data(val_ds, parallel=parallel) if tf_feeds else val_ds
        if adopt:  # its inner-validation loss ranks it among folds as a trained model's best epoch does
            model.compile(loss=losses.get_loss(loss_name))
            state["best_val_loss"] = float(model.evaluate(val_feed, steps=len(val_ds), verbose=0))
            log.info("%s: inner-validation loss of the adopted model %.4f", tag, state["best_val_loss"])
        if remaining:
            monitor = _monitor_class()(out, state, history, train)
            callbacks = [keras.callbacks.TerminateOnNaN()]
            if int(train["bn_recalibration_batches"]) > 0:
                callbacks.append(_precise_bn_class()(train_ds, int(train["bn_recalibration_batches"])))
            feed = as_tf_data(train_ds, state["epoch"], epochs, parallel) if tf_feeds else train_ds
            model.fit(
                feed, steps_per_epoch=len(train_ds), validation_data=val_feed, epochs=epochs,
                initial_epoch=state["epoch"],
                callbacks=[*callbacks, monitor], verbose=int(train["verbose"]),
                # The stage-05 batches are already redrawn from (seed, epoch); Keras' own batch-order
                # shuffle would draw from a global RNG and make a resumed run differ from an uninterrupted one.
                shuffle=False,
            )
        write_curves(out, history, tag)
        if state["best_epoch"] == 0 and not adopt:
            raise RaxnetError(f"{tag}: no finite inner validation loss in {state['epoch']} epochs (diverged?)")
        if train["restore_best"] and state.get("best_weights") and (out / state["best_weights"]).is_file():
            model.load_weights(str(out / state["best_weights"]))
        # A fresh, uncompiled copy: model.keras then loads anywhere without custom objects.
        infer = model.__class__.from_config(model.get_config())
        infer.set_weights(model.get_weights())
    _save_keras(infer, out / "model.keras")

    summary, subj, errors = evaluate_fold(infer, cfg, run, plane, fold, depth, val_subjects, train)
    save_csv(subj, out / "subject_dice.csv")
    if errors:
        save_csv(pd.DataFrame(errors, columns=["subject", "error"]), out / "errors.csv")
    metrics = {"model": model_name, "loss": loss_name, "plane": plane, "fold": int(fold), **summary}
    save_csv(pd.DataFrame([metrics]), out / "metrics.csv")

    try:
        from raxnet.models.flops import count_flops

        flops = int(count_flops(infer))
    except Exception as exc:  # FLOP counting is informative only
        log.warning("%s: FLOP count failed (%s)", tag, exc)
        flops = None
    info = {
        "plane": plane, "fold": int(fold), "model": model_name, "loss": loss_name,
        "run_name": run_name(model_name, loss_name),
        "best_epoch": int(state["best_epoch"]), "best_val_loss": float(state["best_val_loss"]),
        "epochs_run": int(state["epoch"]), "epochs_requested": epochs, "stopped_early": bool(state["stopped_early"]),
        "train_time_s": float(state["train_time_s"]), "time_to_best_s": float(state["time_to_best_s"]),
        "params": int(infer.count_params()), "flops_per_slice": flops,
        "input_shape": list(input_shape), "slice_shape": [int(s) for s in sets.slice_shape],
        "seed": seed, "fingerprint": fp, "inputs": inputs, "init_weights": init, "adopted": adopt,
        # stage 08 refuses a model.keras that is not this one (copied in from another run, say)
        "model_sha256": record.sha256_file(out / "model.keras"),
        "subjects": {r: int((roles["role"] == r).sum()) for r in ("train", "inner_val", "val")},
        "metrics": metrics, "errors": len(errors),
        "keras_version": keras.__version__, "backend": keras.backend.backend(), "versions": record.versions(),
        "config": {"train": train, "model": model_cfg, "arrays": arrays},
    }
    save_json(info, out / "run.json")
    log.info(
        "%s: %s, lesion-slice Dice %.3f, all-slice Dice %.3f, 3D Dice %.3f", tag,
        "adopted, not trained" if adopt else f"best epoch {info['best_epoch']}/{info['epochs_run']}",
        summary["lesion_slice_dice"], summary["all_slice_dice"], summary["dice_3d_mean"],
    )
    return info


# ---------------------------------------------------------------------------------- aggregation


def write_results(work_dir: str | Path, model_name: str, loss_name: str, plane: str) -> Path | None:
    """``<work>/07_train/<run name>/results_<plane>.csv``: one row per finished fold + mean and sd rows."""
    base = stage_dir(work_dir, "train") / run_name(model_name, loss_name)
    rows = []
    for mpath in sorted((base / plane).glob("fold_*/metrics.csv")):
        rpath = mpath.parent / "run.json"
        if not rpath.is_file():
            continue
        m = pd.read_csv(mpath).iloc[0].to_dict()
        r = json.loads(rpath.read_text())
        rows.append({
            "fold": str(int(m["fold"])),
            **{k: float(m[k]) for k in METRIC_COLUMNS + ["dice_3d_median", "predict_ms_per_slice"]},
            "n_subjects": int(m["n_subjects"]),
            "best_epoch": int(r["best_epoch"]), "epochs_run": int(r["epochs_run"]),
            "train_time_s": float(r["train_time_s"]),
        })
    if not rows:
        return None
    df = pd.DataFrame(rows).sort_values("fold", key=lambda s: s.astype(int))
    num = df.drop(columns=["fold"])
    mean = {"fold": "mean", **num.mean().to_dict()}
    sd = {"fold": "sd", **(num.std(ddof=1) if len(num) > 1 else num.std() * np.nan).to_dict()}
    df = pd.concat([df, pd.DataFrame([mean, sd])], ignore_index=True)
    return save_csv(df, base / f"results_{plane}.csv", float_format="%.6g")


def comparison_table(infos: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (model, loss, plane, fold) run from run.json dicts (COMPARISON_COLUMNS)."""
    rows = []
    for r in infos:
        m = r["metrics"]
        rows.append({
            "model": r["model"], "loss": r["loss"], "plane": r["plane"], "fold": int(r["fold"]),
            "params": int(r["params"]), "best_epoch": int(r["best_epoch"]),
            "time_to_best_s": float(r["time_to_best_s"]), "predict_ms_per_slice": float(m["predict_ms_per_slice"]),
            **{k: float(m[k]) for k in METRIC_COLUMNS},
        })
    df = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    return df.sort_values(["plane", "fold", "model", "loss"], kind="stable").reset_index(drop=True)


def write_comparison(work_dir: str | Path, infos: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    """``comparison.csv`` and ``comparison.png`` (mean ± sd over folds per model/loss and plane)."""
    from raxnet.plotting import plt

    base = stage_dir(work_dir, "train", create=True)
    df = comparison_table(infos)
    csv = save_csv(df, base / "comparison.csv", float_format="%.6g")
    df = df.assign(run=[run_name(m, l) for m, l in zip(df["model"], df["loss"])])
    planes = list(dict.fromkeys(df["plane"]))
    metrics = [("lesion_slice_dice", "lesion-slice Dice"), ("all_slice_dice", "all-slice Dice"),
               ("dice_3d_mean", "3D Dice")]
    fig, axes = plt.subplots(1, len(planes), figsize=(4.5 * len(planes) + 1, 3.8), squeeze=False)
    for ax, plane in zip(axes[0], planes):
        sub = df[df["plane"] == plane]
        runs = list(dict.fromkeys(sub["run"]))
        g = sub.groupby("run")
        x = np.arange(len(runs))
        width = 0.8 / len(metrics)
        for j, (col, label) in enumerate(metrics):
            mean = g[col].mean().reindex(runs)
            sd = g[col].std(ddof=1).reindex(runs).fillna(0.0)
            ax.bar(x + (j - 1) * width, mean, width, yerr=sd, capsize=3, label=label)
        nfolds = g["fold"].nunique().reindex(runs)
        ax.set_xticks(x, [f"{r}\n(n={n})" for r, n in zip(runs, nfolds)], rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_xlabel("model (folds)")
        ax.set_ylabel("Dice on outer validation fold")
        ax.set_title(f"{plane}: mean ± sd over folds")
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Stage 07 — rival models / losses, same folds, batches and epoch budget")
    png = save_figure(fig, base / "comparison.png")
    return csv, png


# ------------------------------------------------------------------------------------ entry points


@stage_run("train")
def run(cfg: dict[str, Any], run: dict[str, Any], *, force: bool = False) -> dict[str, Any]:
    """Train every requested (plane, fold, model, loss); returns per-plane mean Dice of each run name.

    ``{"planes": {plane: {"lesion_slice_dice", "dice_3d"}}`` for the first model/loss, ``"results"``
    (same, per run name), ``"runs"`` (run folders) and ``"comparison"`` (csv path, compare mode only).
    """
    rec = record.begin("train", cfg, run, defer_config=True)
    cfg, run = rec.cfg, rec.run
    train = settings(cfg)
    planes = parse_planes(train["planes"])
    # Stage-04 folds first: a missing earlier stage is reported before TensorFlow is imported.
    folds = parse_folds(train["folds"], read_subject_folds(run["work_dir"])["fold"].unique())
    models_ = model_names(cfg)
    losses_ = loss_names(cfg)
    described = record.read_record(run["work_dir"], "model")
    if described is not None:  # stage 07 trains the models stage 06 described
        missing = [m for m in models_ if m not in described.get("models", [])]
        if missing:
            raise StageInputError(
                f"{stage_dir(run['work_dir'], 'model')}: stage 06 did not describe {', '.join(missing)} "
                f"(it built {', '.join(described.get('models', []))}); run 06_model/build_model.py --models "
                f"{','.join(dict.fromkeys([*described.get('models', []), *missing]))} first")
    jobs = [(p, f, m, l) for p in planes for f in folds for m in models_ for l in losses_]
    check_runs(cfg, run, jobs, force=force)
    rec.save_config()  # only now: a refused stage 07 leaves the run's config.toml as it was
    compare = len(models_) * len(losses_) > 1
    infos: list[dict[str, Any]] = []
    for i, (plane, fold, model_name, loss_name) in enumerate(progress(jobs, desc="stage 07 runs", unit="run")):
        if i and "keras" in sys.modules:
            import keras

            keras.backend.clear_session()  # frees the previous run's graphs and weights
            gc.collect()
        infos.append(train_one(cfg, run, plane, fold, model_name, loss_name, force=force))
        write_results(run["work_dir"], model_name, loss_name, plane)
        if compare:
            write_comparison(run["work_dir"], infos)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for model_name in models_:
        for loss_name in losses_:
            name = run_name(model_name, loss_name)
            for plane in planes:
                mine = [r["metrics"] for r in infos if r["run_name"] == name and r["plane"] == plane]
                results.setdefault(name, {})[plane] = {
                    "lesion_slice_dice": float(np.nanmean([m["lesion_slice_dice"] for m in mine])),
                    "dice_3d": float(np.nanmean([m["dice_3d_mean"] for m in mine])),
                    "folds": len(mine),
                }
    first = run_name(models_[0], losses_[0])
    summary: dict[str, Any] = {
        "planes": results[first], "results": results,
        "runs": [str(run_dir(run["work_dir"], m, l, p, f)) for p, f, m, l in jobs],
    }
    if compare:
        summary["comparison"] = str(stage_dir(run["work_dir"], "train") / "comparison.csv")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Stage-07 command line (see ``--help``)."""
    parser = stage_parser(
        description="Stage 07 — train one model per plane and outer validation fold; evaluate on the fold.\n"
        "Several --model or --loss values = compare mode (comparison.csv + comparison.png).",
    )
    parser.add_argument("--plane", help="axial | sagittal | coronal | all (or a comma list)")
    parser.add_argument("--fold", help="outer validation fold: a number, a comma list or all")
    parser.add_argument("--model", help="model name(s), comma-separated (raxnet, unet, attention_unet, xception_unet)")
    parser.add_argument("--loss", help="loss name(s), comma-separated (default tversky_focal)")
    parser.add_argument("--epochs", type=int, help="maximum epochs; 0 with --init-weights adopts that weight set's "
                        "networks untrained (evaluated here, then fused and post-processed by stage 08)")
    parser.add_argument("--steps-per-epoch", type=int,
                        help="training batches per epoch ([arrays].steps_per_epoch; 0 = every lesion slice once)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                        help="continue interrupted runs from their checkpoint (default from config: yes)")
    parser.add_argument("--force", action="store_true", help="retrain runs that are already finished")
    parser.add_argument("--mixed-precision", action="store_true", default=None, help="mixed_float16 (GPU)")
    parser.add_argument("--xla", action="store_true", default=None, help="XLA jit_compile (GPU)")
    parser.add_argument("--init-weights", metavar="DIR",
                        help="start every plane from this weight set's model (fine-tuning, e.g. weights/demo); "
                             "the [model] must match it")
    args = parser.parse_args(argv)
    cfg, run_ = resolve(args)
    cfg = with_flags(cfg, "train", planes=args.plane, folds=args.fold, model=args.model, loss=args.loss,
                     epochs=args.epochs, resume=args.resume, mixed_precision=args.mixed_precision, xla=args.xla,
                     init_weights=args.init_weights)
    cfg = with_flags(cfg, "arrays", steps_per_epoch=args.steps_per_epoch)
    summary = run(cfg, run_, force=args.force)
    for name, planes in summary["results"].items():
        for plane, r in planes.items():
            print(f"{name} {plane}: lesion-slice Dice {r['lesion_slice_dice']:.3f}, "
                  f"3D Dice {r['dice_3d']:.3f} ({r['folds']} fold(s))")
    if "comparison" in summary:
        print(f"comparison: {summary['comparison']}")
    return 0
