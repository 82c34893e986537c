"""raxnet.augment: seeded parameter draws, and each deterministic transform on tiny arrays with known answers."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest

from raxnet import augment as A
from raxnet.errors import ConfigError
from raxnet.intensity import CLIP_MAX


def _img() -> np.ndarray:
    img = np.zeros((6, 5), np.float32)
    img[1, 1], img[4, 3] = 1.0, 0.5
    return img


# --- draw -------------------------------------------------------------------------------------------------
def test_draw_is_seeded_and_within_the_strengths() -> None:
    p = A.AugmentParams()
    a = A.draw(np.random.default_rng(5), "axial", p)
    assert a == A.draw(np.random.default_rng(5), "axial", p)
    assert a != A.draw(np.random.default_rng(6), "axial", p)
    assert all(d.curve is None for d in (a, A.draw(np.random.default_rng(7), "axial", p)))  # off by default
    p = replace(p, curve_prob=0.5)
    rng = np.random.default_rng(0)
    draws = [A.draw(rng, "coronal", p) for _ in range(600)]
    assert all(abs(d.angle_deg) <= 10 and 0.9 <= d.zoom <= 1.1 and max(map(abs, d.shift)) <= 8 for d in draws)
    assert all(np.exp(-0.3) <= d.gamma <= np.exp(0.3) and 0 <= d.noise_sd <= 0.05 for d in draws)
    assert all(d.blur_px == 0 or 0.25 <= d.blur_px <= 1.0 for d in draws)
    assert all(d.lowres_factor == 1 or 1.25 <= d.lowres_factor <= 2.5 for d in draws)
    on = {"flip": lambda d: d.flip, "elastic": lambda d: d.elastic is not None,
          "blur": lambda d: d.blur_px > 0, "lowres": lambda d: d.lowres_factor > 1,
          "curve": lambda d: d.curve is not None}
    assert all(len(d.curve) == len(A.CURVE_KNOTS) - 1 for d in draws if d.curve is not None)
    slopes = np.concatenate([d.curve for d in draws if d.curve is not None])
    assert float(slopes.std()) == pytest.approx(0.6, rel=0.1)  # curve_sd
    for name, prob in (("flip", 0.5), ("elastic", 0.3), ("blur", 0.2), ("lowres", 0.2), ("curve", 0.5)):
        share = np.mean([on[name](d) for d in draws])
        assert abs(share - prob) < 0.07, (name, share)
    assert not any(A.draw(rng, "sagittal", p).flip for _ in range(50))  # no left-right axis in-plane
    assert A.draw(rng, "axial", A.AugmentParams.none()) == A.AugmentDraw()  # all off: identity draw
    assert set(a.as_dict()) == {f.name for f in fields(A.AugmentDraw)}


def test_settings_from_the_augment_section() -> None:
    assert A.settings({}) == A.AugmentParams()
    assert A.settings({"augment": {"noise": 0.1}}).noise == 0.1
    assert set(A.DEFAULTS) == {f.name for f in fields(A.AugmentParams)}
    for bad in ({"noise": -1}, {"blur_prob": 1.5}, {"curve_prob": 2}, {"lowres_factor": 1.1}, {"gamma": "big"}):
        with pytest.raises(ConfigError, match=r"\[augment\]"):
            A.settings({"augment": bad})


def test_identity_draw_returns_the_slice() -> None:
    img, msk = _img(), (_img() > 0.6).astype(np.float32)
    a, m = A.apply(img, msk, A.AugmentDraw(), "axial")
    np.testing.assert_array_equal(a, img)
    np.testing.assert_array_equal(m, msk)


# --- geometry ---------------------------------------------------------------------------------------------
def test_flip_lr_axis_per_plane() -> None:
    img, msk = _img(), (_img() > 0.6).astype(np.float32)
    a, m = A.flip_lr(img, msk, "axial")
    np.testing.assert_array_equal(a, img[::-1])  # left-right = axis 0 of axial and coronal slices
    np.testing.assert_array_equal(m, msk[::-1])
    np.testing.assert_array_equal(A.flip_lr(img, msk, "coronal")[0], img[::-1])
    np.testing.assert_array_equal(A.flip_lr(img, msk, "sagittal")[0], img)
    a, m = A.apply(img, msk, A.AugmentDraw(flip=True), "axial")
    np.testing.assert_array_equal(a, img[::-1])


def test_warp_integer_shift_rotation_and_zoom() -> None:
    img = np.arange(1, 26, dtype=np.float32).reshape(5, 5)
    msk = (img > 12).astype(np.float32)
    a, m = A.warp(img, msk, shift=(1.0, 0.0))  # content moves one row down, row 0 empty
    np.testing.assert_allclose(a[1:], img[:-1], atol=1e-5)
    assert not a[0].any()
    np.testing.assert_array_equal(m[1:], msk[:-1])
    a, m = A.warp(img, msk, angle_deg=90.0)  # exact quarter turn about the centre (axis 0 -> axis 1)
    np.testing.assert_allclose(a, np.rot90(img, k=-1), atol=1e-4)
    np.testing.assert_array_equal(m, np.rot90(msk, k=-1))
    a, _ = A.warp(img, msk, zoom=2.0)  # x2 about the centre (2, 2): output (2, 3) samples input (2, 2.5)
    assert a[2, 2] == pytest.approx(13.0) and a[2, 3] == pytest.approx(13.5) and a[0, 0] == pytest.approx(7.0)


def test_warp_elastic_displacement_and_smooth_control_points() -> None:
    img = np.arange(1, 26, dtype=np.float32).reshape(5, 5)
    disp = np.zeros((2, 5, 5), np.float32)
    disp[1] = 1.0  # every output pixel samples one column to the right
    a, _ = A.warp(img, img > 0, displacement=disp)
    np.testing.assert_allclose(a[:, :4], img[:, 1:], atol=1e-5)
    assert not a[:, 4].any()
    field = A.smooth_2d(np.full((5, 5), 2.5, np.float32), (40, 30))  # constant control points: constant field
    np.testing.assert_allclose(field, 2.5, atol=1e-5)
    assert field.shape == (40, 30)


def test_apply_keeps_image_and_mask_together() -> None:
    img = np.zeros((32, 32), np.float32)
    img[8:24, 8:24] = 0.8
    msk = np.zeros_like(img)
    msk[12:20, 12:20] = 1.0
    rng = np.random.default_rng(3)
    for _ in range(10):
        d = A.draw(rng, "axial", replace(A.AugmentParams(), elastic_prob=1.0))
        a, m = A.apply(img, msk, d, "axial")
        assert set(np.unique(m).tolist()) <= {0.0, 1.0}
        assert (a[m > 0] > 0).all()  # the lesion stays inside the moved foreground
        assert 0.5 * msk.sum() < m.sum() < 1.6 * msk.sum()


def test_apply_channels_same_change_per_slice_and_fresh_noise() -> None:
    img = np.zeros((32, 32), np.float32)
    img[8:24, 8:24] = 0.8
    msk = np.zeros_like(img)
    msk[12:20, 12:20] = 1.0
    stack = np.stack([img, img, img])
    d = A.draw(np.random.default_rng(5), "axial", replace(A.AugmentParams(), elastic_prob=1.0, noise=0.0))
    out, m = A.apply_channels(stack, msk, d, "axial")
    a, m2 = A.apply(img, msk, d, "axial")
    assert out.shape == (3, 32, 32)
    for c in range(3):  # no noise: three equal slices stay equal, each as a 2D slice would be changed
        np.testing.assert_array_equal(out[c], a)
    np.testing.assert_array_equal(m, m2)
    noisy = replace(d, noise_sd=0.05, noise_seed=11)
    out, _ = A.apply_channels(stack, msk, noisy, "axial")
    np.testing.assert_array_equal(out[1], A.apply(img, msk, noisy, "axial")[0])  # centre as in 2D
    assert not np.array_equal(out[0], out[1]) and not np.array_equal(out[0], out[2])  # noise drawn per slice
    np.testing.assert_array_equal(out[0], A.apply(img, msk, replace(noisy, noise_seed=10), "axial")[0])
    with pytest.raises(ValueError, match="odd C"):
        A.apply_channels(stack[:2], msk, d, "axial")


def test_geometry_moves_every_channel_by_the_same_warp() -> None:
    img = np.arange(1, 26, dtype=np.float32).reshape(5, 5)
    stack = np.stack([img, 2 * img, 3 * img])  # different content per channel
    msk = (img > 12).astype(np.float32)
    np.testing.assert_array_equal(A.flip_lr(stack, msk, "axial")[0], stack[:, ::-1])  # the slice axis stays put
    d = A.AugmentDraw(angle_deg=90.0, shift=(1.0, 0.0))
    out, m = A.geometry(stack, msk, d, "axial")
    for c in range(3):  # each channel as if warped alone
        np.testing.assert_array_equal(out[c], A.warp(stack[c], msk, 90.0, 1.0, (1.0, 0.0))[0])
    np.testing.assert_array_equal(m, A.warp(img, msk, 90.0, 1.0, (1.0, 0.0))[1])
    out, _ = A.apply_channels(stack / 4.0, msk, A.AugmentDraw(flip=True, gamma=2.0), "axial")
    np.testing.assert_allclose(out[2], np.clip((stack[2, ::-1] / 4.0) ** 2, 0, A.CLIP_MAX), rtol=1e-6)


# --- intensity --------------------------------------------------------------------------------------------
def test_gamma_gain_offset_bias_hand_values() -> None:
    x = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    np.testing.assert_allclose(A.gamma(x, 2.0), [[0.0, 0.0625], [0.25, 1.0]])
    np.testing.assert_allclose(A.gain_offset(x, 2.0, 0.1), [[0.1, 0.6], [1.1, 2.1]])
    np.testing.assert_allclose(A.bias_field(x, np.full(x.shape, np.log(2.0), np.float32)), 2 * x, rtol=1e-6)


def test_blur_and_lower_resolution_hand_values() -> None:
    flat = np.full((7, 6), 0.4, np.float32)
    np.testing.assert_allclose(A.blur(flat, 1.0), 0.4, atol=1e-6)  # a constant stays constant
    delta = np.zeros((9, 9), np.float32)
    delta[4, 4] = 1.0
    b = A.blur(delta, 1.0)
    assert b.sum() == pytest.approx(1.0, abs=1e-5)  # mass preserved
    assert b[4, 4] == pytest.approx(np.exp(0) / (2 * np.pi), rel=0.05)  # Gaussian peak 1/(2 pi sigma^2)
    stripes = np.tile(np.array([0.0, 1.0], np.float32), (4, 4))  # columns alternate 0, 1
    low = A.lower_resolution(stripes, 2.0, axis=1)
    np.testing.assert_allclose(low, 0.5, atol=1e-6)  # pairs averaged: the stripes are gone
    np.testing.assert_allclose(A.lower_resolution(stripes, 2.0, axis=0), stripes)  # constant along axis 0
    ramp = np.tile(np.arange(8, dtype=np.float32), (3, 1))
    np.testing.assert_allclose(A.lower_resolution(ramp, 2.0, axis=1)[:, 1:-1], ramp[:, 1:-1], atol=1e-6)


def test_contrast_curve_hand_values() -> None:
    # knots 0, .25, ..., 1.5; slopes 1 on [0, .75] and 3 above: y = 0 .25 .5 .75 1.5 2.25 3.0, then / y(1) = 1.5
    log_slopes = np.log([1, 1, 1, 3, 3, 3])
    np.testing.assert_allclose(A.curve_values(log_slopes), np.array([0, .25, .5, .75, 1.5, 2.25, 3.0]) / 1.5)
    x = np.array([0.0, 0.3, 0.6, 0.9, 1.0, 1.2], np.float32)  # CSF-, GM- and WM-like values
    out = A.contrast_curve(x, log_slopes)
    np.testing.assert_allclose(out, [0.0, 0.2, 0.4, (0.75 + 3 * 0.15) / 1.5, 1.0, (1.5 + 3 * 0.2) / 1.5], rtol=1e-6)
    # grey/white contrast (0.6 vs 0.9) doubles relative to the image's scale: 0.4 vs 0.8 after the curve
    assert (out[3] - out[2]) / (x[3] - x[2]) == pytest.approx(0.4 / 0.3 * 1.0)
    np.testing.assert_allclose(A.contrast_curve(x, np.zeros(6)), x, atol=1e-7)  # all slopes 1: identity
    rising = A.contrast_curve(np.linspace(0, CLIP_MAX, 50), np.random.default_rng(2).normal(0, 1.5, 6))
    assert (np.diff(rising) > 0).all()  # monotone: tissue order kept
    # inside apply: after lowres, before gamma; background stays 0
    one = np.zeros((9, 9), np.float32)
    one[4, 4] = 0.6
    a, _ = A.apply(one, one > 0, A.AugmentDraw(curve=tuple(log_slopes), gamma=2.0), "axial")
    assert a[4, 4] == pytest.approx(0.4**2, rel=1e-5)
    assert not a[one == 0].any()


def test_noise_seeded_with_the_drawn_sd() -> None:
    x = np.full((200, 200), 0.5, np.float32)
    a = A.add_noise(x, 0.1, seed=4)
    np.testing.assert_array_equal(a, A.add_noise(x, 0.1, seed=4))
    assert float((a - x).std()) == pytest.approx(0.1, rel=0.03)


def test_intensity_steps_leave_background_zero_and_clip() -> None:
    img = np.zeros((20, 20), np.float32)
    img[5:15, 5:15] = 1.4
    d = A.AugmentDraw(gain=1.5, offset=0.05, noise_sd=0.05, noise_seed=1, blur_px=0.5,
                      bias=tuple([0.2] * 16), gamma=0.8)
    a, _ = A.apply(img, img > 0, d, "axial")
    assert not a[img == 0].any()
    assert a.max() <= CLIP_MAX and a[img > 0].min() >= 0.0
    # the steps in order on a single foreground value: gamma, gain/offset, bias, then clip
    one = np.zeros((9, 9), np.float32)
    one[4, 4] = 0.5
    d = A.AugmentDraw(gamma=2.0, gain=2.0, offset=0.1, bias=tuple([np.log(1.5)] * 16))
    a, _ = A.apply(one, one > 0, d, "axial")
    assert a[4, 4] == pytest.approx((0.5**2 * 2.0 + 0.1) * 1.5, rel=1e-5)


# --- lesion look --------------------------------------------------------------------------------------------
def test_lesion_draw_is_off_by_default_and_last() -> None:
    p = A.AugmentParams()
    off = [A.draw(np.random.default_rng(s), "axial", p) for s in range(20)]
    assert all(d.lesion_level is None for d in off)
    on = [A.draw(np.random.default_rng(s), "axial", replace(p, lesion_prob=1.0)) for s in range(20)]
    # drawn after every other step: switching it on leaves the other values as they were
    assert [replace(d, lesion_level=None, lesion_mix=1.0, lesion_texture=0.0, lesion_edge_px=0.0,
                    lesion_seed=0) for d in on] == off
    assert all(A.LESION_LEVELS[0] <= d.lesion_level <= A.LESION_LEVELS[1] for d in on)
    assert all(0.5 <= d.lesion_mix <= 1 and 0 <= d.lesion_texture <= 0.08 and 0 <= d.lesion_edge_px <= 1.5
               for d in on)
    half = [A.draw(np.random.default_rng(s), "axial", replace(p, lesion_prob=0.5)) for s in range(400)]
    assert abs(np.mean([d.lesion_level is not None for d in half]) - 0.5) < 0.08
    with pytest.raises(ConfigError, match="lesion_prob"):
        A.settings({"augment": {"lesion_prob": 1.5}})


def test_repaint_lesion_hand_values() -> None:
    img = np.array([[[0.0, 0.6, 0.6], [0.8, 0.4, 0.8], [0.8, 0.8, 0.8]]], np.float32)  # (1, 3, 3)
    msk = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32)
    out = A.repaint_lesion(img, msk, level=0.1)
    expected = img.copy()
    expected[0, 1, 1] = 0.1  # the lesion pixel takes the level
    np.testing.assert_allclose(out, expected)  # the masked background pixel (0) stays 0
    half = A.repaint_lesion(img, msk, level=0.0, mix=0.5)
    assert half[0, 1, 1] == pytest.approx(0.2)  # half-way from 0.4 to 0.0
    soft = A.repaint_lesion(img, msk, level=0.0, edge_px=1.0)
    assert soft[0, 1, 1] == pytest.approx(0.0) and 0.6 > soft[0, 0, 1] > 0.0  # neighbours partly painted
    assert soft[0, 2, 2] < 0.8 and soft[0, 2, 2] > soft[0, 1, 2]  # farther from the lesion: less paint
    stack = np.concatenate([img, img * 0.5])
    both = A.repaint_lesion(stack, msk, level=0.1)
    np.testing.assert_allclose(both[1, 1, 1], 0.1)  # every channel repainted with the centre's mask


def test_repaint_texture_is_seeded_and_scaled() -> None:
    img = np.full((1, 40, 40), 0.7, np.float32)
    msk = np.zeros((40, 40), np.float32)
    msk[5:35, 5:35] = 1
    a = A.repaint_lesion(img, msk, level=0.3, texture=0.05, seed=3)
    np.testing.assert_array_equal(a, A.repaint_lesion(img, msk, level=0.3, texture=0.05, seed=3))
    inside = a[0][msk > 0]
    assert inside.mean() == pytest.approx(0.3, abs=0.02) and inside.std() == pytest.approx(0.05, rel=0.25)
    assert not np.array_equal(a, A.repaint_lesion(img, msk, level=0.3, texture=0.05, seed=4))


def test_apply_repaints_only_slices_with_a_lesion() -> None:
    img = np.full((8, 8), 0.7, np.float32)
    d = A.AugmentDraw(lesion_level=0.2)
    a, _ = A.apply(img, np.zeros((8, 8), np.float32), d, "axial")
    np.testing.assert_array_equal(a, img)  # no lesion: nothing to repaint
    msk = np.zeros((8, 8), np.float32)
    msk[2:4, 2:4] = 1
    a, m = A.apply(img, msk, d, "axial")
    np.testing.assert_allclose(a[msk > 0], 0.2)
    np.testing.assert_allclose(a[msk == 0], 0.7)
    np.testing.assert_array_equal(m, msk)
    c, _ = A.apply_channels(np.stack([img, img, img]), msk, d, "axial")
    np.testing.assert_array_equal(c[1], a)  # the centre slice as a 2D input


# --- brain-scaled bias field ----------------------------------------------------------------------------------
def test_brain_bias_field_has_the_drawn_sd_over_the_foreground() -> None:
    fg = np.zeros((30, 40), bool)
    fg[10:20, 12:30] = True
    ctrl = np.random.default_rng(1).standard_normal((4, 4))
    f = A.brain_bias_field(fg, ctrl, sd=0.25, mean=0.1)
    assert float(f[fg].mean()) == pytest.approx(0.1, abs=1e-6)
    assert float(f[fg].std()) == pytest.approx(0.25, rel=1e-5)
    # the control points span the foreground's box: one raised corner point makes that corner of the box brightest
    corner = np.zeros((4, 4))
    corner[0, 0] = 1.0
    g = A.brain_bias_field(fg, corner, sd=0.2)
    inside = np.where(fg, g, -np.inf)
    assert np.unravel_index(np.argmax(inside), fg.shape) == (10, 12)
    # a flat field has no spread to scale: the mean alone; no foreground: zeros
    np.testing.assert_allclose(A.brain_bias_field(fg, np.ones((4, 4)), sd=0.3, mean=-0.2)[fg], -0.2, atol=1e-7)
    assert not A.brain_bias_field(np.zeros((5, 5), bool), ctrl, sd=0.3).any()


def test_brain_bias_draw_is_off_by_default_and_last() -> None:
    p = A.AugmentParams()
    off = [A.draw(np.random.default_rng(s), "axial", p) for s in range(20)]
    assert all(d.brain_bias is None for d in off)
    on = [A.draw(np.random.default_rng(s), "axial", replace(p, bias_brain=0.35)) for s in range(20)]
    assert [replace(d, brain_bias=None) for d in on] == off  # the other steps' values are unchanged
    assert all(0.0 <= d.brain_bias[0] <= 0.35 and len(d.brain_bias) == 18 for d in on)
    assert A.settings({"augment": {"bias_brain": 0.35}}).bias_brain == 0.35


def test_brain_bias_applied_after_gain_on_the_foreground_only() -> None:
    one = np.zeros((9, 9), np.float32)
    one[4, 4] = 0.5
    # a single foreground pixel: no spread, so the field there is exactly the drawn mean
    d = A.AugmentDraw(gain=2.0, brain_bias=(0.3, np.log(1.2), *([0.5] * 16)))
    a, _ = A.apply(one, one > 0, d, "axial")
    assert a[4, 4] == pytest.approx(0.5 * 2.0 * 1.2, rel=1e-5)
    assert not a[one == 0].any()
    img = np.zeros((40, 40), np.float32)
    img[8:32, 6:34] = 0.6
    d = A.AugmentDraw(brain_bias=(0.2, 0.0, *np.random.default_rng(3).standard_normal(16)))
    b, _ = A.apply(img, img > 0, d, "axial")
    assert float(np.log(b[img > 0] / 0.6).std()) == pytest.approx(0.2, rel=1e-3)
    assert not b[img == 0].any()
