"""Attention U-Net (Oktay et al. 2018): the plain U-Net with additive attention gates on every skip.

Gate (see :func:`raxnet.models.blocks.attention_gate`): ``W_x x`` (2x2 stride-2 conv onto the gating
grid) + ``W_g g`` (1x1 conv) -> ReLU -> ``psi`` (1x1 conv) -> sigmoid -> bilinear up-sampling to the
skip's grid -> ``alpha * x``. Convolutions are full 3x3, no residual shortcuts; it is
:func:`raxnet.models.raxnet.build_raxnet` with ``residual=False, separable=False``.
"""

from __future__ import annotations

import keras

from raxnet.models.raxnet import build_raxnet


def build_attention_unet(
    input_shape: tuple[int, int, int] = (208, 240, 1),
    *,
    width: int = 32,
    depth: int = 4,
    dropout: float = 0.0,
    name: str = "attention_unet",
) -> keras.Model:
    """Attention U-Net for ``input_shape`` (H, W divisible by ``2**depth``); (B, H, W, 1) float32 sigmoid."""
    return build_raxnet(
        input_shape,
        width=width,
        depth=depth,
        attention=True,
        residual=False,
        separable=False,
        dropout=dropout,
        name=name,
    )
