"""Lesion statistics on hand-built volumes with known answers, and the location rule in the real template."""

import numpy as np
import pytest

from raxnet import lesions
from raxnet.lesions import component_table, components, slice_stats, subject_lesion_stats

EYE = np.eye(4)


def test_components_corner_touching_voxels() -> None:
    m = np.zeros((4, 4, 4), np.uint8)
    m[0, 0, 0] = m[1, 1, 1] = 1  # touch at a corner only
    assert components(m, 26)[1].tolist() == [2]
    assert components(m, 18)[1].tolist() == [1, 1]
    assert components(m, 6)[1].tolist() == [1, 1]
    e = np.zeros((4, 4, 4), np.uint8)
    e[0, 0, 0] = e[1, 1, 0] = 1  # touch along an edge
    assert components(e, 18)[1].tolist() == [2]
    assert components(e, 6)[1].tolist() == [1, 1]
    with pytest.raises(ValueError, match="6, 18 or 26"):
        components(m, 8)


def test_components_sorted_and_relabelled() -> None:
    m = np.zeros((10, 10, 10), np.uint8)
    m[0, 0, 0] = 1  # 1 voxel, first in C order
    m[5:7, 5:7, 5:7] = 1  # 8 voxels
    m[9, 0:3, 0] = 1  # 3 voxels
    labels, sizes = components(m)
    assert sizes.tolist() == [8, 3, 1]
    assert labels[5, 5, 5] == 1 and labels[9, 1, 0] == 2 and labels[0, 0, 0] == 3
    assert components(np.zeros((3, 3, 3)))[1].size == 0


def test_subject_stats_known_volume() -> None:
    # 2 mm voxels (8 mm3), origin so that array x index 5 is x = 0 mm
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10.0, 0.0, 0.0]
    m = np.zeros((10, 6, 6), np.uint8)
    m[1:3, 1:3, 1:3] = 1  # 8 voxels, x index 1..2 -> x = -8, -6 mm (left)
    m[7, 4, 4] = 1  # 1 voxel, x = 4 mm (right)
    m[8, 5, 5] = 1  # corner-touching -> same component with 26-connectivity
    s = subject_lesion_stats(m, affine, reference=False, bilateral_fraction=0.05)
    assert s["lesion_voxels"] == 10 and s["lesion_volume_mm3"] == 80.0
    assert s["n_lesions"] == 2 and s["largest_lesion_voxels"] == 8 and s["lesion_sizes"] == "8;2"
    # centroid in mm: mean of voxel centres
    idx = np.argwhere(m)
    expected = (idx * 2.0 + [-10.0, 0.0, 0.0]).mean(axis=0)
    assert [s["centroid_x_mm"], s["centroid_y_mm"], s["centroid_z_mm"]] == pytest.approx(expected, abs=1e-3)
    assert s["hemisphere"] == "bilateral"  # 2 of 10 voxels on the right
    assert subject_lesion_stats(m, affine, reference=False, bilateral_fraction=0.3)["hemisphere"] == "left"
    assert subject_lesion_stats(m, affine, connectivity=6, reference=False)["lesion_sizes"] == "8;1;1"


def test_subject_stats_empty_mask() -> None:
    s = subject_lesion_stats(np.zeros((3, 3, 3)), EYE)
    assert s["lesion_voxels"] == 0 and s["n_lesions"] == 0 and s["lesion_sizes"] == ""
    assert s["hemisphere"] == "none" and s["location"] == "none" and np.isnan(s["centroid_x_mm"])


def _ref(shape, cortical_box):
    brain = np.ones(shape, bool)
    cortical = np.zeros(shape, bool)
    cortical[cortical_box] = True
    return lesions.LocationReference(brain=brain, cortical=cortical, gm_min=0.3)


def test_location_rule_with_hand_made_reference() -> None:
    shape = (20, 10, 10)
    ref = _ref(shape, np.s_[:10])  # the lower half of axis 0 is "cortex"
    m = np.zeros(shape, np.uint8)
    m[2:4, 2:4, 2:4] = 1  # fully cortical
    assert subject_lesion_stats(m, EYE, reference=ref)["location"] == "cortical"
    m2 = np.zeros(shape, np.uint8)
    m2[14:16, 2:4, 2:4] = 1
    assert subject_lesion_stats(m2, EYE, reference=ref)["location"] == "subcortical"
    assert subject_lesion_stats(m | m2, EYE, reference=ref)["location"] == "both"  # components of both kinds
    span = np.zeros(shape, np.uint8)
    span[8:12, 2:4, 2:4] = 1  # one component, half in each zone
    table = component_table(span, EYE, reference=ref)
    assert table["location"].tolist() == ["both"] and table["cortical_fraction"].tolist() == [0.5]
    assert subject_lesion_stats(span, EYE, reference=ref, span_fraction=0.6)["location"] == "cortical"


def test_component_table_rows() -> None:
    m = np.zeros((20, 10, 10), np.uint8)
    m[1:3, 1:3, 1:3] = 1  # 8
    m[15, 5, 5] = 1  # 1
    t = component_table(m, EYE, reference=False)
    assert t["label"].tolist() == [1, 2] and t["voxels"].tolist() == [8, 1]
    assert t["volume_mm3"].tolist() == [8.0, 1.0]
    assert t.loc[0, ["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].tolist() == [1.5, 1.5, 1.5]
    assert t["hemisphere"].tolist() == ["right", "right"]  # x > 0 mm with the identity affine
    assert len(component_table(np.zeros((3, 3, 3)), EYE)) == 0


def test_slice_stats_axis_conventions() -> None:
    shape = (7, 8, 9)
    m = np.zeros(shape, np.uint8)
    m[2, 5, 6] = 1
    m[2, 5, 4] = 1  # same sagittal & coronal slice, two 2D components there; different axial slices
    brain = np.zeros(shape, bool)
    brain[1:6, 1:7, 1:8] = True
    sag, cor, ax = (slice_stats(m, p, brain) for p in ("sagittal", "coronal", "axial"))
    assert len(sag) == 7 and len(cor) == 8 and len(ax) == 9
    assert list(sag.columns) == ["slice", "lesion_pixels", "n_lesions", "brain_pixels"]
    assert sag.loc[sag.lesion_pixels > 0, "slice"].tolist() == [2]
    assert cor.loc[cor.lesion_pixels > 0, "slice"].tolist() == [5]
    assert ax.loc[ax.lesion_pixels > 0, "slice"].tolist() == [4, 6]
    assert sag.loc[2, "n_lesions"] == 2 and sag.loc[2, "lesion_pixels"] == 2 and ax.loc[6, "n_lesions"] == 1
    assert sag.loc[0, "brain_pixels"] == 0 and sag.loc[1, "brain_pixels"] == 6 * 7
    assert ax.loc[4, "brain_pixels"] == 5 * 6
    assert slice_stats(m, "axial")["brain_pixels"].isna().all()


def test_slice_stats_diagonal_pixels_8_vs_4() -> None:
    m = np.zeros((4, 4, 3), np.uint8)
    m[0, 0, 1] = m[1, 1, 1] = 1  # diagonal neighbours in axial slice 1
    assert slice_stats(m, "axial").loc[1, "n_lesions"] == 1
    assert slice_stats(m, "axial", connectivity=4).loc[1, "n_lesions"] == 2


# ---- the location rule in the real MNI152 template (the reference is built once: ~4 s)
@pytest.fixture(scope="module")
def atlas_grid():
    from raxnet import templates

    return templates.ATLAS_SHAPE, templates.ATLAS_AFFINE


def _ball(shape, affine, centre_mm, radius):
    ijk = np.round(np.linalg.inv(affine) @ np.array([*centre_mm, 1.0]))[:3].astype(int)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return (sum((g - c) ** 2 for g, c in zip(grids, ijk)) <= radius**2).astype(np.uint8)


BLOBS = [  # (name, centre in MNI mm, expected location)
    ("left thalamus", (-10, -19, 6), "subcortical"),
    ("right putamen", (25, 2, 2), "subcortical"),
    ("left internal capsule", (-20, -5, 8), "subcortical"),
    ("left cerebellum", (-30, -70, -35), "subcortical"),
    ("left lateral temporal cortex", (-60, -20, -10), "cortical"),
    ("right insula", (38, -2, 5), "cortical"),
]


def test_location_in_real_template(atlas_grid) -> None:
    shape, affine = atlas_grid
    m = np.zeros(shape, np.uint8)
    for _, centre, _ in BLOBS:
        m |= _ball(shape, affine, centre, 3)
    table = component_table(m, affine)
    assert len(table) == len(BLOBS) and (table["voxels"] == 123).all()
    for name, centre, expected in BLOBS:
        dist = np.hypot(*(table[f"centroid_{a}_mm"] - c for a, c in zip("xyz", centre)))
        row = table.loc[dist.idxmin()]
        assert dist.min() < 1.0, name
        assert row["location"] == expected, name
        assert row["hemisphere"] == ("left" if centre[0] < 0 else "right"), name
    s = subject_lesion_stats(m, affine)
    assert s["location"] == "both" and s["n_lesions"] == 6 and s["hemisphere"] == "bilateral"
    only_deep = m * (np.abs(np.arange(shape[0]) - 98)[:, None, None] < 30)  # |x| < 30 mm: thalamus, putamen, IC
    assert subject_lesion_stats(only_deep, affine)["location"] == "subcortical"
