"""raxnet.intensity: percentile normalisation of the foreground."""

import numpy as np
import pytest

from raxnet.intensity import CLIP_MAX, normalise


def test_background_stays_zero_and_range():
    vol = np.zeros((10, 10, 10), np.float32)
    vol[2:8, 2:8, 2:8] = np.linspace(100, 1100, 216).reshape(6, 6, 6)
    out = normalise(vol)
    assert out.dtype == np.float32
    assert (out[vol == 0] == 0).all()
    assert 0 <= out.min() and out.max() <= CLIP_MAX
    fg = out[vol > 0]
    # linear ramp: the median sits half way between the 0.5th and 99.5th percentiles
    assert np.median(fg) == pytest.approx(0.5, abs=1e-5)
    assert fg.min() == 0.0 and fg.max() == pytest.approx(1.0, abs=0.01)


def test_invariant_to_scanner_scaling():
    rng = np.random.default_rng(1)
    vol = rng.uniform(1, 10, size=(8, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(normalise(vol), normalise(vol * 37.0 + 0.0), atol=1e-5)


def test_empty_volume():
    assert normalise(np.zeros((3, 3, 3))).sum() == 0


def test_hand_computed_scaling_and_clip_at_1_5():
    """1002 foreground voxels (1..1000, 1400, 3000): numpy's linear percentiles at ranks 0.005 * 1001 and
    0.995 * 1001 are 6.005 and 996.995, so v -> (v - 6.005) / 990.99; 3000 lands at 3.02 and is clipped to 1.5,
    1400 stays at 1.4067 (above 1, below the clip), the background stays 0."""
    vol = np.zeros((11, 10, 10), np.float32)
    vol[:10] = np.arange(1, 1001, dtype=np.float32).reshape(10, 10, 10)
    vol[10, 0, 0], vol[10, 0, 1] = 1400.0, 3000.0
    fg = vol[vol > 0]
    lo, hi = np.percentile(fg, [0.5, 99.5])
    assert (lo, hi) == pytest.approx((6.005, 996.995))
    out = normalise(vol)
    assert CLIP_MAX == 1.5
    assert out[10, 0, 1] == pytest.approx(1.5)  # clipped at 1.5, not 1.0
    assert out[10, 0, 0] == pytest.approx((1400 - 6.005) / 990.99, rel=1e-5)  # 1.4067: above 1, not clipped
    assert out[0, 0, 0] == 0.0  # value 1 is below the 0.5th percentile: clipped at 0
    assert out[4, 9, 9] == pytest.approx((500 - 6.005) / 990.99, rel=1e-5)
    assert (out[10, 1:] == 0).all()  # background


def test_stats_mask_restricts_the_percentiles_only():
    """Percentiles from the masked voxels (values 1..100 there), scaling applied everywhere."""
    vol = np.zeros((2, 10, 10), np.float32)
    vol[0] = np.arange(1, 101, dtype=np.float32).reshape(10, 10)
    vol[1] = 10_000.0  # bright voxels outside the stats mask
    mask = np.zeros(vol.shape, bool)
    mask[0] = True
    lo, hi = np.percentile(np.arange(1, 101, dtype=np.float32), [0.5, 99.5])
    out = normalise(vol, stats_mask=mask)
    np.testing.assert_allclose(out[0], np.clip((vol[0] - lo) / (hi - lo), 0, 1.5), rtol=1e-5)
    assert (out[1] == 1.5).all()
    # without the mask the bright half sets the 99.5th percentile and the first half is near 0
    assert normalise(vol)[0].max() < 0.02
    assert normalise(vol, stats_mask=np.zeros(vol.shape, bool)).sum() == 0  # no stats voxel: all zero


def test_constant_foreground_scale_one():
    """hi == lo: the scale is 1, so every foreground voxel maps to 0 (v - lo)."""
    vol = np.zeros((3, 3, 3), np.float32)
    vol[1] = 7.0
    out = normalise(vol)
    assert out.dtype == np.float32 and (out == 0).all()
    vol[1, 1, 1] = 7.5  # one brighter voxel: (7.5 - 7) / scale with scale = hi - lo > 0
    lo, hi = np.percentile(vol[vol > 0], [0.5, 99.5])
    assert normalise(vol)[1, 1, 1] == pytest.approx((7.5 - lo) / (hi - lo), rel=1e-5)


def test_output_type_shape_and_small_positive_values():
    # float64 input in, float32 out; values in (0, 1] are foreground too (only <= 0 is background)
    vol = np.zeros((4, 4, 4), np.float64)
    vol[1:3, 1:3, 1:3] = [[[0.2, 0.4], [0.6, 0.8]], [[0.3, 0.5], [0.7, 0.9]]]
    out = normalise(vol)
    assert out.dtype == np.float32 and out.shape == vol.shape
    lo, hi = np.percentile(vol[vol > 0], [0.5, 99.5])  # 0.2035, 0.8965
    expected = np.where(vol > 0, np.clip((vol - lo) / (hi - lo), 0, 1.5), 0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert out[1, 1, 1] == 0.0 and out[2, 2, 2] > 1.0 and 0 < out[1, 2, 2] < 1
    empty = normalise(np.zeros((3, 4, 5)))
    assert empty.shape == (3, 4, 5) and empty.dtype == np.float32 and not empty.any()


def test_equal_percentiles_use_scale_one():
    """1000 voxels of 7 and one of 8: both percentiles are 7, so the scale is 1 and the 8 maps to 1.0."""
    vol = np.full(1001, 7.0, np.float32)
    vol[-1] = 8.0
    assert np.percentile(vol, [0.5, 99.5]).tolist() == [7.0, 7.0]
    out = normalise(vol.reshape(7, 11, 13))
    assert out.ravel()[-1] == 1.0 and (out.ravel()[:-1] == 0).all()


def test_n4_correct_flattens_a_smooth_field_and_keeps_the_background():
    pytest.importorskip("ants")
    from raxnet.intensity import n4_correct

    ijk = np.indices((40, 40, 40), dtype=np.float32)
    head = ((ijk - 19.5) ** 2).sum(0) < 17**2
    field = np.exp(0.4 * (ijk[0] - 19.5) / 19.5)  # x 0.67 .. x 1.49 from one side to the other
    vol = np.where(head, 100.0 * field, 0.0).astype(np.float32)
    out = n4_correct(vol, (2.0, 2.0, 2.0))
    assert out.dtype == np.float32 and out.shape == vol.shape
    assert not out[~head].any()

    def cv(v):
        return float(v[head].std() / v[head].mean())

    assert cv(vol) > 0.15 and cv(out) < cv(vol) / 3  # one tissue: nearly flat again
    empty = n4_correct(np.zeros((8, 8, 8), np.float32))
    assert empty.shape == (8, 8, 8) and empty.dtype == np.float32 and not empty.any()
    low = n4_correct(vol / 200.0, (2.0, 2.0, 2.0))  # normalised-scale values 0.33-0.75: all of the head is corrected
    assert (low[head] > 0).all() and cv(low) < cv(vol) / 3


def test_n4_correct_fits_its_field_on_an_8_mm_grid(monkeypatch):
    """The default shrink factor makes N4's fitting grid ~8 mm whatever the voxel size; an explicit one wins."""
    ants = pytest.importorskip("ants")
    from raxnet.intensity import n4_correct

    shrinks = []
    monkeypatch.setattr(ants, "n4_bias_field_correction", lambda image, mask, shrink_factor: shrinks.append(shrink_factor) or image)
    vol = np.ones((4, 4, 4), np.float32)
    for spacing in ((1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (1.5, 1.0, 3.0), (3.0, 3.0, 3.0), (10.0, 10.0, 10.0)):
        n4_correct(vol, spacing)
    n4_correct(vol, (1.0, 1.0, 1.0), shrink_factor=2)
    assert shrinks == [8, 4, 8, 3, 1, 2]


def test_n4_correct_without_antspy_is_one_clear_error(monkeypatch):
    import sys

    from raxnet.errors import ConfigError
    from raxnet.intensity import n4_correct

    monkeypatch.setitem(sys.modules, "ants", None)  # import ants -> ImportError
    with pytest.raises(ConfigError, match=r"^--bias-correct needs ANTsPy: pip install --no-deps -r requirements-antspyx.txt$"):
        n4_correct(np.ones((4, 4, 4), np.float32))
