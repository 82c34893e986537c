"""Stage 05: balanced, streaming training batches over the memory-mapped slice stacks of stage 03.

For a plane and a validation fold ``k`` (stage 04's ``<plane>_folds.csv``):

* **val** (outer validation) = the lesion + normal slices of fold ``k``'s subjects -- only for reporting;
* **inner_val** = about ``inner_val_fraction`` of the other folds' *subjects*, drawn with the run seed and
  stratified by lesion volume (subjects sorted by volume, split into equal groups, one drawn per group),
  used for early stopping / checkpoint selection;
* **train** = the lesion + normal slices of the remaining subjects.

"Batch distribution": every training batch holds ``round(batch_size * lesion_fraction)`` lesion slices and
the rest normal slices, and the lesion slices of each area bin (``area_bin`` of stage 04) number
``floor`` or ``ceil`` of ``n_lesion * p_bin`` per batch, where ``p_bin`` is the bin's share of the training
lesion slices. Unlike the original RAX-Net, no slice is dropped: by default an epoch has
``ceil(n_lesion_slices / n_lesion_per_batch)`` steps and every lesion slice is drawn at least once per epoch
(bins are cycled through fresh permutations; the few extra draws repeat slices). Epoch ``e``'s batches
come from ``numpy.random.SeedSequence([seed, e])`` alone, so they do not depend on worker timing.

Batches are served by :class:`keras.utils.PyDataset` subclasses (:mod:`raxnet.datasets`, imported on first
use so that this module, and ``--help``, do not load TensorFlow) that read single slices from memory
maps opened lazily (per worker process, at most ``max_open_stacks`` at a time), so memory does not
grow with the number of subjects. Slices are zero-padded (centred) to
``raxnet.planes.padded_shape(slice_shape, depth)`` and returned as float32 ``(B, H, W, 1)`` images and
masks.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from raxnet import record
from raxnet.augment import AugmentParams
from raxnet.augment import settings as augment_settings
from raxnet.cli_common import resolve, stage_parser
from raxnet.config import section, stage_dir, with_flags
from raxnet.errors import ConfigError, StageInputError
from raxnet.io import atomic_path, save_csv, save_json
from raxnet.log import get_logger, progress
from raxnet.planes import PLANES, check_plane, padded_shape
from raxnet.runs import read_subject_folds
from raxnet.stage import stage_run

if TYPE_CHECKING:
    from raxnet.datasets import BalancedSliceDataset, SliceDataset

log = get_logger(__name__)

#: ``[arrays]`` section of the run configuration.
DEFAULTS: dict[str, Any] = {
    "batch_size": 16,  # slices per training batch
    "lesion_fraction": 0.5,  # share of lesion slices in every training batch (rest: normal slices)
    "inner_val_fraction": 0.1,  # share of the training-fold subjects held out for early stopping
    "steps_per_epoch": 0,  # 0 = ceil(lesion slices / lesion slices per batch): each lesion slice once
    # lesion slices drawn (within their area bin) with weight n_s ** -subject_balance, n_s = the slices'
    # subject's training lesion slices in this plane: 0 = every slice alike (each once per pass), 1 = small
    # lesions' few slices as likely, together, as a large lesion's many
    "subject_balance": 0.0,
    # 2.5D input: each slice with this many neighbouring slices on either side as extra channels
    # (2 * context + 1 in all; 0 = 2D); the model's input channels carry it to stage 08 and raxnet predict
    "context": 0,
    "augment": True,  # augment training batches ([augment] strengths); never the validation sets
    # batches prepared at once: stage 07's tf.data feed (raxnet.datasets.as_tf_data, threads) and the
    # PyDataset's own workers when the datasets are handed to Keras directly
    "workers": 1,
    "use_multiprocessing": False,  # PyDataset only (not stage 07's feed): worker processes instead of threads
    "max_queue_size": 10,  # PyDataset only (not stage 07's feed): batches prepared ahead by the workers
    "max_open_stacks": 32,  # memory maps kept open per worker (bounds resident memory)
}

SET_COLUMNS = ["subject", "role", "fold"]
_DATASET_CLASSES = ("SliceDataset", "BalancedSliceDataset")


def __getattr__(name: str) -> Any:
    """``raxnet.batches.SliceDataset`` / ``BalancedSliceDataset`` live in :mod:`raxnet.datasets` (Keras)."""
    if name in _DATASET_CLASSES:
        from raxnet import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
UNBINNED = "unbinned"


# --------------------------------------------------------------------------- batch composition


def batch_quotas(bin_counts: Sequence[int], n_lesion: int, steps: int) -> np.ndarray:
    """Lesion slices per (batch, bin): ``(steps, n_bins)`` ints, each row summing to ``n_lesion``.

    Entry ``[j, b]`` is ``floor`` or ``ceil`` of ``n_lesion * p_b`` (``p_b`` = bin ``b``'s share of
    ``bin_counts``) and bin ``b``'s column sums to at least ``floor(steps * n_lesion * p_b)``, so with
    ``steps >= sum(bin_counts) / n_lesion`` every bin gets at least as many draws as it has slices.
    """
    counts = np.asarray(bin_counts, dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0 or counts.sum() <= 0 or (counts < 0).any():
        raise ValueError(f"bin counts must be non-negative with a positive sum, got {counts.tolist()}")
    if n_lesion < 0 or steps < 1:
        raise ValueError("n_lesion must be >= 0 and steps >= 1")
    expected = n_lesion * counts / counts.sum()
    base = np.floor(expected + 1e-9).astype(np.int64)
    frac = np.clip(expected - base, 0.0, None)
    # Spread the fractional parts over the epoch: bin b gets one extra slice in r_b batches, with
    # r_b from largest-remainder rounding of frac_b * steps (sum r_b = steps * (n_lesion - sum base)).
    extra_per_batch = int(n_lesion - base.sum())
    total_extra = extra_per_batch * steps
    want = frac * steps
    r = np.floor(want + 1e-9).astype(np.int64)
    left = total_extra - int(r.sum())
    if left > 0:
        order = np.lexsort((np.arange(r.size), -(want - r)))
        r[order[:left]] += 1
    quotas = np.tile(base, (steps, 1))
    # Round-robin: r_b <= steps consecutive positions land in distinct batches, and every batch gets
    # exactly extra_per_batch extras.
    pos = 0
    for b in range(counts.size):
        for _ in range(int(r[b])):
            quotas[pos % steps, b] += 1
            pos += 1
    return quotas


def _cycle(rng: np.random.Generator, n_items: int, length: int) -> np.ndarray:
    """``length`` draws from ``range(n_items)``: fresh permutations back to back (each item once per pass)."""
    if length <= 0 or n_items == 0:
        return np.zeros(0, dtype=np.int64)
    reps = -(-length // n_items)
    return np.concatenate([rng.permutation(n_items) for _ in range(reps)])[:length]


def subject_weights(subjects: Sequence[Any], balance: float) -> np.ndarray | None:
    """Sampling weight ``n_s ** -balance`` of each lesion slice (``n_s``: slices of its subject in
    ``subjects``), or None for ``balance`` 0 (uniform: the plain per-bin permutations)."""
    if not 0.0 <= float(balance) <= 1.0:
        raise ConfigError(f"arrays.subject_balance must be in [0, 1], got {balance}")
    if float(balance) == 0.0:
        return None
    codes, counts = np.unique(np.asarray(subjects), return_inverse=True, return_counts=True)[1:]
    return counts[codes].astype(float) ** -float(balance)


def epoch_plan(lesion_bins: np.ndarray, n_bins: int, n_normal_items: int, batch_size: int, n_lesion: int,
               steps: int, seed: int, epoch: int, lesion_weights: np.ndarray | None = None) -> np.ndarray:
    """Item indices ``(steps, batch_size)`` of one epoch; lesion items are ``0..L-1`` (bin of each in
    ``lesion_bins``), normal items ``L..L+N-1``. Depends only on ``(seed, epoch)`` and the inputs.

    Without ``lesion_weights`` each bin's slices are drawn in fresh permutations (each once per pass);
    with them, a bin's draws are independent and proportional to the slices' weights (the bins' quotas
    stay the same, so the lesion-area mix of the batches does not change)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))
    lesion_bins = np.asarray(lesion_bins, dtype=np.int64)
    n_les_items = lesion_bins.size
    counts = np.bincount(lesion_bins, minlength=n_bins)
    quotas = batch_quotas(counts, n_lesion, steps)[rng.permutation(steps)]
    plan = np.empty((steps, batch_size), dtype=np.int64)
    members = [np.flatnonzero(lesion_bins == b) for b in range(n_bins)]
    if lesion_weights is None:
        draws = [members[b][_cycle(rng, members[b].size, int(quotas[:, b].sum()))] for b in range(n_bins)]
    else:
        w = np.asarray(lesion_weights, dtype=float)
        if w.shape != lesion_bins.shape or not np.isfinite(w).all() or (w <= 0).any():
            raise ValueError("lesion_weights must be positive and finite, one per lesion item")
        draws = [rng.choice(members[b], int(quotas[:, b].sum()), p=w[members[b]] / w[members[b]].sum())
                 if members[b].size else members[b] for b in range(n_bins)]
    ptr = np.zeros(n_bins, dtype=np.int64)
    n_normal = batch_size - n_lesion
    normals = n_les_items + _cycle(rng, n_normal_items, steps * n_normal)
    for j in range(steps):
        row = []
        for b in range(n_bins):
            q = int(quotas[j, b])
            row.append(draws[b][ptr[b] : ptr[b] + q])
            ptr[b] += q
        row.append(normals[j * n_normal : (j + 1) * n_normal])
        plan[j] = rng.permutation(np.concatenate(row))
    return plan


# --------------------------------------------------------------------------- building the sets


@dataclass
class TrainingSets:
    """What the training stage needs for one plane and fold."""

    train: keras.utils.PyDataset  # yields (x, y) float32 (B, H, W, 1), balanced, redrawn per epoch
    inner_val: keras.utils.PyDataset  # deterministic: all slices of the inner-validation subjects
    input_shape: tuple[int, int, int]  # (H, W, C), padded; C = 2 * [arrays] context + 1
    slice_shape: tuple[int, int]  # unpadded (h, w)
    subjects: pd.DataFrame  # subject, role in {train, inner_val, val}, fold


def _bin_sort_key(label: str) -> tuple[float, str]:
    m = re.match(r"^\s*[\(\[]\s*([-+0-9.eE]+)", str(label))
    return (float(m.group(1)) if m else math.inf, str(label))


def _read_inputs(work: Path, plane: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Stage 04's fold tables and stage 03's index (rows of ``plane``), checked against each other and
    against stage 02's split and stage 03's errors when present; StageInputError names a bad file."""
    from raxnet.tables import INDEX, PLANE_FOLDS, SPLIT, SUBJECT_FOLDS, check_plane_folds, check_subjects_agree, read_table

    folds_dir = stage_dir(work, "folds")
    sf_path = folds_dir / "subject_folds.csv"
    subject_folds = read_subject_folds(work)
    split_path = stage_dir(work, "split") / "split.csv"
    split = None
    if split_path.is_file():
        split = read_table(split_path, SPLIT, columns=["subject", "set"])
        check_subjects_agree(subject_folds["subject"], sf_path, SUBJECT_FOLDS,
                             split.loc[split["set"] == "train", "subject"], split_path, "train subjects")
    pf_path = folds_dir / f"{plane}_folds.csv"
    plane_folds = read_table(pf_path, PLANE_FOLDS)
    check_plane_folds(plane_folds, pf_path, subject_folds, sf_path, split, split_path)
    index_path = stage_dir(work, "convert") / "index.csv"
    index = read_table(index_path, INDEX, columns=[c for c in INDEX.columns if c != "set"])
    index = index[index["plane"] == plane]
    errors_path = stage_dir(work, "convert") / "errors.csv"
    if errors_path.is_file():  # a subject without stacks must be one stage 03 could not convert
        failed = set(pd.read_csv(errors_path, dtype=str)["subject"]) if errors_path.stat().st_size else set()
        lost = sorted(set(subject_folds["subject"]) - set(index["subject"]) - failed)
        if lost:
            from raxnet.tables import rerun_hint

            raise StageInputError(f"{index_path}: no {plane} stacks for {len(lost)} subject(s) of {sf_path} "
                                  f"that {errors_path} does not list: {', '.join(lost[:5])}; {rerun_hint('convert')}")
    return subject_folds, plane_folds, index


def _pick_inner_val(subjects: pd.DataFrame, fraction: float, seed: int, fold: int) -> set[str]:
    """Stratified by lesion volume: sort by volume, split into n equal groups, draw one per group."""
    n = len(subjects)
    n_inner = min(n - 1, max(1, int(round(fraction * n))))
    ordered = subjects.sort_values(["lesion_voxels", "subject"], kind="stable")["subject"].to_numpy()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(fold), 5]))
    return {str(g[rng.integers(g.size)]) for g in np.array_split(ordered, n_inner)}


@dataclass
class _Plan:
    stage03: Path
    subjects: pd.DataFrame
    slices: pd.DataFrame  # plane_folds rows of the usable subjects + role
    slice_shape: tuple[int, int]
    target: tuple[int, int]
    stacks: pd.DataFrame  # index rows, one per subject
    missing: list[str]


def _plan_sets(cfg: dict, run: dict, plane: str, fold: int, depth: int) -> _Plan:
    opts = section(cfg, "arrays", DEFAULTS)
    check_plane(plane)
    work = Path(run["work_dir"])
    subject_folds, plane_folds, index = _read_inputs(work, plane)
    folds = sorted(int(f) for f in subject_folds["fold"].unique())
    if int(fold) not in folds:
        raise ConfigError(f"fold {fold} not in subject_folds.csv (folds {folds})")
    if not 0.0 < float(opts["inner_val_fraction"]) < 1.0:
        raise ConfigError("arrays.inner_val_fraction must be in (0, 1)")

    index = index.drop_duplicates("subject").set_index("subject")
    missing = sorted(set(subject_folds["subject"]) - set(index.index))
    if missing:
        log.warning("%d subject(s) of subject_folds.csv have no %s stacks (stage 03 errors?), left out: %s",
                    len(missing), plane, ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    sf = subject_folds[subject_folds["subject"].isin(index.index)].copy()
    sf["fold"] = sf["fold"].astype(int)
    volume = plane_folds.groupby("subject")["lesion_pixels"].sum()  # per-plane sum = lesion voxels
    sf["lesion_voxels"] = sf["subject"].map(volume).fillna(0).astype(np.int64)
    training = sf[sf["fold"] != int(fold)]
    if len(training) < 2:
        raise StageInputError(f"fold {fold}: need >= 2 training subjects with stacks, have {len(training)}")
    inner = _pick_inner_val(training, float(opts["inner_val_fraction"]), int(run["seed"]), int(fold))
    sf["role"] = np.where(sf["fold"] == int(fold), "val", np.where(sf["subject"].isin(inner), "inner_val", "train"))
    subjects = sf[SET_COLUMNS].sort_values("subject", kind="stable").reset_index(drop=True)

    shapes = index.loc[subjects["subject"], ["height", "width"]].drop_duplicates()
    if len(shapes) != 1:
        raise StageInputError(f"{plane} stacks have different slice shapes: {shapes.values.tolist()}")
    shape2d = (int(shapes.iloc[0, 0]), int(shapes.iloc[0, 1]))

    slices = plane_folds[plane_folds["subject"].isin(subjects["subject"])].copy()
    slices["role"] = slices["subject"].map(subjects.set_index("subject")["role"])
    slices["area_bin"] = slices["area_bin"].where(slices["kind"] == "lesion", "")
    slices.loc[(slices["kind"] == "lesion") & slices["area_bin"].isna(), "area_bin"] = UNBINNED
    slices = slices.sort_values(["subject", "slice"], kind="stable").reset_index(drop=True)
    n_slices = slices["subject"].map(index["n_slices"])
    if ((slices["slice"] < 0) | (slices["slice"] >= n_slices)).any():
        bad = slices[(slices["slice"] < 0) | (slices["slice"] >= n_slices)].iloc[0]
        raise StageInputError(f"{plane}_folds.csv: slice {bad['slice']} of {bad['subject']} outside its stack")
    stacks = index.loc[subjects["subject"]].reset_index()
    from raxnet.slices import IMAGE_DTYPE, MASK_DTYPE, check_stack

    stage03 = stage_dir(work, "convert")
    for r in stacks.itertuples(index=False):  # a truncated stack is refused here, not mid-training
        shape = (int(r.n_slices), int(r.height), int(r.width))
        check_stack(stage03 / r.image_path, shape, IMAGE_DTYPE)
        check_stack(stage03 / r.mask_path, shape, MASK_DTYPE)
    return _Plan(stage_dir(work, "convert"), subjects, slices, shape2d,
                 padded_shape(shape2d, int(depth)), stacks, missing)


def _dataset_kwargs(opts: dict) -> dict:
    return {"context": context_setting(opts), "max_open": int(opts["max_open_stacks"]), "workers": int(opts["workers"]),
            "use_multiprocessing": bool(opts["use_multiprocessing"]), "max_queue_size": int(opts["max_queue_size"])}


def _fixed_dataset(p: _Plan, rows: pd.DataFrame, batch_size: int, opts: dict) -> SliceDataset:
    from raxnet.datasets import SliceDataset

    sids = {s: i for i, s in enumerate(p.stacks["subject"])}
    return SliceDataset(
        [str(p.stage03 / q) for q in p.stacks["image_path"]], [str(p.stage03 / q) for q in p.stacks["mask_path"]],
        rows["subject"].map(sids).to_numpy(), rows["slice"].to_numpy(), p.target, batch_size, **_dataset_kwargs(opts),
    )


def context_setting(opts: dict) -> int:
    """``[arrays] context`` checked: neighbour slices on each side of a 2.5D input (0 = 2D)."""
    value = opts["context"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"arrays.context must be a whole number >= 0 (neighbour slices per side), got {value!r}")
    return value


def lesion_per_batch(batch_size: int, lesion_fraction: float) -> int:
    """Lesion slices per training batch (at least 1, leaving at least 1 normal slice when possible)."""
    if batch_size < 2:
        raise ConfigError("arrays.batch_size must be >= 2 (a batch holds lesion and normal slices)")
    if not 0.0 < lesion_fraction < 1.0:
        raise ConfigError("arrays.lesion_fraction must be in (0, 1)")
    return min(batch_size - 1, max(1, int(round(batch_size * lesion_fraction))))


def _train_dataset(p: _Plan, plane: str, opts: dict, seed: int, aug: AugmentParams | None) -> BalancedSliceDataset:
    rows = p.slices[p.slices["role"] == "train"]
    les = rows[rows["kind"] == "lesion"]
    nor = rows[rows["kind"] == "normal"]
    labels = sorted(les["area_bin"].unique(), key=_bin_sort_key)
    codes = {lab: i for i, lab in enumerate(labels)}
    batch_size = int(opts["batch_size"])
    n_lesion = lesion_per_batch(batch_size, float(opts["lesion_fraction"]))
    steps = int(opts["steps_per_epoch"]) or max(1, -(-len(les) // n_lesion))
    if steps < -(-len(les) // n_lesion):
        log.warning("steps_per_epoch=%d < %d: not every lesion slice is drawn each epoch", steps,
                    -(-len(les) // n_lesion))
    items = pd.concat([les, nor])
    sids = {s: i for i, s in enumerate(p.stacks["subject"])}
    from raxnet.datasets import BalancedSliceDataset

    return BalancedSliceDataset(
        [str(p.stage03 / q) for q in p.stacks["image_path"]], [str(p.stage03 / q) for q in p.stacks["mask_path"]],
        items["subject"].map(sids).to_numpy(), items["slice"].to_numpy(), les["area_bin"].map(codes).to_numpy(),
        labels, p.target, batch_size, n_lesion=n_lesion, steps=steps, seed=seed, plane=plane, augment=aug,
        lesion_weights=subject_weights(les["subject"].to_numpy(), float(opts["subject_balance"])),
        **_dataset_kwargs(opts),
    )


def build_training_sets(cfg: dict, run: dict, plane: str, fold: int, depth: int) -> TrainingSets:
    """Training (balanced, streaming) and inner-validation datasets for ``plane`` with fold ``fold`` held out."""
    return _sets_from_plan(_plan_sets(cfg, run, plane, fold, depth), cfg, plane, int(run["seed"]))


def _sets_from_plan(p: _Plan, cfg: dict, plane: str, seed: int) -> TrainingSets:
    opts = section(cfg, "arrays", DEFAULTS)
    aug = augment_settings(cfg) if opts["augment"] else None
    train = _train_dataset(p, plane, opts, seed, aug)
    inner = _fixed_dataset(p, p.slices[p.slices["role"] == "inner_val"], int(opts["batch_size"]), opts)
    return TrainingSets(train=train, inner_val=inner, input_shape=(*p.target, train.channels), slice_shape=p.slice_shape,
                        subjects=p.subjects)


def outer_validation_slices(cfg: dict, run: dict, plane: str, fold: int, depth: int) -> SliceDataset:
    """Deterministic dataset of fold ``fold``'s lesion + normal slices (the outer validation set)."""
    opts = section(cfg, "arrays", DEFAULTS)
    p = _plan_sets(cfg, run, plane, fold, depth)
    return _fixed_dataset(p, p.slices[p.slices["role"] == "val"], int(opts["batch_size"]), opts)


# --------------------------------------------------------------------------- stage 05 report


def composition(ds: BalancedSliceDataset, epoch: int = 0) -> pd.DataFrame:
    """One row per batch of ``epoch``: epoch, batch, n_lesion, n_normal, and lesion slices per area bin."""
    plan = ds.plan(epoch)
    is_les = plan < ds.n_lesion_items
    bins = np.where(is_les, ds.lesion_bins[np.minimum(plan, ds.n_lesion_items - 1)], -1)
    table = {"epoch": np.full(plan.shape[0], epoch), "batch": np.arange(plan.shape[0]),
             "n_lesion": is_les.sum(axis=1), "n_normal": (~is_les).sum(axis=1)}
    for b, label in enumerate(ds.bin_labels):
        table[f"bin_{label}"] = (bins == b).sum(axis=1)
    return pd.DataFrame(table)


@stage_run("arrays")
def run(cfg: dict, run: dict, plane: str | None = None, fold: int | None = None, depth: int | None = None,
        materialise: bool = False) -> dict[str, Any]:
    """Stage 05 entry point: write the report of each (plane, fold); ``None`` = every plane with a
    ``<plane>_folds.csv`` and every fold of ``subject_folds.csv``. ``depth`` defaults to ``[model] depth``
    so the padding matches the network the configuration trains."""
    from raxnet.models import DEFAULTS as MODEL_DEFAULTS

    if depth is not None:
        cfg = with_flags(cfg, "model", depth=int(depth))
    rec = record.begin("arrays", cfg, run)
    cfg, run = rec.cfg, rec.run
    depth = int(section(cfg, "model", MODEL_DEFAULTS)["depth"])
    work = Path(run["work_dir"])
    folds_dir = stage_dir(work, "folds")
    if plane is None or plane == "all":
        planes = [p for p in PLANES if (folds_dir / f"{p}_folds.csv").is_file()]
        if not planes:
            raise StageInputError(f"{folds_dir}: no <plane>_folds.csv (run stage 04 first)")
    else:
        planes = [check_plane(plane)]
    if fold is None or int(fold) == 0:
        folds = sorted(int(f) for f in read_subject_folds(work)["fold"].unique())
    else:
        folds = [int(fold)]
    reports = [run_one(cfg, run, p, k, depth, materialise) for p in planes for k in folds]
    rec.finish([Path(r["dir"]) / name for r in reports for name in ("sets.csv", "batches.csv", "summary.json")])
    return {"reports": reports, "dirs": [r["dir"] for r in reports],
            "steps_per_epoch": reports[0]["steps_per_epoch"], "input_shape": reports[0]["input_shape"],
            "lesion_slices_never_drawn": int(sum(r["lesion_slices_never_drawn"] for r in reports))}


def run_one(cfg: dict, run: dict, plane: str, fold: int, depth: int = 4,
            materialise: bool = False) -> dict[str, Any]:
    """Write ``05_prepare_arrays/<plane>/fold_<k>/`` (sets.csv, batches.csv, summary.json[, x/y .npy])."""
    plan = _plan_sets(cfg, run, plane, fold, depth)
    sets = _sets_from_plan(plan, cfg, plane, int(run["seed"]))
    ds = sets.train
    out = stage_dir(run["work_dir"], "arrays") / plane / f"fold_{int(fold)}"
    out.mkdir(parents=True, exist_ok=True)
    save_csv(sets.subjects, out / "sets.csv")
    comp = composition(ds, 0)
    save_csv(comp, out / "batches.csv")

    train_counts = np.bincount(ds.lesion_bins, minlength=len(ds.bin_labels))
    drawn = ds.plan(0)
    les_drawn = drawn[drawn < ds.n_lesion_items]
    drawn_counts = np.bincount(ds.lesion_bins[les_drawn], minlength=len(ds.bin_labels))
    expected = ds.n_lesion * train_counts / train_counts.sum()
    bins = {}
    for b, label in enumerate(ds.bin_labels):
        col = comp[f"bin_{label}"]
        bins[label] = {
            "train_slices": int(train_counts[b]), "train_fraction": round(float(train_counts[b] / train_counts.sum()), 6),
            "drawn": int(drawn_counts[b]), "drawn_fraction": round(float(drawn_counts[b] / drawn_counts.sum()), 6),
            "expected_per_batch": round(float(expected[b]), 4),
            "min_per_batch": int(col.min()), "max_per_batch": int(col.max()),
        }
    never = int(ds.n_lesion_items - np.unique(les_drawn).size)
    nor_drawn = np.unique(drawn[drawn >= ds.n_lesion_items]).size
    roles = sets.subjects["role"].value_counts()
    summary = {
        "plane": plane, "fold": int(fold), "depth": int(depth), "seed": int(run["seed"]),
        "input_shape": list(sets.input_shape), "slice_shape": list(sets.slice_shape),
        "batch_size": ds.batch_size, "lesion_per_batch": ds.n_lesion, "normal_per_batch": ds.batch_size - ds.n_lesion,
        "steps_per_epoch": ds.steps,
        "subjects": {r: int(roles.get(r, 0)) for r in ("train", "inner_val", "val")},
        "train_lesion_slices": int(ds.n_lesion_items), "train_normal_slices": int(ds.n_normal_items),
        "inner_val_slices": int(sets.inner_val.item_stack.size),
        "lesion_slices_never_drawn": never,
        "normal_slices_drawn_fraction": round(nor_drawn / ds.n_normal_items, 6),
        "bins": bins, "augment": asdict(ds.augment) if ds.augment is not None else None,
        "subjects_without_stacks": plan.missing,
    }
    if never:
        log.warning("%d lesion slice(s) not drawn in epoch 0 (steps_per_epoch too small)", never)
    if materialise:
        summary["materialised"] = _materialise(ds, out)
    save_json(summary, out / "summary.json")
    log.info("%s fold %d: %d steps x %d (%d lesion + %d normal), input %s -> %s", plane, fold, ds.steps,
             ds.batch_size, ds.n_lesion, ds.batch_size - ds.n_lesion, sets.input_shape, out)
    return {"dir": str(out), "plane": plane, "fold": int(fold), "steps_per_epoch": ds.steps,
            "input_shape": list(sets.input_shape),
            "lesion_slices_never_drawn": never}


def _materialise(ds: BalancedSliceDataset, out: Path) -> dict[str, Any]:
    """Write epoch 0's batches as ``x_epoch0.npy`` (float32, (steps*B, H, W, C)) and ``y_epoch0.npy``
    ((steps*B, H, W, 1)), streamed."""
    n = ds.steps * ds.batch_size
    shapes = {"x_epoch0.npy": (n, *ds.target_shape, ds.channels), "y_epoch0.npy": (n, *ds.target_shape, 1)}
    ds.set_epoch(0)
    files = {}
    with atomic_path(out / "x_epoch0.npy", suffix=".npy") as xt, atomic_path(out / "y_epoch0.npy", suffix=".npy") as yt:
        xs = np.lib.format.open_memmap(xt, mode="w+", dtype=np.float32, shape=shapes["x_epoch0.npy"])
        ys = np.lib.format.open_memmap(yt, mode="w+", dtype=np.float32, shape=shapes["y_epoch0.npy"])
        for j in progress(range(ds.steps), desc="05 materialise", unit="batch"):
            x, y = ds[j]
            xs[j * ds.batch_size : (j + 1) * ds.batch_size] = x
            ys[j * ds.batch_size : (j + 1) * ds.batch_size] = y
        xs.flush(), ys.flush()
        del xs, ys
    for name in ("x_epoch0.npy", "y_epoch0.npy"):
        files[name] = {"shape": list(shapes[name]), "dtype": "float32", "bytes": (out / name).stat().st_size}
    return files


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``05_prepare_arrays/prepare_arrays.py --work-dir W --plane axial --fold 1 [--depth 4] ...``."""
    parser = stage_parser(
        description="Stage 05 - balanced streaming training batches for one plane and validation fold.\n\n"
        "Reads 03_moving_converting/index.csv + stacks and 04_cross_validation/{subject_folds,<plane>_folds}.csv;\n"
        "writes 05_prepare_arrays/<plane>/fold_<k>/sets.csv, batches.csv, summary.json.",
    )
    parser.add_argument("--plane", default="all", help="axial, sagittal, coronal or all (default: all)")
    parser.add_argument("--fold", type=int, default=0, help="validation fold k (default 0 = every fold)")
    parser.add_argument("--depth", type=int, help="network down-sampling depth: pad to 2**depth (default: [model] depth)")
    parser.add_argument("--batch-size", type=int, help="slices per training batch")
    parser.add_argument("--steps-per-epoch", type=int, help="0 = every lesion slice once per epoch")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="augment the training batches ([augment] strengths; default on)")
    parser.add_argument("--materialise", action="store_true", help="also write epoch 0 as x/y .npy arrays")
    args = parser.parse_args(argv)
    cfg, run_cfg = resolve(args)
    if args.plane != "all":
        try:
            check_plane(args.plane)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    cfg = with_flags(cfg, "arrays", batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch,
                     augment=args.augment)
    summary = run(cfg, run_cfg, plane=args.plane, fold=args.fold, depth=args.depth, materialise=args.materialise)
    for r in summary["reports"]:
        print(f"{r['plane']} fold {r['fold']}: {r['steps_per_epoch']} steps/epoch, input shape "
              f"{tuple(r['input_shape'])}, {r['lesion_slices_never_drawn']} lesion slice(s) never drawn -> {r['dir']}")
    return 0
