"""raxnet.planes: axis conventions and centred padding."""

import numpy as np
import pytest

from raxnet.planes import (
    channels_for,
    check_plane,
    context_indices,
    context_of,
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


def test_pad_to_the_same_shape_and_pad_value():
    from raxnet.planes import crop_slices, pad_slices

    stack = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6) + 1
    np.testing.assert_array_equal(pad_slices(stack, (5, 6)), stack)  # nothing to pad is not an error
    np.testing.assert_array_equal(crop_slices(stack, (5, 6)), stack)
    padded = pad_slices(stack, (7, 9), value=-1.0)  # 1 + 1 rows, 1 + 2 columns
    assert padded.shape == (2, 7, 9)
    assert (padded[:, 0] == -1).all() and (padded[:, -1] == -1).all() and (padded[:, :, 0] == -1).all()
    assert (padded[:, :, -2:] == -1).all()
    np.testing.assert_array_equal(padded[:, 1:6, 1:7], stack)
    with pytest.raises(ValueError, match=r"^target shape \(4, 6\) smaller than slice shape \(5, 6\)$"):
        pad_slices(stack, (4, 6))
    with pytest.raises(ValueError, match=r"^unknown plane 'oblique'; expected one of axial, sagittal, coronal$"):
        check_plane("oblique")


def test_context_indices_clip_at_the_stack_edges():
    np.testing.assert_array_equal(context_indices(5, [0, 2, 4], 1), [[0, 0, 1], [1, 2, 3], [3, 4, 4]])
    np.testing.assert_array_equal(context_indices(5, 3, 2), [[1, 2, 3, 4, 4]])
    np.testing.assert_array_equal(context_indices(5, [1, 4], 0), [[1], [4]])  # 2D: the slice alone
    with pytest.raises(ValueError, match="context"):
        context_indices(5, [1], -1)


def test_channels_and_context_are_inverse():
    assert [channels_for(c) for c in (0, 1, 2)] == [1, 3, 5]
    assert [context_of(c) for c in (1, 3, 5)] == [0, 1, 2]
    for bad in (0, 2, 4):
        with pytest.raises(ValueError, match="odd number"):
            context_of(bad)
