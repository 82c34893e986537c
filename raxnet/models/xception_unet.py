"""Upstream-style Xception U-Net without attention (the model the original RAX-Net code started from).

It follows the keras-io example "Image segmentation with a U-Net-like architecture" (F. Chollet,
Oxford-IIIT pets): an entry 3x3 convolution with stride 2, then Xception blocks (ReLU, separable 3x3,
BN, ReLU, separable 3x3, BN, 3x3 max-pooling stride 2) whose residual is a strided 1x1 convolution of
the previous block's output, then a decoder of transposed 3x3 convolutions with nearest up-sampling
and an up-sampled 1x1-convolution residual. There are no long encoder-decoder skip connections (the
example has none). At ``width=32, depth=4`` the widths are the example's: entry 32, blocks 64/128/256,
decoder 256/128/64/32. Built for a 160x160x3 input it has 2,058,401 parameters: the example's
2,058,979 minus its 3-class softmax head (867) plus our 1-channel sigmoid head (289).
"""

from __future__ import annotations

import keras
from keras import layers

from raxnet.models.blocks import batch_norm, check_input_shape, check_width_dropout


def build_xception_unet(
    input_shape: tuple[int, int, int] = (208, 240, 1),
    *,
    width: int = 32,
    depth: int = 4,
    dropout: float = 0.0,
    name: str = "xception_unet",
) -> keras.Model:
    """keras-io Xception U-Net for ``input_shape`` with ``depth`` down-samplings (entry conv + depth-1 blocks).

    ``dropout`` > 0 adds spatial dropout after the encoder. The output is a (B, H, W, 1) float32
    sigmoid from a 3x3 convolution (the example's head with one class).
    """
    input_shape = check_input_shape(input_shape, depth)
    check_width_dropout(width, dropout)

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(width, 3, strides=2, padding="same", name="entry_conv")(inputs)
    x = batch_norm(name="entry_bn")(x)
    x = layers.Activation("relu", name="entry_relu")(x)
    previous = x

    for level in range(1, depth):
        filters = width * 2**level
        p = f"enc{level}"
        x = layers.Activation("relu", name=f"{p}_relu1")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same", name=f"{p}_sep1")(x)
        x = batch_norm(name=f"{p}_bn1")(x)
        x = layers.Activation("relu", name=f"{p}_relu2")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same", name=f"{p}_sep2")(x)
        x = batch_norm(name=f"{p}_bn2")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{p}_pool")(x)
        residual = layers.Conv2D(filters, 1, strides=2, padding="same", name=f"{p}_res")(previous)
        x = layers.Add(name=f"{p}_add")([x, residual])
        previous = x

    if dropout > 0:
        x = layers.SpatialDropout2D(dropout, name="encoder_dropout")(x)
        previous = x

    for level in reversed(range(depth)):
        filters = width * 2**level
        p = f"dec{level}"
        x = layers.Activation("relu", name=f"{p}_relu1")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same", name=f"{p}_tconv1")(x)
        x = batch_norm(name=f"{p}_bn1")(x)
        x = layers.Activation("relu", name=f"{p}_relu2")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same", name=f"{p}_tconv2")(x)
        x = batch_norm(name=f"{p}_bn2")(x)
        x = layers.UpSampling2D(2, name=f"{p}_up")(x)
        residual = layers.UpSampling2D(2, name=f"{p}_res_up")(previous)
        residual = layers.Conv2D(filters, 1, padding="same", name=f"{p}_res")(residual)
        x = layers.Add(name=f"{p}_add")([x, residual])
        previous = x

    logits = layers.Conv2D(1, 3, padding="same", name="head_logits")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="head_sigmoid")(logits)
    return keras.Model(inputs, outputs, name=name)
