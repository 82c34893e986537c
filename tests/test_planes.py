"""raxnet.planes: axis conventions and centred padding."""

import numpy as np
import pytest

from raxnet.planes import (
    crop_slices,
    from_slices,
    pad_slices,
    padded_shape,
    parse_planes,
    slice_shape,
    to_slices,
)


def test_axis_conventions():
    vol = np.zeros((5, 6, 7))
    vol[1, 2, 3] = 1
    assert np.argwhere(to_slices(vol, "sagittal"))[0].tolist() == [1, 2, 3]
    assert np.argwhere(to_slices(vol, "coronal"))[0].tolist() == [2, 1, 3]
    assert np.argwhere(to_slices(vol, "axial"))[0].tolist() == [3, 1, 2]
    for plane in ("axial", "sagittal", "coronal"):
        np.testing.assert_array_equal(from_slices(to_slices(vol, plane), plane), vol)


def test_atlas_slice_and_padded_shapes():
    shape = (197, 233, 189)
    assert slice_shape(shape, "axial") == (197, 233)
    assert slice_shape(shape, "sagittal") == (233, 189)
    assert slice_shape(shape, "coronal") == (197, 189)
    assert padded_shape((197, 233), 4) == (208, 240)
    assert padded_shape((233, 189), 4) == (240, 192)
    assert padded_shape((99, 117), 4) == (112, 128)
    assert padded_shape((16, 32), 4) == (16, 32)


def test_pad_and_crop_are_centred_and_inverse():
    stack = np.arange(2 * 3 * 5).reshape(2, 3, 5).astype(float) + 1
    padded = pad_slices(stack, (8, 8))
    assert padded.shape == (2, 8, 8)
    # 3 -> 8 pads 2 before, 3 after; 5 -> 8 pads 1 before, 2 after
    assert padded[0, 2, 1] == stack[0, 0, 0]
    assert padded[:, :2].sum() == 0 and padded[:, :, :1].sum() == 0
    np.testing.assert_array_equal(crop_slices(padded, (3, 5)), stack)
    with pytest.raises(ValueError):
        pad_slices(stack, (2, 8))


def test_parse_planes():
    assert parse_planes("all") == ["axial", "sagittal", "coronal"]
    assert parse_planes("coronal, axial") == ["coronal", "axial"]
    with pytest.raises(ValueError, match="unknown plane"):
        parse_planes("oblique")
