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
