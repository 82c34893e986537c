"""Segmentation networks: RAX-Net and its rivals under one harness (:func:`build_model`).

All models are Keras 3 functional models of built-in layers with a fixed input size (H, W, C) and a
(B, H, W, 1) float32 sigmoid output; ``model.name`` is the model's name in :data:`MODEL_NAMES`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import keras

#: Builders, imported on first use: importing Keras loads TensorFlow (seconds), which the names, the
#: defaults and ``--help`` do not need.
_LAZY: dict[str, str] = {
    "build_attention_unet": "raxnet.models.attention_unet",
    "attention_layers": "raxnet.models.blocks",
    "build_raxnet": "raxnet.models.raxnet",
    "build_unet": "raxnet.models.unet",
    "build_xception_unet": "raxnet.models.xception_unet",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

MODEL_NAMES: tuple[str, ...] = ("raxnet", "unet", "attention_unet", "xception_unet")

#: ``[model]`` section: full-size networks for 1 mm ATLAS slices (the demo config uses width 8).
DEFAULTS: dict[str, Any] = {
    "name": "raxnet",  # one of MODEL_NAMES
    "width": 32,  # base filters (level i has width * 2**i); 32 = the keras-io Xception U-Net widths
    "depth": 4,  # number of 2x down-samplings; slices are padded to a multiple of 2**depth
    "dropout": 0.0,  # spatial dropout rate after the bottleneck/encoder (0 = off)
    "attention": True,  # raxnet only: attention gates on the skip connections
    "residual": True,  # raxnet only: residual 1x1 shortcuts in encoder and decoder blocks
    "separable": True,  # raxnet only: depthwise-separable (Xception) convolutions
}


def build_model(
    name: str,
    input_shape: tuple[int, int, int] = (208, 240, 1),
    *,
    width: int = 32,
    depth: int = 4,
    attention: bool = True,
    residual: bool = True,
    separable: bool = True,
    dropout: float = 0.0,
) -> keras.Model:
    """Build model ``name`` (one of :data:`MODEL_NAMES`) for ``input_shape`` = (H, W, C).

    H and W must be divisible by ``2**depth`` (ValueError otherwise). ``attention``, ``residual`` and
    ``separable`` are RAX-Net's ablation switches; the rivals have them fixed by definition (U-Net: all
    off; Attention U-Net: attention only; Xception U-Net: separable + residual, no attention) and ignore them.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    common = {"width": int(width), "depth": int(depth), "dropout": float(dropout)}
    if name == "raxnet":
        return __getattr__("build_raxnet")(
            tuple(input_shape),
            attention=bool(attention),
            residual=bool(residual),
            separable=bool(separable),
            **common,
        )
    return __getattr__(f"build_{name}")(tuple(input_shape), **common)


def build_from_config(
    model_cfg: Mapping[str, Any], input_shape: tuple[int, int, int], name: str | None = None
) -> keras.Model:
    """Build from a merged ``[model]`` section (see :data:`DEFAULTS`); ``name`` overrides ``model_cfg['name']``."""
    return build_model(
        name or model_cfg["name"],
        input_shape,
        width=model_cfg["width"],
        depth=model_cfg["depth"],
        attention=model_cfg["attention"],
        residual=model_cfg["residual"],
        separable=model_cfg["separable"],
        dropout=model_cfg["dropout"],
    )


def plane_input_shape(volume_shape: tuple[int, ...], plane: str, depth: int, channels: int = 1) -> tuple[int, int, int]:
    """Network input (H, W, C) for slices of ``plane``: the slice shape padded to a multiple of ``2**depth``."""
    from raxnet.planes import padded_shape, slice_shape

    h, w = padded_shape(slice_shape(tuple(volume_shape), plane), depth)
    return h, w, channels


__all__ = [
    "DEFAULTS",
    "MODEL_NAMES",
    "attention_layers",
    "build_attention_unet",
    "build_from_config",
    "build_model",
    "build_raxnet",
    "build_unet",
    "build_xception_unet",
    "plane_input_shape",
]
