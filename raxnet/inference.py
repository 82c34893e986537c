"""The one way to predict a volume with 2D plane models (stage 07's outer evaluation, stage 08, predict).

:func:`predict_probabilities` takes a raw (or already normalised) volume and, per plane, one or more
plane models (loaded Keras models, or ``.keras`` paths / :class:`raxnet.runs.FoldModel` loaded once
through a :class:`ModelCache`). It checks that the volume's slices fit each model's input, predicts every
slice (:func:`predict_plane`), optionally with left-right flip test-time augmentation, and averages the
models of a plane (fold ensembling). The result is one probability volume per plane, the input's shape.

:func:`predict_plane`: the volume must already be normalised with :func:`raxnet.intensity.normalise`.
Each slice of the plane is zero-padded (centred) to the model's input size, predicted in large batches,
cropped back exactly and restacked. Slices with no foreground at all (outside the head) are not sent
through the network: their probability is 0. A 2.5D model (``2 * context + 1`` input channels, ``[arrays]
context``) gets each slice with its ``context`` neighbours on either side as channels, centre slice in the
middle, as in training; the number of channels is read from the model, so a weight set needs no extra setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from raxnet.errors import InputError, StageInputError
from raxnet.log import get_logger
from raxnet.planes import (LR_AXIS, context_indices, context_of, crop_slices, from_slices, pad_slices, slice_shape,
                           to_slices)

log = get_logger(__name__)


def _image_input_shape(model: Any) -> tuple:
    """``(batch, H, W, C)`` of the model's (first) input: the slice."""
    shape = model.input_shape
    return tuple(shape[0] if isinstance(shape, list) else shape)


def model_slice_shape(model: Any) -> tuple[int, int]:
    """The (H, W) a plane model was built for (models are built with a fixed input size)."""
    shape = _image_input_shape(model)
    if shape[1] is None or shape[2] is None:
        raise ValueError("plane models must have a fixed input size (H, W, C)")
    return int(shape[1]), int(shape[2])


def model_context(model: Any) -> int:
    """Neighbour slices on each side a plane model takes as input channels (0: a 2D model)."""
    return context_of(int(_image_input_shape(model)[-1]))


def context_batch(stack: np.ndarray, index: np.ndarray, context: int, target: tuple[int, int]) -> np.ndarray:
    """Network input ``(len(index), *target, 2 * context + 1)`` float32: slices ``index`` of ``stack``
    (n, H, W) with their neighbours as channels, zero-padded (centred) to ``target``."""
    x = np.asarray(stack[context_indices(stack.shape[0], index, context)], dtype=np.float32)  # (m, C, H, W)
    return np.ascontiguousarray(np.moveaxis(pad_slices(x, target), 1, -1))


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
    context = model_context(model)
    probs = np.zeros((n, h, w), dtype=np.float32)
    busy = np.flatnonzero(stack.reshape(n, -1).max(axis=1) > 0)
    lr_axis = LR_AXIS[plane] if flip_tta else None
    for start in range(0, busy.size, batch_size):
        idx = busy[start : start + batch_size]
        x = context_batch(stack, idx, context, target)
        p = _predict_padded(model, x, batch_size)
        if lr_axis is not None:
            flipped = np.flip(x, axis=1 + lr_axis)
            p = 0.5 * (p + np.flip(_predict_padded(model, flipped, batch_size), axis=1 + lr_axis))
        probs[idx] = crop_slices(p[..., 0], (h, w))
    return from_slices(probs, plane)


def padded_batch_size(n: int, batch_size: int) -> int:
    """The batch size a batch of ``n`` (<= ``batch_size``) slices is predicted at: the next power of two
    (1, 2, 4, ...) or ``batch_size``, whichever is smaller."""
    return min(1 << max(int(n) - 1, 0).bit_length(), max(int(batch_size), int(n)))


def _predict_padded(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    # Each new batch shape traces the model's predict function again (TensorFlow warns after five), and a scan's
    # last batch has any size; padded to a power of two, a model sees at most log2(batch_size) + 2 shapes over
    # any number of scans. The network treats slices independently in inference: the zeros change no real slice.
    n = x.shape[0]
    size = padded_batch_size(n, batch_size)
    if size != n:
        x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), dtype=x.dtype)])
    return _predict_batch(model, x)[:n]


def _predict_batch(model: Any, x: np.ndarray) -> np.ndarray:
    # predict_on_batch reuses one compiled predict function and avoids predict()'s per-call set-up.
    return np.asarray(model.predict_on_batch(x), dtype=np.float32)


def load_model(path: str | Path) -> Any:
    """Load a ``.keras`` plane model for inference (no compile; custom objects registered by raxnet)."""
    import keras

    import raxnet.losses  # noqa: F401  (registers the losses a training checkpoint may reference)

    return keras.saving.load_model(str(path), compile=False)


class ModelCache:
    """Loads each ``.keras`` file once (TensorFlow graph building is the slow part)."""

    def __init__(self) -> None:
        self._models: dict[Path, Any] = {}

    def get(self, path: str | Path) -> Any:
        """The loaded model; StageInputError naming the file when it cannot be loaded."""
        path = Path(path)
        if path not in self._models:
            log.info("loading %s", path)
            try:
                self._models[path] = load_model(path)
            except Exception as exc:  # Keras raises many types for a truncated or foreign file
                raise StageInputError(f"{path}: cannot load model ({type(exc).__name__}: {exc})") from None
        return self._models[path]

    def keep_only(self, paths: Iterable[str | Path]) -> None:
        """Forget every model not in ``paths`` (frees a finished fold's models)."""
        keep = {Path(p) for p in paths}
        for p in list(self._models):
            if p not in keep:
                del self._models[p]


def _resolve(item: Any, cache: ModelCache | None) -> tuple[Any, str]:
    """(loaded model, name for messages) of a loaded model, a ``.keras`` path or a FoldModel."""
    from raxnet.runs import FoldModel

    path = item.path if isinstance(item, FoldModel) else item
    if isinstance(path, (str, Path)):
        if cache is None:
            raise ValueError("model paths need a ModelCache")
        return cache.get(path), str(path)
    return item, getattr(item, "name", "model")


def predict_probabilities(
    volume: np.ndarray,
    models: Mapping[str, Sequence[Any]],
    *,
    cache: ModelCache | None = None,
    batch_size: int = 32,
    tta: bool = False,
    normalised: bool = False,
    source: str = "volume",
    affine: np.ndarray | None = None,
    brain_mask_mm: float | None = None,
    bias_correct: bool = False,
) -> dict[str, np.ndarray]:
    """Probability volume per plane: the mean over that plane's models, float32, ``volume``'s shape.

    ``models[plane]`` lists loaded models, ``.keras`` paths or FoldModels (paths load through ``cache``).
    ``volume`` is prepared here unless ``normalised``: the brain-mask step when ``brain_mask_mm`` is not
    None (needs the volume's ``affine``), N4 when ``bias_correct``, then normalisation
    (:func:`raxnet.brainmask.prepare`, as in stage 03). A volume whose slices are larger than a model's
    input is refused with an InputError naming ``source`` and the model.
    """
    from raxnet.brainmask import prepare

    if normalised:
        volume = np.asarray(volume, dtype=np.float32)
    else:
        if (brain_mask_mm is not None or bias_correct) and affine is None:
            raise ValueError("the brain-mask and bias-correction steps need the volume's affine")
        volume = prepare(volume, affine, brain_mask_mm, source=source, bias_correct=bias_correct)
    out: dict[str, np.ndarray] = {}
    for plane, plane_models in models.items():
        if not plane_models:
            raise ValueError(f"no model for plane {plane}")
        acc = np.zeros(volume.shape, dtype=np.float32)
        for item in plane_models:
            model, name = _resolve(item, cache)
            need, have = slice_shape(volume.shape, plane), model_slice_shape(model)
            if need[0] > have[0] or need[1] > have[1]:
                raise InputError(f"{source}: {plane} slices {need} are larger than the input {have} of {name}")
            acc += predict_plane(model, volume, plane, batch_size=batch_size, flip_tta=tta)
        out[plane] = acc / len(plane_models)
    return out
