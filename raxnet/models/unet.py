"""Plain U-Net (Ronneberger et al. 2015) with batch norm, same-padding and transposed-conv up-sampling.

Each level is two 3x3 convolutions + batch norm + ReLU; the encoder halves the grid with 2x2
max-pooling and doubles the filters, the decoder up-samples with 2x2 transposed convolutions and
concatenates the encoder skip. Differences to the 2015 paper, as in current U-Net practice (nnU-Net,
MONAI): "same" padding (output grid = input grid, no cropping) and batch norm after every convolution.
It is :func:`raxnet.models.raxnet.build_raxnet` with attention, residual and separable switched off,
so the comparison with RAX-Net changes only those three ideas.
"""

from __future__ import annotations

import keras

from raxnet.models.raxnet import build_raxnet


def build_unet(
    input_shape: tuple[int, int, int] = (208, 240, 1),
    *,
    width: int = 32,
    depth: int = 4,
    dropout: float = 0.0,
    name: str = "unet",
) -> keras.Model:
    """Plain U-Net for ``input_shape`` (H, W divisible by ``2**depth``); (B, H, W, 1) float32 sigmoid."""
    return build_raxnet(
        input_shape,
        width=width,
        depth=depth,
        attention=False,
        residual=False,
        separable=False,
        dropout=dropout,
        name=name,
    )
