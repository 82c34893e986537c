"""Batch composition of stage 05 (pure NumPy, no TensorFlow): the ``[arrays]`` settings, per-batch bin
quotas and the seeded item plan of an epoch. :mod:`raxnet.batches` serves these plans as Keras datasets.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: ``[arrays]`` section of the run configuration.
DEFAULTS: dict[str, Any] = {
    "batch_size": 16,  # slices per training batch
    "lesion_fraction": 0.5,  # share of lesion slices in every training batch (rest: normal slices)
    "inner_val_fraction": 0.1,  # share of the training-fold subjects held out for early stopping
    "steps_per_epoch": 0,  # 0 = ceil(lesion slices / lesion slices per batch): each lesion slice once
    "augment": False,  # augment training batches (flip, affine, intensity); never the validation sets
    "flip_prob": 0.5,  # left-right flip probability (axial, coronal)
    "rotate_deg": 10.0,  # max rotation in degrees
    "scale": 0.1,  # max relative zoom
    "shift_px": 8.0,  # max shift in pixels per axis
    "intensity_scale": 0.1,  # max relative gain change of the foreground
    "intensity_shift": 0.05,  # max offset added to the foreground (normalised units)
    "bias": 0.1,  # max amplitude of each smooth bias-field term
    "workers": 1,  # PyDataset workers (threads, or processes with use_multiprocessing)
    "use_multiprocessing": False,  # worker processes instead of threads
    "max_queue_size": 10,  # batches prepared ahead by the workers
    "max_open_stacks": 32,  # memory maps kept open per worker (bounds resident memory)
}


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


def epoch_plan(lesion_bins: np.ndarray, n_bins: int, n_normal_items: int, batch_size: int, n_lesion: int,
               steps: int, seed: int, epoch: int) -> np.ndarray:
    """Item indices ``(steps, batch_size)`` of one epoch; lesion items are ``0..L-1`` (bin of each in
    ``lesion_bins``), normal items ``L..L+N-1``. Depends only on ``(seed, epoch)`` and the inputs."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))
    lesion_bins = np.asarray(lesion_bins, dtype=np.int64)
    n_les_items = lesion_bins.size
    counts = np.bincount(lesion_bins, minlength=n_bins)
    quotas = batch_quotas(counts, n_lesion, steps)[rng.permutation(steps)]
    plan = np.empty((steps, batch_size), dtype=np.int64)
    members = [np.flatnonzero(lesion_bins == b) for b in range(n_bins)]
    draws = [members[b][_cycle(rng, members[b].size, int(quotas[:, b].sum()))] for b in range(n_bins)]
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
