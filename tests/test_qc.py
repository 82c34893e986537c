"""raxnet.qc: cut point choice and the overlay PNG (contour colours really drawn, no truth for inference)."""

import numpy as np
import pytest

from raxnet import qc
from raxnet.plotting import plt


def _volumes():
    t1 = np.zeros((30, 36, 28), np.float32)
    t1[3:27, 3:33, 3:25] = 100.0
    truth = np.zeros(t1.shape, np.uint8)
    truth[10:16, 12:20, 8:14] = 1
    pred = np.zeros(t1.shape, np.uint8)
    pred[11:17, 13:21, 9:15] = 1
    return t1, truth, pred


def test_focus_point_truth_then_prediction_then_centre():
    t1, truth, pred = _volumes()
    # box 10..15 x 12..19 x 8..13: centroid (12.5, 15.5, 10.5); ties go to the first voxel in array order
    assert qc.focus_point(truth, pred, t1.shape) == (12, 15, 10)
    empty = np.zeros_like(truth)
    assert qc.focus_point(empty, pred, t1.shape) == (13, 16, 11)  # prediction box shifted by one
    assert qc.focus_point(empty, empty, t1.shape) == (15, 18, 14)
    assert qc.focus_point(None, empty, t1.shape) == (15, 18, 14)
    # two lesions: the centroid (10, 10, 10) is outside both; the point must be a lesion voxel
    two = np.zeros((21, 21, 21), np.uint8)
    two[2:5, 9:12, 9:12] = 1
    two[15:18, 8:13, 8:13] = 1  # larger, so the centroid is pulled towards it
    p = qc.focus_point(two, None, two.shape)
    assert two[p] == 1 and p[0] == 15


def _colour_pixels(png, hex_colour, tol=40):
    img = plt.imread(str(png))[..., :3] * 255.0
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], float)
    return int((np.abs(img - rgb).max(axis=-1) < tol).sum())


def test_overlay_with_truth_draws_both_contours(tmp_path):
    t1, truth, pred = _volumes()
    path = qc.qc_overlay(t1, pred, tmp_path / "qc" / "s_qc.png", truth=truth, title="s: Dice 0.58",
                         spacing=(1.0, 1.0, 2.0))
    assert path.is_file()
    assert _colour_pixels(path, qc.TRUTH_COLOUR) > 50
    assert _colour_pixels(path, qc.PRED_COLOUR) > 50
    assert not list((tmp_path / "qc").glob(".*"))  # atomic write left no temp file


def test_overlay_without_truth_and_empty_masks(tmp_path):
    t1, _, pred = _volumes()
    path = qc.qc_overlay(t1, pred, tmp_path / "pred_qc.png", title="inference")
    assert _colour_pixels(path, qc.PRED_COLOUR) > 50
    assert _colour_pixels(path, qc.TRUTH_COLOUR) < 5  # only in the legend? no: no truth, no legend entry
    # both empty: still a valid figure (centre cut), no contour
    path = qc.qc_overlay(t1, np.zeros_like(pred), tmp_path / "empty_qc.png", truth=np.zeros_like(pred))
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="shape"):
        qc.qc_overlay(t1, pred[:-1], tmp_path / "bad.png")


def test_heat_map_is_drawn_with_a_colour_bar(tmp_path, monkeypatch):
    """A heat map (e.g. the plane spread) is drawn where it is > 0, transparent elsewhere, with a colour bar."""
    t1, truth, pred = _volumes()
    heat = np.zeros(t1.shape, np.float32)
    heat[8:18, 10:22, 6:16] = 0.4
    figures = []
    monkeypatch.setattr(qc, "save_figure", lambda fig, path: figures.append(fig) or path)
    qc.qc_overlay(t1, pred, tmp_path / "u.png", heat=heat, heat_max=0.47, heat_label="plane spread")
    fig = figures[0]
    assert len(fig.axes) == 4 and fig.axes[3].get_ylabel() == "plane spread"  # 3 views + the colour bar
    shown = fig.axes[0].images[1].get_array()  # axial view: the layer above the T1
    assert shown.mask.sum() > 0 and np.isclose(shown.max(), 0.4) and shown.compressed().min() > 0
    with pytest.raises(ValueError, match="heat map shape"):
        qc.qc_overlay(t1, pred, tmp_path / "v.png", heat=heat[:-1])


def test_overlay_of_a_scan_in_its_own_space_is_drawn_in_ras(tmp_path):
    """An LPS scan (1 x 1 x 1.2 mm) with ``affine`` gives exactly the figure of the same scan flipped to RAS."""
    t1, truth, pred = _volumes()
    lps = np.diag([-1.0, -1.0, 1.2, 1.0])
    flipped = [a[::-1, ::-1, :] for a in (t1, truth, pred)]
    a = qc.qc_overlay(t1, pred, tmp_path / "lps.png", truth=truth, title="t", affine=lps)
    b = qc.qc_overlay(flipped[0], flipped[2], tmp_path / "ras.png", truth=flipped[1], title="t", spacing=(1, 1, 1.2))
    assert a.read_bytes() == b.read_bytes()


def test_registration_overlay_draws_the_template_edges(tmp_path):
    shape = (30, 36, 28)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    r = np.sqrt((((grid - [15, 18, 14]) / [12, 15, 11]) ** 2).sum(-1))
    brain = r <= 1
    template = np.where(r <= 0.5, 0.9, np.where(brain, 0.5, 0.0)).astype(np.float32)  # "white" core in "grey"
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-30, -36, -28]
    path = qc.registration_overlay(template * 700, template, brain, affine, tmp_path / "reg.png", title="reg")
    assert _colour_pixels(path, "#17becf") > 100 and _colour_pixels(path, "#ffdd00") > 100
