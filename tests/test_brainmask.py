"""The brain-mask step (raxnet.brainmask): the MNI mask on a grid, masking + normalisation, the record, and
the point of it all: a whole-head scan and the same brain-only scan give the same input and mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from raxnet import brainmask as B
from raxnet import synthetic, templates
from raxnet.errors import InputError
from raxnet.intensity import normalise


def test_mask_on_the_atlas_grid_is_nilearns_dilated_in_mm() -> None:
    shape, affine = templates.grid(2)
    base = templates.template_data("brain_mask", 2) > 0
    assert np.array_equal(B.brain_mask(affine, shape, 0.0), base)
    wide = B.brain_mask(affine, shape, 6.0)
    dist = ndimage.distance_transform_edt(~base) * 2.0
    assert np.array_equal(wide, dist <= 6.0)  # 6 mm = 3 voxels (and the diagonals within 6 mm)
    assert B.brain_mask(affine, shape, 6.0) is wide  # cached, read-only
    assert not wide.flags.writeable
    with pytest.raises(ValueError):
        B.brain_mask(affine, shape, -1.0)


def test_mask_on_another_grid_is_resampled() -> None:
    # 10 mm voxels centred on MNI (0, -20, 10): the centre is brain, the corners (|x| = 100 mm) are not.
    affine = np.diag([10.0, 10.0, 10.0, 1.0])
    affine[:3, 3] = (-100.0, -120.0, -90.0)
    m = B.brain_mask(affine, (21, 21, 21), 0.0)
    assert m[10, 10, 10] and not m[0, 0, 0] and not m[20, 10, 10]
    assert B.brain_mask(affine, (21, 21, 21), 10.0).sum() > m.sum()


def test_prepare_hand_case() -> None:
    """Outside the dilated mask -> 0; the scale comes from the undilated mask only."""
    shape, affine = templates.grid(2)
    core = B.brain_mask(affine, shape, 0.0)
    keep = B.brain_mask(affine, shape, 6.0)
    vol = np.where(core, 100.0, 0.0).astype(np.float32)
    vol[core] += np.linspace(0.0, 100.0, int(core.sum()), dtype=np.float32)  # brain: 100..200
    rim = keep & ~core
    vol[rim] = 1000.0  # bright fat in the dilated rim: must not set the scale
    vol[~keep] = 5000.0  # everything else: zeroed
    out = B.prepare(vol, affine, 6.0)
    lo, hi = np.percentile(vol[core], [0.5, 99.5])
    assert not out[~keep].any()
    np.testing.assert_allclose(out[core], np.clip((vol[core] - lo) / (hi - lo), 0, 1.5), rtol=1e-5, atol=1e-6)
    assert np.all(out[rim] == 1.5)  # clipped, not the reference
    np.testing.assert_array_equal(B.prepare(vol, affine, None), normalise(vol))  # off: plain normalisation
    with pytest.raises(InputError, match="scan.nii.gz: no signal inside the MNI152 brain mask"):
        B.prepare(np.where(core, 0.0, 7.0), affine, 6.0, source="scan.nii.gz")


def test_prepare_bias_correction_runs_after_the_mask_before_the_scale(monkeypatch) -> None:
    """bias_correct: N4 sees the masked volume with the grid's voxel size; its output is what gets
    normalised (percentiles still from the undilated mask); off by default."""
    shape, affine = templates.grid(2)
    core = B.brain_mask(affine, shape, 0.0)
    keep = B.brain_mask(affine, shape, 6.0)
    vol = np.where(core, 100.0, 0.0).astype(np.float32)
    vol[core] += np.linspace(0.0, 100.0, int(core.sum()), dtype=np.float32)
    vol[~keep] = 5000.0
    seen = []

    def halve_right_side(v, spacing):  # stand-in for N4: a known change of the intensities
        seen.append((v.copy(), spacing))
        out = v.copy()
        out[shape[0] // 2:] *= 0.5
        return out

    monkeypatch.setattr(B, "n4_correct", halve_right_side)
    out = B.prepare(vol, affine, 6.0, bias_correct=True)
    (given, spacing), = seen
    assert spacing == (2.0, 2.0, 2.0) and not given[~keep].any()
    np.testing.assert_array_equal(given[keep], vol[keep])
    corrected = halve_right_side(np.where(keep, vol, 0.0).astype(np.float32), spacing)
    np.testing.assert_array_equal(out, normalise(corrected, stats_mask=core))
    B.prepare(vol, affine, 6.0)
    assert len(seen) == 2  # only the explicit call above: off by default
    # without the brain mask, N4 sees the whole scan
    np.testing.assert_array_equal(B.prepare(vol, affine, None, bias_correct=True), normalise(halve_right_side(vol, spacing)))
    np.testing.assert_array_equal(seen[2][0], vol)


def test_check_setting_and_record(tmp_path: Path) -> None:
    assert B.check_setting(None, "x") is None and B.check_setting(4, "x") == 4.0
    for bad in (-1, "six", float("nan")):
        with pytest.raises(InputError, match="brain_mask_mm"):
            B.check_setting(bad, "x")
    assert B.read_record(tmp_path) == (False, None)
    B.write_record(tmp_path, 6.0)
    assert B.read_record(tmp_path) == (True, 6.0)
    B.write_record(tmp_path, None)
    assert B.read_record(tmp_path) == (True, None)
    assert B.read_bias_correct(tmp_path) is False
    B.write_record(tmp_path, 6.0, bias_correct=True)
    assert B.read_record(tmp_path) == (True, 6.0) and B.read_bias_correct(tmp_path) is True
    assert B.read_bias_correct(tmp_path / "none") is False  # no record: a run made before the setting existed
    (tmp_path / B.RECORD).write_text('{"brain_mask_mm": 6.0, "bias_correct": "yes"}')
    with pytest.raises(InputError, match=r"convert.json: bias_correct must be true or false, got 'yes'$"):
        B.read_bias_correct(tmp_path)
    (tmp_path / B.RECORD).write_text('{"brain_mask_mm": 6.0}')  # recorded before the setting existed
    assert B.read_bias_correct(tmp_path) is False
    (tmp_path / B.RECORD).write_text("{not json")
    with pytest.raises(InputError, match=r"convert.json: invalid JSON$"):
        B.read_bias_correct(tmp_path)


def test_whole_head_and_brain_only_give_the_same_input() -> None:
    brain_only, _, affine, _ = synthetic.generate_subject(8, 7, 2)
    head = synthetic.generate_subject(8, 7, 2, params={"whole_head": True})[0]
    inside = brain_only > 0
    a, b = B.prepare(brain_only, affine, B.DEFAULT_DILATION_MM), B.prepare(head, affine, B.DEFAULT_DILATION_MM)
    assert float(np.abs(a - b)[inside].mean()) < 0.005
    # Without the step the head's fat and noise change the scale and the networks see the scalp.
    c, d = normalise(brain_only), normalise(head)
    assert float(np.abs(c - d)[inside].mean()) > 0.05 and (d[~inside] > 0).mean() > 0.3
