"""RAX-Net: Residual Attention Xception encoder-decoder for 2D lesion segmentation.

Architecture (``depth`` down-samplings, ``width`` base filters, level ``i`` has ``width * 2**i`` filters)::

    input (H, W, C) -> stem: full 3x3 conv + BN + ReLU to ``width`` channels (separable=True only)
    encoder level i = 0..depth-1:  conv_block (separable 3x3 + BN + ReLU twice, 1x1 residual projection)
                                   -> skip_i, then 2x2 max-pooling
    bottleneck:                    conv_block at width * 2**depth (+ dropout)
    decoder level i = depth-1..0:  attention gate(skip_i, gating = coarser decoder features)
                                   -> 2x2 transposed-conv up-sampling, concat with gated skip_i,
                                   residual conv_block at width * 2**i
    head:                          1x1 conv -> sigmoid (float32)

The flags switch parts off so the same builder gives the ablations: ``attention=False`` (no gates, plain
skip concatenation), ``residual=False`` (no shortcuts), ``separable=False`` (full 3x3 convolutions).
With all three off the network is the plain U-Net of :mod:`raxnet.models.unet`.
"""

from __future__ import annotations

import keras
from keras import layers

from raxnet.models.blocks import (
    batch_norm,
    check_input_shape,
    check_width_dropout,
    conv_block,
    segmentation_head,
    up_block,
)


def build_raxnet(
    input_shape: tuple[int, int, int] = (208, 240, 1),
    *,
    width: int = 32,
    depth: int = 4,
    attention: bool = True,
    residual: bool = True,
    separable: bool = True,
    dropout: float = 0.0,
    name: str = "raxnet",
) -> keras.Model:
    """Build RAX-Net (or an ablation) for ``input_shape`` = (H, W, C), H and W divisible by ``2**depth``.

    ``dropout`` is applied (as spatial dropout, whole feature maps) after the bottleneck block only.
    Returns a functional model whose output is a (B, H, W, 1) float32 probability map.
    """
    input_shape = check_input_shape(input_shape, depth)
    check_width_dropout(width, dropout)

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if separable:
        # Xception's entry flow starts with full convolutions: a depthwise 3x3 on a 1-channel image is a
        # single filter, so a full 3x3 stem first gives the separable blocks ``width`` channels to work on.
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(x)
        x = batch_norm(name="stem_bn")(x)
        x = layers.Activation("relu", name="stem_relu")(x)
    skips = []
    for level in range(depth):
        x = conv_block(x, width * 2**level, separable=separable, residual=residual, name=f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)

    x = conv_block(x, width * 2**depth, separable=separable, residual=residual, name="bottleneck")
    if dropout > 0:
        x = layers.SpatialDropout2D(dropout, name="bottleneck_dropout")(x)

    for level in reversed(range(depth)):
        x = up_block(
            x,
            skips[level],
            width * 2**level,
            attention=attention,
            separable=separable,
            residual=residual,
            name=f"dec{level}",
        )

    outputs = segmentation_head(x)
    return keras.Model(inputs, outputs, name=name)
