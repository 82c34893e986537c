"""Plane conventions and the 2D padding used by every stage that turns volumes into slices.

Axes of the 197x233x189 ATLAS volume (RAS+, MNI152NLin2009aSym):
sagittal = array axis 0, coronal = axis 1, axial = axis 2. A plane's slice stack is the volume with
that axis moved first, so ``stack[i]`` is slice ``i`` and its 2D shape keeps the other two axes in order
(axial 197x233, sagittal 233x189, coronal 197x189 at 1 mm).
"""

from __future__ import annotations

import numpy as np

PLANES: tuple[str, ...] = ("axial", "sagittal", "coronal")
PLANE_AXIS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
#: In-plane axis of a plane's (H, W) slice that runs left-right (volume axis 0), None where the plane
#: has none (a sagittal slice is one left-right position). Used by flip augmentation and flip TTA.
LR_AXIS: dict[str, int | None] = {"axial": 0, "coronal": 0, "sagittal": None}


def check_plane(plane: str) -> str:
    """Return ``plane`` or raise ValueError naming the valid planes."""
    if plane not in PLANE_AXIS:
        raise ValueError(f"unknown plane {plane!r}; expected one of {', '.join(PLANES)}")
    return plane


def parse_planes(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """'all' -> all planes; 'axial,coronal' -> ['axial', 'coronal']."""
    if isinstance(value, str):
        value = list(PLANES) if value == "all" else [p.strip() for p in value.split(",") if p.strip()]
    return [check_plane(p) for p in value]


def to_slices(volume: np.ndarray, plane: str) -> np.ndarray:
    """View of a 3D volume as a stack of 2D slices of ``plane`` (slice index first)."""
    return np.moveaxis(volume, PLANE_AXIS[check_plane(plane)], 0)


def from_slices(stack: np.ndarray, plane: str) -> np.ndarray:
    """Inverse of :func:`to_slices`."""
    return np.moveaxis(stack, 0, PLANE_AXIS[check_plane(plane)])


def slice_shape(volume_shape: tuple[int, ...], plane: str) -> tuple[int, int]:
    """2D shape of one slice of ``plane`` for a volume of ``volume_shape``."""
    axis = PLANE_AXIS[check_plane(plane)]
    rest = [s for i, s in enumerate(volume_shape[:3]) if i != axis]
    return int(rest[0]), int(rest[1])


def padded_shape(shape2d: tuple[int, int], depth: int) -> tuple[int, int]:
    """Smallest shape >= ``shape2d`` divisible by ``2**depth`` (the network's down-sampling factor).

    At 1 mm with depth 4: axial 197x233 -> 208x240, sagittal 233x189 -> 240x192, coronal 197x189 -> 208x192.
    """
    m = 2**depth
    return tuple(int(-(-s // m) * m) for s in shape2d)  # type: ignore[return-value]


def context_indices(n_slices: int, index: np.ndarray | int, context: int) -> np.ndarray:
    """Slice indices ``index - context .. index + context`` of a stack of ``n_slices`` (one row per index),
    clipped to the stack: the input channels of a 2.5D network (``context`` neighbours on each side).

    The stack's first and last slices repeat at its edges; those are background in a brain volume.
    """
    if int(context) < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    offsets = np.arange(-int(context), int(context) + 1)
    idx = np.asarray(index, dtype=np.int64).reshape(-1, 1)
    return np.clip(idx + offsets, 0, int(n_slices) - 1)


def channels_for(context: int) -> int:
    """Network input channels of a 2.5D model with ``context`` neighbour slices on each side."""
    return 2 * int(context) + 1


def context_of(channels: int) -> int:
    """Inverse of :func:`channels_for`; ValueError for an even number of channels."""
    if int(channels) < 1 or int(channels) % 2 == 0:
        raise ValueError(f"a plane model takes an odd number of input channels (2 * context + 1), got {channels}")
    return (int(channels) - 1) // 2


def _pads(shape2d: tuple[int, int], target: tuple[int, int]) -> list[tuple[int, int]]:
    pads = []
    for s, t in zip(shape2d, target):
        if t < s:
            raise ValueError(f"target shape {target} smaller than slice shape {shape2d}")
        before = (t - s) // 2
        pads.append((before, t - s - before))
    return pads


def pad_slices(stack: np.ndarray, target: tuple[int, int], value: float = 0.0) -> np.ndarray:
    """Zero-pad the last two axes of ``stack`` (..., H, W) centred to ``target``."""
    pads = _pads(stack.shape[-2:], target)
    width = [(0, 0)] * (stack.ndim - 2) + pads
    return np.pad(stack, width, mode="constant", constant_values=value)


def crop_slices(stack: np.ndarray, shape2d: tuple[int, int]) -> np.ndarray:
    """Undo :func:`pad_slices`: crop the last two axes (..., H', W') centred back to ``shape2d``."""
    (b0, _), (b1, _) = _pads(shape2d, stack.shape[-2:])
    return stack[..., b0 : b0 + shape2d[0], b1 : b1 + shape2d[1]]
