"""Slice-wise prediction of a whole volume with a 2D plane model (shared by stages 07, 08 and predict).

The volume must already be normalised with :func:`raxnet.intensity.normalise`. Each slice of the plane
is zero-padded (centred) to the model's input size, predicted in large batches, cropped back exactly
and restacked, so the returned probability volume has the input volume's shape. Slices with no
foreground at all (outside the head) are not sent through the network: their probability is 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from raxnet.planes import crop_slices, from_slices, pad_slices, to_slices

#: In-plane axis (of the 2D slice) that is left-right, where left-right lies in the plane.
_LR_AXIS = {"axial": 0, "coronal": 0, "sagittal": None}


def model_slice_shape(model: Any) -> tuple[int, int]:
    """The (H, W) a plane model was built for (models are built with a fixed input size)."""
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    if shape[1] is None or shape[2] is None:
        raise ValueError("plane models must have a fixed input size (H, W, 1)")
    return int(shape[1]), int(shape[2])


def predict_plane(
    model: Any,
    volume: np.ndarray,
    plane: str,
    *,
    batch_size: int = 32,
    flip_tta: bool = False,
) -> np.ndarray:
    """Probability volume (float32, same shape as ``volume``) from one plane model.

    ``flip_tta`` averages with the prediction of the left-right flipped slices (axial and coronal
    planes; the sagittal plane has no in-plane left-right axis, so it is predicted once).
    """
    stack = to_slices(np.asarray(volume, dtype=np.float32), plane)
    n, h, w = stack.shape
    target = model_slice_shape(model)
    probs = np.zeros((n, h, w), dtype=np.float32)
    busy = np.flatnonzero(stack.reshape(n, -1).max(axis=1) > 0)
    lr_axis = _LR_AXIS[plane] if flip_tta else None
    for start in range(0, busy.size, batch_size):
        idx = busy[start : start + batch_size]
        x = pad_slices(stack[idx], target)[..., None]
        p = _predict_batch(model, x)
        if lr_axis is not None:
            flipped = np.flip(x, axis=1 + lr_axis)
            p = 0.5 * (p + np.flip(_predict_batch(model, flipped), axis=1 + lr_axis))
        probs[idx] = crop_slices(p[..., 0], (h, w))
    return from_slices(probs, plane)


def _predict_batch(model: Any, x: np.ndarray) -> np.ndarray:
    # predict_on_batch reuses one compiled predict function and avoids predict()'s per-call set-up.
    return np.asarray(model.predict_on_batch(x), dtype=np.float32)


def load_model(path: str | Path) -> Any:
    """Load a ``.keras`` plane model for inference (no compile; custom objects registered by raxnet)."""
    import keras

    import raxnet.losses  # noqa: F401  (registers the losses a training checkpoint may reference)

    return keras.saving.load_model(str(path), compile=False)
