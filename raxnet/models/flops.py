"""Analytic FLOP count of a Keras model for one input sample (one slice), from its layers' shapes.

Convention (the one used by the TensorFlow profiler and most papers): one multiply-add = 2 FLOPs.

* Conv (1D/2D/3D, grouped): ``2 * prod(kernel) * C_in/groups * C_out * prod(out_spatial)``
* DepthwiseConv: ``2 * prod(kernel) * C_in * depth_multiplier * prod(out_spatial)``
* SeparableConv: depthwise part + pointwise ``2 * C_in * depth_multiplier * C_out * prod(out_spatial)``
* ConvTranspose: ``2 * prod(kernel) * C_in * C_out * prod(in_spatial)`` (each input pixel scatters one
  kernel-sized patch into every output channel)
* Dense: ``2 * n_in * units`` per position
* bias: + 1 per output element; BatchNormalization / LayerNormalization: 2 per element (the inference-time
  affine ``x * scale + shift``); Add/Subtract/Multiply/Maximum/Minimum: ``n_inputs - 1`` per output element,
  Average: ``n_inputs`` per output element.
* Not counted (memory-bound, negligible next to the convolutions): activations, pooling, resampling,
  concatenation, dropout, reshaping. A layer with weights that is not in this list raises
  NotImplementedError rather than being silently counted as free.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import layers

_CONV = (layers.Conv1D, layers.Conv2D, layers.Conv3D)
_CONV_T = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)
_SEPARABLE = (layers.SeparableConv1D, layers.SeparableConv2D)
_DEPTHWISE = (layers.DepthwiseConv1D, layers.DepthwiseConv2D)
_NORM = (layers.BatchNormalization, layers.LayerNormalization)
_MERGE_N_MINUS_1 = (layers.Add, layers.Subtract, layers.Multiply, layers.Maximum, layers.Minimum)


def _shape(tensor: Any) -> tuple[int, ...]:
    """Shape without the batch axis; every dimension must be known."""
    shape = tuple(tensor.shape)[1:]
    if any(d is None for d in shape):
        raise ValueError(f"FLOPs need a fixed input size; got a tensor of shape {tuple(tensor.shape)}")
    return tuple(int(d) for d in shape)


def _channels_last(layer: layers.Layer) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _split(shape: tuple[int, ...], layer: layers.Layer) -> tuple[tuple[int, ...], int]:
    """(spatial dims, channels) of a feature-map shape."""
    if _channels_last(layer):
        return shape[:-1], shape[-1]
    return shape[1:], shape[0]


def layer_flops(layer: layers.Layer) -> int:
    """FLOPs of one layer of a built functional model, for one sample (see module docstring)."""
    if isinstance(layer, keras.Model):
        return count_flops(layer)
    if isinstance(layer, layers.InputLayer):
        return 0
    out = _shape(layer.output)
    n_out = math.prod(out)
    bias = n_out if getattr(layer, "use_bias", False) else 0

    if isinstance(layer, _SEPARABLE):
        (in_sp, c_in), (out_sp, c_out) = _split(_shape(layer.input), layer), _split(out, layer)
        k = math.prod(layer.kernel_size)
        dm = layer.depth_multiplier
        return 2 * k * c_in * dm * math.prod(out_sp) + 2 * c_in * dm * c_out * math.prod(out_sp) + bias
    if isinstance(layer, _DEPTHWISE):
        (_, c_in), (out_sp, _) = _split(_shape(layer.input), layer), _split(out, layer)
        return 2 * math.prod(layer.kernel_size) * c_in * layer.depth_multiplier * math.prod(out_sp) + bias
    if isinstance(layer, _CONV_T):
        (in_sp, c_in), (_, c_out) = _split(_shape(layer.input), layer), _split(out, layer)
        return 2 * math.prod(layer.kernel_size) * c_in * c_out * math.prod(in_sp) + bias
    if isinstance(layer, _CONV):
        (_, c_in), (out_sp, c_out) = _split(_shape(layer.input), layer), _split(out, layer)
        groups = getattr(layer, "groups", 1)
        return 2 * math.prod(layer.kernel_size) * (c_in // groups) * c_out * math.prod(out_sp) + bias
    if isinstance(layer, layers.Dense):
        n_in = _shape(layer.input)[-1]
        positions = n_out // layer.units
        return 2 * n_in * layer.units * positions + bias
    if isinstance(layer, _NORM):
        return 2 * n_out
    if isinstance(layer, _MERGE_N_MINUS_1):
        return (len(layer.input) - 1) * n_out
    if isinstance(layer, layers.Average):
        return len(layer.input) * n_out
    if layer.weights:
        raise NotImplementedError(f"no FLOP rule for layer {layer.name!r} ({type(layer).__name__})")
    return 0


def count_flops(model: keras.Model) -> int:
    """Total FLOPs (multiply-adds x 2, plus bias/BN/merge arithmetic) of ``model`` for one input sample."""
    return int(sum(layer_flops(layer) for layer in model.layers))


def flops_by_layer(model: keras.Model) -> list[tuple[str, str, int]]:
    """``(layer name, layer class, FLOPs)`` for every layer of ``model`` (for reports and checks)."""
    return [(layer.name, type(layer).__name__, layer_flops(layer)) for layer in model.layers]
