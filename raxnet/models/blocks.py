"""Building blocks shared by the segmentation networks (Keras 3 functional API, built-in layers only).

Every block is a function ``block(x, ..., name=...) -> tensor`` that adds named layers to a functional
graph. Using only built-in layers keeps ``.keras`` files loadable with plain ``keras.saving.load_model``
in a fresh process (no custom objects, no Lambda layers).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

#: Batch-norm momentum of every network. Keras' default (0.99) averages the batch statistics over ~100
#: steps; in short trainings (the CPU demo: a few hundred steps) the moving statistics then lag the
#: weights so far behind that inference-mode outputs collapse to empty masks while training-mode Dice is
#: high (measured: inner-validation Dice 0.00 with 0.99, 0.52 after recalibrating the statistics).
BN_MOMENTUM = 0.9


def batch_norm(name: str) -> layers.Layer:
    """The project's BatchNormalization (momentum :data:`BN_MOMENTUM`)."""
    return layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)


#: Suffix of the layer that outputs an attention gate's coefficients alpha (shape (B, H, W, 1)).
ALPHA_SUFFIX = "_alpha"


def _conv(filters: int, kernel: int, *, separable: bool, name: str, strides: int = 1) -> layers.Layer:
    # Bias is redundant before batch norm (its beta shifts the same way), so convolutions feeding BN drop it.
    if separable:
        return layers.SeparableConv2D(
            filters, kernel, strides=strides, padding="same", use_bias=False, name=name
        )
    return layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=name)


def conv_block(
    x: Any,
    filters: int,
    *,
    separable: bool = True,
    residual: bool = True,
    name: str,
) -> Any:
    """Two 3x3 (separable) convolutions with batch norm and ReLU, optionally residual.

    ``residual=True`` adds the Xception/ResNet shortcut: a 1x1 convolution + batch norm projecting the
    input to ``filters`` channels (identity when the channel count already matches), summed before the
    last ReLU. ``separable=True`` uses depthwise-separable convolutions (Xception); ``False`` gives the
    plain U-Net double convolution.
    """
    y = _conv(filters, 3, separable=separable, name=f"{name}_conv1")(x)
    y = batch_norm(name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = _conv(filters, 3, separable=separable, name=f"{name}_conv2")(y)
    y = batch_norm(name=f"{name}_bn2")(y)
    if residual:
        shortcut = x
        if x.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(x)
            shortcut = batch_norm(name=f"{name}_proj_bn")(shortcut)
        y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_relu2")(y)


def attention_gate(x: Any, g: Any, inter_channels: int, *, name: str) -> Any:
    """Additive attention gate of Oktay et al. 2018 ("Attention U-Net"), returns ``alpha * x``.

    ``x`` is the encoder skip (H, W, Cx); ``g`` the gating signal from the coarser decoder level
    (H/2, W/2, Cg). ``W_x`` is a 2x2 convolution with stride 2 that brings ``x`` onto ``g``'s grid,
    ``W_g`` a 1x1 convolution; their sum goes through ReLU, the 1x1 convolution ``psi`` and a sigmoid,
    giving one coefficient per coarse pixel, which is resampled bilinearly to ``x``'s grid and multiplies
    every channel of ``x``. The coefficients are the output of the layer named ``<name>_alpha``.
    """
    if x.shape[1] != 2 * g.shape[1] or x.shape[2] != 2 * g.shape[2]:
        raise ValueError(f"attention gate {name}: skip {x.shape} is not twice the gating grid {g.shape}")
    theta_x = layers.Conv2D(inter_channels, 2, strides=2, padding="same", use_bias=False, name=f"{name}_wx")(x)
    phi_g = layers.Conv2D(inter_channels, 1, use_bias=True, name=f"{name}_wg")(g)
    f = layers.Add(name=f"{name}_sum")([theta_x, phi_g])
    f = layers.Activation("relu", name=f"{name}_relu")(f)
    psi = layers.Conv2D(1, 1, use_bias=True, name=f"{name}_psi")(f)
    alpha_coarse = layers.Activation("sigmoid", name=f"{name}_sigmoid")(psi)
    alpha = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}{ALPHA_SUFFIX}")(alpha_coarse)
    # Multiply broadcasts the single coefficient channel over the skip's channels.
    return layers.Multiply(name=f"{name}_gated")([x, alpha])


def up_block(
    x: Any,
    skip: Any,
    filters: int,
    *,
    attention: bool,
    separable: bool,
    residual: bool,
    name: str,
) -> Any:
    """One decoder level: (gate the skip with ``x``), 2x2 transposed-conv up-sampling, concat, conv_block."""
    if attention:
        skip = attention_gate(skip, x, max(1, filters // 2), name=f"{name}_att")
    up = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"{name}_up")(x)
    y = layers.Concatenate(name=f"{name}_concat")([up, skip])
    return conv_block(y, filters, separable=separable, residual=residual, name=name)


def segmentation_head(x: Any, *, name: str = "head") -> Any:
    """1x1 convolution to one channel and a float32 sigmoid (float32 even under mixed precision)."""
    logits = layers.Conv2D(1, 1, name=f"{name}_logits")(x)
    return layers.Activation("sigmoid", dtype="float32", name=f"{name}_sigmoid")(logits)


def check_width_dropout(width: int, dropout: float) -> None:
    """Validate the base width (>= 1) and the dropout rate ([0, 1)) of a network builder."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def check_input_shape(input_shape: tuple[int, ...], depth: int) -> tuple[int, int, int]:
    """Validate ``(H, W, C)``: positive ints, H and W divisible by ``2**depth``; returns it as a tuple."""
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {tuple(input_shape)}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    h, w, c = (int(v) for v in input_shape)
    if min(h, w, c) < 1:
        raise ValueError(f"input_shape must be positive, got {tuple(input_shape)}")
    m = 2**depth
    if h % m or w % m:
        raise ValueError(
            f"input size {h}x{w} is not divisible by 2**depth = {m}; pad slices with "
            f"raxnet.planes.padded_shape((H, W), depth) (here {(-(-h // m) * m)}x{(-(-w // m) * m)})"
        )
    return h, w, c


def attention_layers(model: keras.Model) -> list[layers.Layer]:
    """The layers that output attention coefficients (one per gate), in decoder order."""
    return [layer for layer in model.layers if layer.name.endswith(ALPHA_SUFFIX)]
