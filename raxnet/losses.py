"""Segmentation losses and the Dice metric (keras.ops only, registered for ``.keras`` serialisation).

Conventions shared by every loss here:

* ``y_true`` is the binary mask, ``y_pred`` the sigmoid probability, same shape (B, H, W, 1).
* **Reduction: global per batch.** Sums (TP, FP, FN) run over every pixel of every slice of the batch
  and give one scalar, as in the original RAX-Net code (``K.flatten`` of the whole batch). Most
  training slices hold no lesion; a per-sample Dice would score every empty slice as 0 or 1 by the
  smoothing constant alone, whereas the global sum weights each pixel equally and stays informative.
  Pixel-wise terms (focal, BCE) are the mean over all pixels of the batch. ``sample_weight`` is
  therefore not supported (a scalar loss cannot be weighted per sample). The one exception,
  ``tversky_focal_slice``, adds a per-slice term over the *lesion* slices only (:func:`slice_tversky_loss`).
* **Smoothing:** ``smooth = 1.0`` is added to numerator and denominator of the Dice and Tversky
  indices, so an all-empty mask predicted empty scores 1 (loss 0) and the gradient is finite.
* Probabilities are clipped to ``[eps, 1 - eps]`` with ``eps = keras.config.epsilon()`` (1e-7) inside
  logarithms only.

Tversky index ``TI = (TP + s) / (TP + alpha*FP + beta*FN + s)`` with ``alpha = 0.3`` weighting false
positives and ``beta = 0.7`` false negatives (recall is favoured: lesions are small).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

SMOOTH = 1.0

LOSS_NAMES: tuple[str, ...] = ("dice", "tversky", "focal", "tversky_focal", "focal_tversky", "bce_dice",
                               "tversky_focal_slice")
DEFAULT_LOSS = "tversky_focal"


def _flat(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    return ops.reshape(y_true, (-1,)), ops.reshape(y_pred, (-1,))


def dice_index(y_true: Any, y_pred: Any, smooth: float = SMOOTH) -> Any:
    """Soft Dice index over the whole batch: ``(2 sum(t p) + s) / (sum t + sum p + s)``."""
    t, p = _flat(y_true, y_pred)
    inter = ops.sum(t * p)
    return (2.0 * inter + smooth) / (ops.sum(t) + ops.sum(p) + smooth)


def tversky_index(y_true: Any, y_pred: Any, alpha: float = 0.3, beta: float = 0.7, smooth: float = SMOOTH) -> Any:
    """Soft Tversky index over the whole batch; ``alpha`` weights false positives, ``beta`` false negatives."""
    t, p = _flat(y_true, y_pred)
    tp = ops.sum(t * p)
    fp = ops.sum((1.0 - t) * p)
    fn = ops.sum(t * (1.0 - p))
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def slice_tversky_loss(y_true: Any, y_pred: Any, alpha: float = 0.3, beta: float = 0.7,
                       smooth: float = SMOOTH) -> Any:
    """Mean of ``1 - TI`` over the slices of the batch that hold lesion pixels (inputs ``(B, H, W, 1)``);
    the global ``1 - TI`` when none does. Each lesion slice weighs the same, however small its lesion."""
    t = ops.cast(y_true, "float32")
    p = ops.cast(y_pred, "float32")
    axes = (1, 2, 3)
    tp = ops.sum(t * p, axis=axes)
    fp = ops.sum((1.0 - t) * p, axis=axes)
    fn = ops.sum(t * (1.0 - p), axis=axes)
    per_slice = 1.0 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    has = ops.cast(ops.sum(t, axis=axes) > 0, "float32")
    n = ops.sum(has)
    mean = ops.sum(has * per_slice) / ops.maximum(n, 1.0)
    return ops.where(n > 0, mean, 1.0 - tversky_index(y_true, y_pred, alpha, beta, smooth))


def binary_focal(y_true: Any, y_pred: Any, alpha: float = 0.8, gamma: float = 2.0) -> Any:
    """Class-balanced binary focal loss (Lin et al. 2017), mean over all pixels of the batch.

    ``-alpha t (1-p)^gamma log p - (1-alpha) (1-t) p^gamma log(1-p)``; ``alpha`` weights the lesion class.
    """
    t, p = _flat(y_true, y_pred)
    eps = keras.config.epsilon()
    p = ops.clip(p, eps, 1.0 - eps)
    pos = -alpha * t * ops.power(1.0 - p, gamma) * ops.log(p)
    neg = -(1.0 - alpha) * (1.0 - t) * ops.power(p, gamma) * ops.log(1.0 - p)
    return ops.mean(pos + neg)


def binary_crossentropy(y_true: Any, y_pred: Any) -> Any:
    """Mean binary cross-entropy over all pixels of the batch."""
    t, p = _flat(y_true, y_pred)
    eps = keras.config.epsilon()
    p = ops.clip(p, eps, 1.0 - eps)
    return ops.mean(-(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p)))


class _SegLoss(keras.losses.Loss):
    """Base: a global-per-batch scalar loss with its parameters in ``get_config``."""

    #: Parameter names stored in the config (set by subclasses).
    params: tuple[str, ...] = ()

    def __init__(self, name: str | None = None, reduction: str = "sum_over_batch_size", dtype: Any = None, **kwargs: Any):
        super().__init__(name=name or self.default_name, reduction=reduction, dtype=dtype)
        for key in self.params:
            setattr(self, key, float(kwargs.pop(key, getattr(type(self), key))))
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected arguments {sorted(kwargs)}")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({key: getattr(self, key) for key in self.params})
        return config


@keras.saving.register_keras_serializable(package="raxnet")
class DiceLoss(_SegLoss):
    """``1 - Dice`` (soft, global per batch, smoothing ``smooth``)."""

    default_name = "dice"
    params = ("smooth",)
    smooth = SMOOTH

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return 1.0 - dice_index(y_true, y_pred, self.smooth)


@keras.saving.register_keras_serializable(package="raxnet")
class TverskyLoss(_SegLoss):
    """``1 - TI`` with ``alpha`` = 0.3 on false positives, ``beta`` = 0.7 on false negatives."""

    default_name = "tversky"
    params = ("alpha", "beta", "smooth")
    alpha, beta, smooth = 0.3, 0.7, SMOOTH

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return 1.0 - tversky_index(y_true, y_pred, self.alpha, self.beta, self.smooth)


@keras.saving.register_keras_serializable(package="raxnet")
class BinaryFocalLoss(_SegLoss):
    """Class-balanced binary focal loss, ``alpha`` = 0.8 on the lesion class, ``gamma`` = 2."""

    default_name = "focal"
    params = ("alpha", "gamma")
    alpha, gamma = 0.8, 2.0

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return binary_focal(y_true, y_pred, self.alpha, self.gamma)


@keras.saving.register_keras_serializable(package="raxnet")
class TverskyFocalLoss(_SegLoss):
    """The original RAX-Net "FocalTversky": Tversky loss + binary focal loss (a sum, not a power)."""

    default_name = "tversky_focal"
    params = ("alpha", "beta", "smooth", "focal_alpha", "focal_gamma")
    alpha, beta, smooth, focal_alpha, focal_gamma = 0.3, 0.7, SMOOTH, 0.8, 2.0

    def call(self, y_true: Any, y_pred: Any) -> Any:
        tversky = 1.0 - tversky_index(y_true, y_pred, self.alpha, self.beta, self.smooth)
        return tversky + binary_focal(y_true, y_pred, self.focal_alpha, self.focal_gamma)


@keras.saving.register_keras_serializable(package="raxnet")
class SliceTverskyFocalLoss(_SegLoss):
    """``tversky_focal`` with part of the Tversky term per lesion slice, for small lesions.

    ``(1 - slice_weight) * (1 - TI over the batch) + slice_weight * mean over the lesion slices of (1 - TI of
    the slice)`` (:func:`slice_tversky_loss`) ``+ focal``. With the global term alone, missing a 10-pixel lesion
    in a batch that also holds a well-found 2,000-pixel one adds 0.0035 to the loss (``1 - 2001/2008``); averaged
    per lesion slice, missing it costs as much as missing the large one. The global term stays so that false positives on the batch's
    lesion-free slices (half of a balanced batch) are still penalised (module doc: a per-slice index on an
    empty slice is decided by the smoothing constant).
    """

    default_name = "tversky_focal_slice"
    params = ("alpha", "beta", "smooth", "focal_alpha", "focal_gamma", "slice_weight")
    alpha, beta, smooth, focal_alpha, focal_gamma, slice_weight = 0.3, 0.7, SMOOTH, 0.8, 2.0, 0.5

    def call(self, y_true: Any, y_pred: Any) -> Any:
        whole = 1.0 - tversky_index(y_true, y_pred, self.alpha, self.beta, self.smooth)
        per_slice = slice_tversky_loss(y_true, y_pred, self.alpha, self.beta, self.smooth)
        tversky = (1.0 - self.slice_weight) * whole + self.slice_weight * per_slice
        return tversky + binary_focal(y_true, y_pred, self.focal_alpha, self.focal_gamma)


@keras.saving.register_keras_serializable(package="raxnet")
class FocalTverskyLoss(_SegLoss):
    """Focal Tversky loss of Abraham & Khan 2019: ``(1 - TI) ** gamma`` with ``gamma`` = 0.75.

    ``gamma`` here is the exponent itself; the paper writes ``(1 - TI) ** (1/gamma_paper)`` with
    ``gamma_paper = 4/3``, the same value. ``1 - TI`` is floored at 1e-12 before the power so the
    gradient of ``x ** 0.75`` (infinite at 0) stays finite for a perfect prediction.
    """

    default_name = "focal_tversky"
    params = ("alpha", "beta", "smooth", "gamma")
    alpha, beta, smooth, gamma = 0.3, 0.7, SMOOTH, 0.75

    def call(self, y_true: Any, y_pred: Any) -> Any:
        loss = 1.0 - tversky_index(y_true, y_pred, self.alpha, self.beta, self.smooth)
        return ops.power(ops.maximum(loss, 1e-12), self.gamma)


@keras.saving.register_keras_serializable(package="raxnet")
class BCEDiceLoss(_SegLoss):
    """Mean binary cross-entropy + Dice loss (both global per batch)."""

    default_name = "bce_dice"
    params = ("smooth",)
    smooth = SMOOTH

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return binary_crossentropy(y_true, y_pred) + 1.0 - dice_index(y_true, y_pred, self.smooth)


_LOSSES: dict[str, type[_SegLoss]] = {
    "dice": DiceLoss,
    "tversky": TverskyLoss,
    "focal": BinaryFocalLoss,
    "tversky_focal": TverskyFocalLoss,
    "focal_tversky": FocalTverskyLoss,
    "bce_dice": BCEDiceLoss,
    "tversky_focal_slice": SliceTverskyFocalLoss,
}


def get_loss(name: str = DEFAULT_LOSS, **params: float) -> keras.losses.Loss:
    """A new loss instance by name (one of :data:`LOSS_NAMES`); ``params`` override its constants."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSS_NAMES)}")
    return _LOSSES[name](**params)


@keras.saving.register_keras_serializable(package="raxnet")
def dice_coefficient(y_true: Any, y_pred: Any, threshold: float = 0.5, smooth: float = SMOOTH) -> Any:
    """Hard Dice of one batch: predictions thresholded at ``threshold``, global over the batch."""
    t, p = _flat(y_true, y_pred)
    p = ops.cast(p >= threshold, "float32")  # the package's threshold rule (raxnet.postprocess.binarise)
    return (2.0 * ops.sum(t * p) + smooth) / (ops.sum(t) + ops.sum(p) + smooth)


@keras.saving.register_keras_serializable(package="raxnet")
class DiceMetric(keras.metrics.Metric):
    """Hard Dice accumulated over an epoch: TP, FP, FN summed over all batches, then ``2TP/(2TP+FP+FN)``.

    Unlike averaging :func:`dice_coefficient` per batch, this is the Dice of all pixels seen, so batches
    without lesions do not pull it towards the smoothing value. 1.0 when nothing was true or predicted.
    """

    def __init__(self, name: str = "dice", threshold: float = 0.5, dtype: Any = None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.tp = self.add_variable(shape=(), initializer="zeros", name="tp")
        self.fp = self.add_variable(shape=(), initializer="zeros", name="fp")
        self.fn = self.add_variable(shape=(), initializer="zeros", name="fn")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        t, p = _flat(y_true, y_pred)
        p = ops.cast(p >= self.threshold, "float32")
        self.tp.assign_add(ops.sum(t * p))
        self.fp.assign_add(ops.sum((1.0 - t) * p))
        self.fn.assign_add(ops.sum(t * (1.0 - p)))

    def result(self) -> Any:
        denom = 2.0 * self.tp + self.fp + self.fn
        return ops.where(denom > 0, 2.0 * self.tp / ops.maximum(denom, 1e-12), 1.0)

    def reset_state(self) -> None:
        for v in (self.tp, self.fp, self.fn):
            v.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold, "dtype": self.dtype}
