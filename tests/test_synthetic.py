"""The ATLAS-shaped synthetic generator: layout, headers, determinism, lesion realism, real statistics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, stats

from raxnet import synthetic as S
from raxnet import synthetic_head as H
from raxnet import templates
from raxnet.errors import ConfigError
from raxnet.io import read_mask, read_volume

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "atlas_reference"
SEED = 7
N_TRAIN, N_SITES, N_TEST = 6, 3, 2
PATH_RE = re.compile(
    r"^(?P<set>Training|Testing)/(?P<site>R\d{3})/(?P<sub>sub-r(?P<sn>\d{3})s\d{3})/ses-1/anat/"
    r"(?P<fsub>sub-r\d{3}s\d{3})_ses-1_space-MNI152NLin2009aSym_"
    r"(?P<kind>T1w|label-L_desc-T1lesion_mask)\.nii\.gz$"
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("synth") / "ATLAS_2"
    table = S.generate_dataset(root, N_TRAIN, SEED, spacing=2, n_sites=N_SITES, n_testing=N_TEST, jobs=1)
    return root, table


#: A gliotic, textured lesion look with a rim and no cavity (for the contrast and partial-volume tests).
LOOK = S.LesionLook(core=0.4, texture=0.04, texture_mm=1.5, rim=0.1, rim_mm=1.5, edge_mm=0.75, cavity_mm=0.0,
                    cavity=0.0)


@pytest.fixture(scope="module")
def subject_1mm() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    # A 45 mL left MCA lesion (seed 0, index 1) with the fixed LOOK. Bias field off: the contrast test
    # compares the lesion with CSF ~8 cm away, where a smooth bias field of +-20 % would confound it.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "draw_lesion_look", lambda rng, profile="training": LOOK)
        return S.generate_subject(1, 0, 1, params={"bias": 0.0})


@pytest.fixture(scope="module")
def plans() -> list[dict]:
    rng = np.random.default_rng(123)
    return [S.sample_lesion_plan(rng, spacing=1) for _ in range(4000)]


def _real() -> pd.DataFrame:
    path = REFERENCE / "atlas_v2_subject_lesions.csv"
    if not path.is_file():
        pytest.skip(f"real ATLAS reference table not available ({path})")
    return pd.read_csv(path)


# --- layout and headers ---------------------------------------------------------------------------------
def test_layout_and_names_exactly_as_atlas(dataset: tuple[Path, pd.DataFrame]) -> None:
    root, table = dataset
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    top = [f for f in files if "/" not in f]
    assert top == ["dataset_description.json", "synthetic_lesions.csv"]
    images = [f for f in files if "/" in f]
    assert len(images) == 2 * N_TRAIN + N_TEST
    seen = {"Training": set(), "Testing": set()}
    for f in images:
        m = PATH_RE.match(f)
        assert m, f
        assert m["sub"] == m["fsub"] and m["site"] == f"R{m['sn']}", f
        if m["set"] == "Testing":
            assert m["kind"] == "T1w", f"testing subjects must have no mask: {f}"
        seen[m["set"]].add(m["sub"])
    assert seen["Training"] == {f"sub-r{i % 3 + 1:03d}s{i // 3 + 1:03d}" for i in range(N_TRAIN)}
    assert seen["Testing"] == {"sub-r001s901", "sub-r002s901"}
    assert list(table["subject"]) == sorted(seen["Training"]) + sorted(seen["Testing"])
    for col in ("subject", "site", "spacing", "location", "territories", "n_lesions", "lesion_voxels"):
        assert col in table.columns
    on_disk = pd.read_csv(root / "synthetic_lesions.csv")
    assert on_disk["subject"].tolist() == table["subject"].tolist()
    meta = json.loads((root / "dataset_description.json").read_text())
    assert meta["GeneratedBy"][0]["Name"] == "raxnet.synthetic" and meta["SyntheticParameters"]["seed"] == SEED


def test_headers_dtypes_and_grid_2mm(dataset: tuple[Path, pd.DataFrame]) -> None:
    root, table = dataset
    shape, affine = templates.grid(2)
    assert shape == (99, 117, 95)
    row = table.iloc[0]
    t1_path, mask_path = S.subject_paths(root, row["subject"], row["site"])
    for path, dtype in ((t1_path, np.int16), (mask_path, np.uint8)):
        img = nib.load(str(path))
        assert img.shape == shape and np.allclose(img.affine, affine)
        assert img.get_data_dtype() == dtype
        assert int(img.header["sform_code"]) == 4 and int(img.header["qform_code"]) == 4
    mask, _ = read_mask(mask_path)
    assert set(np.unique(np.asarray(nib.load(str(mask_path)).dataobj)).tolist()) <= {0, 1}
    assert int(mask.sum()) == int(row["lesion_voxels"]) > 0
    assert int(row["lesion_voxels"]) * 8 == int(row["lesion_mm3"])
    t1, _ = read_volume(t1_path)
    assert t1.min() == 0 and t1.max() > 200  # arbitrary scanner units, background exactly 0
    n_comp = ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]
    assert n_comp == int(row["n_lesions"])


def test_1mm_grid_is_the_real_atlas_grid(subject_1mm: tuple, tmp_path: Path) -> None:
    t1, mask, affine, info = subject_1mm
    assert t1.shape == mask.shape == templates.ATLAS_SHAPE == (197, 233, 189)
    assert np.array_equal(affine, templates.ATLAS_AFFINE)
    assert t1.dtype == np.float32 and mask.dtype == np.uint8 and info["spacing"] == 1
    assert np.array_equal(t1, np.rint(t1))  # integer-valued: int16 storage is lossless
    assert info["lesion_voxels"] == int(mask.sum()) == info["lesion_mm3"]


# --- determinism --------------------------------------------------------------------------------------------
def test_same_seed_identical_different_seed_differs() -> None:
    a = S.generate_subject(4, 11, 2)
    b = S.generate_subject(4, 11, 2)
    c = S.generate_subject(4, 12, 2)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert a[0].tobytes() != c[0].tobytes()
    assert a[3] | {"seconds": 0} == b[3] | {"seconds": 0}


def test_cli_parallel_and_fewer_subjects_give_identical_files(
    dataset: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    """--jobs 2 with fewer subjects: same bytes for the shared subjects; stale subjects are removed."""
    root, table = dataset
    out = tmp_path / "ATLAS_2"
    stale = out / "Training" / "R001" / "sub-r001s050" / "ses-1" / "anat"
    stale.mkdir(parents=True)
    (stale / "sub-r001s050_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz").write_bytes(b"old")
    (out / "dataset_description.json").write_text(json.dumps({"GeneratedBy": [{"Name": "raxnet.synthetic"}]}))
    argv = ["--out", str(out), "--subjects", "4", "--sites", "3", "--testing", "2", "--seed", str(SEED)]
    assert S.main(argv + ["--spacing", "2", "--jobs", "2"]) == 0
    assert not (out / "Training" / "R001" / "sub-r001s050").exists()
    new = pd.read_csv(out / "synthetic_lesions.csv")
    assert len(new) == 6
    for _, row in new.iterrows():
        testing = row["set"] == "testing"
        for a, b in zip(S.subject_paths(root, row["subject"], row["site"], testing),
                        S.subject_paths(out, row["subject"], row["site"], testing)):
            if testing and "mask" in a.name:
                assert not a.exists() and not b.exists()
                continue
            assert a.read_bytes() == b.read_bytes(), b
    old = table.set_index("subject").loc[new["subject"]].reset_index()
    pd.testing.assert_frame_equal(old, new, check_dtype=False)


def test_refuses_foreign_folder_and_bad_settings(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("not ours")
    with pytest.raises(ConfigError, match="refusing"):
        S.generate_dataset(tmp_path, 1, 0, spacing=2, n_sites=1)
    assert (tmp_path / "precious.txt").read_text() == "not ours"
    with pytest.raises(ConfigError, match="spacing"):
        S.generate_dataset(tmp_path / "x", 1, 0, spacing=3, n_sites=1)
    with pytest.raises(ConfigError, match="unknown setting"):
        S.run({"synthetic": {"subjcts": 3}}, {"data_root": str(tmp_path / "y"), "seed": 0, "jobs": 1})


# --- lesion realism -----------------------------------------------------------------------------------------
def test_lesions_inside_brain_and_tissue(dataset: tuple[Path, pd.DataFrame], subject_1mm: tuple) -> None:
    root, table = dataset
    # The anatomy moves by at most 2.5 x deform_mm (7.5 mm) + 3 % scaling: 12 mm = 6 voxels of slack.
    brain2 = ndimage.binary_dilation(templates.template_data("brain_mask", 2) > 0, iterations=6)
    for _, row in table[table["set"] == "training"].iterrows():
        t1_path, mask_path = S.subject_paths(root, row["subject"], row["site"])
        mask, _ = read_mask(mask_path)
        t1, _ = read_volume(t1_path)
        assert (t1[mask > 0] > 0).all(), row["subject"]
        assert not (mask.astype(bool) & ~brain2).any(), row["subject"]
    t1, mask, _, _ = subject_1mm
    assert (t1[mask > 0] > 0).all()


def test_lesion_darker_than_tissue_but_not_csf(subject_1mm: tuple) -> None:
    t1, mask, _, info = subject_1mm
    lesion = mask.astype(bool)
    assert info["location"] == "cortical" and lesion.sum() > 20000
    core = ndimage.binary_erosion(lesion, iterations=3)
    ring = ndimage.binary_dilation(lesion, iterations=6) & ~ndimage.binary_dilation(lesion, iterations=3)
    ring &= t1 > 0
    # Deep lateral-ventricle CSF from the template, eroded so the ~3 mm deformation keeps it CSF.
    gm, wm = templates.template_data("gm", 1), templates.template_data("wm", 1)
    x = np.arange(197)[:, None, None] - 98
    csf = (templates.template_data("brain_mask", 1) > 0) & (gm + wm < 0.15) & (np.abs(x) < 25)
    csf[:, :, :72] = False  # above z = 0 mm: the lateral ventricles, not the basal cisterns
    csf = ndimage.binary_erosion(csf, iterations=2) & ~lesion
    wm_ref = np.median(t1[ndimage.binary_erosion(wm > 0.95, iterations=2) & ~ndimage.binary_dilation(lesion, iterations=4)])
    lesion_i, ring_i, csf_i = (float(np.median(t1[r])) / wm_ref for r in (core, ring, csf))
    assert csf.sum() > 1000 and core.sum() > 1000
    assert lesion_i < 0.8 * ring_i, (lesion_i, ring_i)
    assert lesion_i > csf_i + 0.04, (lesion_i, csf_i)  # CSF-like, yet brighter than CSF
    assert float(np.std(t1[core])) / wm_ref > 0.03  # heterogeneous core (noise + texture)


def test_partial_volume_rim_is_a_gradual_transition(subject_1mm: tuple) -> None:
    t1, mask, _, _ = subject_1mm
    lesion = mask.astype(bool)
    shells = [lesion & ~ndimage.binary_erosion(lesion, iterations=2)]
    shells.append(ndimage.binary_erosion(lesion, iterations=4))  # deep core
    outer = ndimage.binary_dilation(lesion, iterations=1) & ~lesion & (t1 > 0)
    far = ndimage.binary_dilation(lesion, iterations=6) & ~ndimage.binary_dilation(lesion, iterations=4) & (t1 > 0)
    med = [float(np.median(t1[s])) for s in (shells[1], shells[0], outer, far)]
    assert med[0] < med[2] < med[3], med  # core dark, rim partially blended, tissue bright


def test_realised_volume_and_count_track_the_plan(dataset: tuple[Path, pd.DataFrame]) -> None:
    _, table = dataset
    big = table[table["requested_mm3"] >= 50 * 8]
    assert len(big) >= 4
    ratio = big["lesion_mm3"] / big["requested_mm3"]
    assert ratio.between(0.8, 1.25).all(), ratio.tolist()
    assert (table["n_lesions"] <= table["planned_lesions"]).all()
    assert (table["n_lesions"] == table["planned_lesions"]).mean() >= 0.75


# --- statistics vs the real ATLAS table -------------------------------------------------------------------------
def test_volume_distribution_matches_real_atlas(plans: list[dict]) -> None:
    real = _real()
    synth = np.array([p["total_mm3"] for p in plans])
    ks = stats.ks_2samp(np.log(synth), np.log(real["lesion_voxels"]))
    assert ks.statistic < 0.06, ks
    for q in (10, 25, 50, 75, 90):
        r = np.percentile(synth, q) / np.percentile(real["lesion_voxels"], q)
        assert 0.8 < r < 1.25, (q, r)
    assert synth.max() <= real["lesion_voxels"].max() and synth.min() >= real["lesion_voxels"].min()


def test_count_distribution_matches_real_atlas(plans: list[dict]) -> None:
    real = _real()
    n = np.array([len(p["volumes_mm3"]) for p in plans])
    for k in (1, 2, 3):
        assert abs((n == k).mean() - (real["n_lesions"] == k).mean()) < 0.03, k
    assert abs((n >= 4).mean() - (real["n_lesions"] >= 4).mean()) < 0.03
    assert n.max() <= 33
    multi = [p for p in plans if len(p["volumes_mm3"]) > 1]
    frac = np.array([p["volumes_mm3"][0] / sum(p["volumes_mm3"]) for p in multi])
    rm = real[real["n_lesions"] > 1]
    real_frac = rm["largest_lesion_voxels"] / rm["lesion_voxels"]
    assert abs(np.median(frac) - np.median(real_frac)) < 0.08


def test_cortical_subcortical_proportions(plans: list[dict]) -> None:
    cats = np.array([p["categories"][0] for p in plans])
    assert 0.60 < (cats == "cortical").mean() < 0.66
    terr = pd.Series([p["territories"][0] for p in plans]).value_counts()
    assert terr["MCA"] > terr["PCA"] > terr["ACA"]
    assert terr["basal_ganglia"] > terr["thalamus"] > terr["brainstem"] > terr["cerebellum"]
    vols = np.array([p["total_mm3"] for p in plans])
    assert (cats[vols > 36000] == "cortical").mean() > (cats[vols < 1200] == "cortical").mean()
    # The calibration itself: the marginal equals the requested share.
    u = (np.arange(20000) + 0.5) / 20000
    assert abs(S.cortical_probability(S.volume_quantile(u), 0.5).mean() - 0.5) < 1e-3


def test_territories_lie_in_brain_tissue() -> None:
    shape, affine = templates.grid(2)
    tissue = (templates.template_data("gm", 2) + templates.template_data("wm", 2) > 0.5) & (
        templates.template_data("brain_mask", 2) > 0
    )
    axes = S._axes_mm(affine, (0, 0, 0), shape)
    for name in S.TERRITORIES:
        for hemi in (1, -1):
            terr = S._territory_in_box(name, hemi, axes) & tissue
            assert terr.sum() * 8 > 1500, (name, hemi, terr.sum())
            x = axes[0][np.nonzero(terr)[0]]
            assert (x * hemi >= -4).all()  # its own hemisphere (brainstem: paramedian)


def test_warp_trilinear_equals_map_coordinates() -> None:
    rng = np.random.default_rng(0)
    src = rng.random((5, 6, 7, 3)).astype(np.float32)
    rows = src.reshape(-1, 3).view(np.dtype((np.void, 12))).ravel()
    coords = [rng.uniform(0, d - 1, 300).astype(np.float32) for d in (5, 6, 7)]
    coords[0][:3] = [0.0, 4.0, 2.5]  # exact grid points and the upper edge
    out = S._warp_trilinear(rows, src.shape[:3], coords)
    ref = np.stack([ndimage.map_coordinates(src[..., k], np.stack(coords), order=1) for k in range(3)], -1)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_volume_quantile_knots() -> None:
    assert S.volume_quantile(0.5) == pytest.approx(5290.0)
    assert S.volume_quantile(0.25) == pytest.approx(1169.5)
    assert S.volume_quantile(1.0) == pytest.approx(496656.0)
    assert S.COUNT_PROBS.sum() == pytest.approx(1.0) and S.COUNT_PROBS[0] == 0


# --- whole-head scans ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def head_pair() -> tuple[tuple, tuple]:
    """The same 2 mm subject brain-only and whole-head."""
    return S.generate_subject(3, SEED, 2), S.generate_subject(3, SEED, 2, params={"whole_head": True})


def test_whole_head_keeps_the_brain_and_its_mask_exactly(head_pair: tuple[tuple, tuple]) -> None:
    (b_t1, b_mask, _, b_info), (h_t1, h_mask, _, h_info) = head_pair
    brain = b_t1 > 0
    assert np.array_equal(b_mask, h_mask)
    assert np.array_equal(b_t1[brain], h_t1[brain])  # same voxels, same values: the head has its own stream
    assert not b_info["whole_head"] and h_info["whole_head"]
    assert {k: v for k, v in b_info.items() if k != "seconds" and not k.startswith("head_")} == {
        k: v for k, v in h_info.items() if k not in ("seconds", "whole_head") and not k.startswith("head_")
    } | {"whole_head": False}


def test_whole_head_has_scalp_skull_defacing_and_noisy_air(head_pair: tuple[tuple, tuple]) -> None:
    (b_t1, _, _, _), (h_t1, _, affine, info) = head_pair
    brain = b_t1 > 0
    wm = float(np.median(b_t1[ndimage.binary_erosion(templates.template_data("wm", 2) > 0.95)]))
    dist = ndimage.distance_transform_edt(~brain) * 2.0  # mm from the brain
    shell = (dist > 0) & (dist <= 20) & (h_t1 > 0)
    assert shell.sum() > 0.5 * ((dist > 0) & (dist <= 20)).sum()  # the brain is wrapped in tissue
    assert np.percentile(h_t1[shell], 99) > wm  # scalp fat / marrow brighter than white matter
    assert np.percentile(h_t1[shell], 5) < 0.3 * wm  # dark cortical bone and CSF
    # Defacing: an exactly-zero region in front of and below the brain, never within 5 mm of it.
    lab, _ = ndimage.label(h_t1 == 0)
    cut = lab == np.bincount(lab.ravel())[1:].argmax() + 1  # the largest zero region
    y = affine[1, 1] * np.arange(h_t1.shape[1]) + affine[1, 3]
    z = affine[2, 2] * np.arange(h_t1.shape[2]) + affine[2, 3]
    front_low = np.broadcast_to((y > 60)[None, :, None] & (z < -40)[None, None, :], cut.shape)
    assert cut[front_low].mean() > 0.9 and cut.sum() > front_low.sum()
    assert dist[cut].min() >= 5.0
    zero = h_t1 == 0
    # Air far from the head: Rician noise, not zeros; the noise floor is low.
    air = (dist > 45) & ~zero
    assert air.sum() > 1000 and np.median(h_t1[air]) > 0 and np.median(h_t1[air]) < 0.15 * wm
    assert 0 < info["head_csf_mm"] and 0 < info["head_skull_mm"] < 12 and 30 <= info["head_deface_deg"] <= 55


def test_whole_head_deterministic_and_varies_between_subjects() -> None:
    a = S.generate_subject(0, SEED, 2, params={"whole_head": True})
    b = S.generate_subject(0, SEED, 2, params={"whole_head": True})
    c = S.generate_subject(1, SEED, 2, params={"whole_head": True})
    assert a[0].tobytes() == b[0].tobytes()
    assert a[3]["head_deface_deg"] != c[3]["head_deface_deg"]


def test_head_layers_in_anatomical_order_around_a_sphere() -> None:
    """A 60 mm ball 'brain' on the 2 mm grid: along the ray to the vertex, CSF, bone, marrow, bone,
    muscle, fat, skin, then air, at the drawn thicknesses (thickness fields switched off by SD 0)."""
    shape, affine = templates.grid(2)
    ijk = np.indices(shape, dtype=np.float32)
    xyz = [affine[a, a] * ijk[a] + affine[a, 3] for a in range(3)]
    brain = (xyz[0] ** 2 + xyz[1] ** 2 + (xyz[2] - 20.0) ** 2) < 60.0**2
    hp = H.HeadParams(
        closing_mm=8.0, csf_mm=2.0, inner_table_mm=4.0, diploe_mm=6.0, outer_table_mm=4.0, galea_mm=4.0,
        temporalis_mm=0.0, fat_mm=6.0, skin_mm=4.0, csf=0.25, bone=0.05, marrow=0.6, muscle=0.4, fat=1.0,
        skin=0.55, sinus=0.0, neck_z_mm=-60.0, neck_taper=0.3, deface_deg=45.0, deface_margin_mm=10.0,
    )
    head, inside, _ = H.build_head(brain, affine, np.random.default_rng(0), hp, field_sd=0.0)
    assert not head[brain].any() and inside[brain].all()
    i0, j0 = int(-affine[0, 3] / 2), int(-affine[1, 3] / 2)
    ray = head[i0, j0, :]
    z = affine[2, 2] * np.arange(shape[2]) + affine[2, 3]
    d = z - 20.0 - 60.0  # voxel centres along the ray: the ball's surface lies half-way, at d = -1 mm
    def at(mm: float) -> float:
        return float(ray[np.flatnonzero(np.isclose(d, mm))[0]])
    # Edges (mm from the surface): CSF 0-2, inner table -6, diploe -12, outer table -16, galea -20,
    # fat -26, skin -30, then air.
    assert at(0.0) == pytest.approx(0.25, abs=0.02)
    assert at(4.0) == pytest.approx(0.05, abs=0.02)
    assert at(8.0) == pytest.approx(0.6, rel=0.35)  # marrow texture
    assert at(12.0) == at(14.0) == pytest.approx(0.05, abs=0.02)
    assert at(18.0) == pytest.approx(0.4, rel=0.3)  # muscle texture
    assert at(20.0) == at(24.0) == pytest.approx(1.0, abs=0.02)
    assert at(28.0) == pytest.approx(0.55, abs=0.02)
    assert at(32.0) == 0.0


def test_upsample2_equals_scipy_zoom() -> None:
    rng = np.random.default_rng(0)
    for shape in ((5, 6, 7), (4, 9)):
        a = rng.random(shape).astype(np.float32)
        ref = ndimage.zoom(a, 2, order=1, grid_mode=True, mode="nearest")
        np.testing.assert_allclose(H.upsample2(a), ref, atol=1e-5)


def test_profile_hand_values() -> None:
    x = np.array([-1.0, 0.0, 1.0, 1.5, 2.0, 3.0, 5.0])
    out = H._profile(x, [1.0, 3.0], [10.0, 20.0, 0.0], 1.0)
    np.testing.assert_allclose(out, [10, 10, 15, 20, 20, 10, 0])


def test_make_synthetic_atlas_whole_head_flag(tmp_path: Path) -> None:
    out = tmp_path / "ATLAS_2"
    # One subject with the default 4 sites: one site is used.
    assert S.main(["--out", str(out), "--subjects", "1", "--seed", "3", "--spacing", "2", "--whole-head"]) == 0
    table = pd.read_csv(out / "synthetic_lesions.csv")
    assert table["whole_head"].tolist() == [True]
    meta = json.loads((out / "dataset_description.json").read_text())
    assert meta["SyntheticParameters"]["whole_head"] is True and meta["SyntheticParameters"]["sites"] == 1
    assert table["site"].tolist() == ["R001"]
    t1, _ = read_volume(S.subject_paths(out, table["subject"][0], table["site"][0])[0])
    assert (t1 == 0).any() and (t1[0, 0] > 0).any()  # defaced zeros and noisy air


# --- lesion look and the shifted profile -----------------------------------------------------------------------
def test_render_lesion_hand_values() -> None:
    """An 8-voxel cube in uniform WM (0.84) at 1 mm, sharp edge: core, rim and cavity levels exactly."""
    t1 = np.full((20, 20, 20), 0.84, dtype=np.float32)
    lesion = np.zeros(t1.shape, dtype=bool)
    lesion[6:14, 6:14, 6:14] = True
    brain = np.ones(t1.shape, dtype=bool)
    rng = np.random.default_rng(0)
    plain = S.LesionLook(core=0.5, texture=0.0, texture_mm=1.0, rim=0.0, rim_mm=1.0, edge_mm=0.01, cavity_mm=0.0,
                         cavity=0.0)
    a = t1.copy()
    S.render_lesion(a, lesion, brain, plain, 1.0, rng)
    level = S.CSF_LEVEL + 0.5 * (S.GM_LEVEL - S.CSF_LEVEL)  # 0.485: half-way from CSF to GM
    np.testing.assert_allclose(a[lesion], level, atol=1e-6)
    np.testing.assert_allclose(a[~lesion], 0.84, atol=1e-6)
    # Rim +0.1 on the border voxels (depth 1 mm), decaying by e per mm inwards; a cavity at depth 4 mm.
    rimmed = S.LesionLook(core=0.5, texture=0.0, texture_mm=1.0, rim=0.1, rim_mm=1.0, edge_mm=0.01,
                          cavity_mm=2.0, cavity=0.0)
    b = t1.copy()
    S.render_lesion(b, lesion, brain, rimmed, 1.0, rng)
    assert b[6, 10, 10] == pytest.approx(level + 0.1, abs=1e-6)  # depth 1
    assert b[7, 10, 10] == pytest.approx(level + 0.1 * np.exp(-1.0), abs=1e-6)  # depth 2
    # depth 4: cavity weight (4 - 2) / 1.5 -> 1: CSF level, plus the rim's tail exp(-3)
    assert b[9, 9, 9] == pytest.approx(S.CSF_LEVEL + 0.1 * np.exp(-3.0), abs=1e-5)
    # A soft edge blends outside the mask; inside the lesion the weight is at least 0.85.
    soft = S.LesionLook(core=0.5, texture=0.0, texture_mm=1.0, rim=0.0, rim_mm=1.0, edge_mm=1.5, cavity_mm=0.0,
                        cavity=0.0)
    c = t1.copy()
    S.render_lesion(c, lesion, brain, soft, 1.0, rng)
    assert 0.485 < c[5, 10, 10] < 0.84 and c[6, 10, 10] <= 0.85 * level + 0.15 * 0.84 + 1e-6


def test_remap_contrast_hand_values() -> None:
    x = np.array([0.0, S.CSF_LEVEL, S.GM_LEVEL, S.WM_LEVEL, 0.5 * (S.CSF_LEVEL + S.GM_LEVEL), 1.0], np.float32)
    out = S.remap_contrast(x, gm_contrast=0.5, csf_shift=0.05)
    gm = S.WM_LEVEL - 0.5 * (S.WM_LEVEL - S.GM_LEVEL)  # 0.75
    np.testing.assert_allclose(out, [0.0, 0.36, gm, S.WM_LEVEL, 0.5 * (0.36 + gm), 1.0], atol=1e-6)


def test_draw_from_union_and_seeded() -> None:
    iv = ((0.0, 1.0), (5.0, 7.0))
    a = [S.draw_from(np.random.default_rng(3), iv) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    v = np.array([S.draw_from(rng, iv) for _ in range(3000)])
    assert (((v >= 0) & (v <= 1)) | ((v >= 5) & (v <= 7))).all()
    assert abs((v >= 5).mean() - 2 / 3) < 0.03  # chosen in proportion to length
    assert S.draw_from(rng, ((0.3, 0.3),)) == 0.3


def _outside(value: float, intervals: tuple[tuple[float, float], ...]) -> bool:
    return all(not (lo <= value <= hi) for lo, hi in intervals)


def test_shifted_profile_lies_outside_the_training_ranges() -> None:
    train, shifted = S.PROFILES["training"], S.PROFILES["shifted"]
    for key, intervals in shifted.items():
        if key in train and key not in ("gamma", "noise"):
            for lo, hi in intervals:
                assert _outside(lo, train[key]) and _outside(hi, train[key]), key
    rng = np.random.default_rng(0)
    for _ in range(200):
        look = S.draw_lesion_look(rng, "shifted")
        for key in ("core", "texture", "texture_mm", "rim", "rim_mm", "edge_mm"):
            assert _outside(getattr(look, key), train[key]), (key, look)
    # Realised scanner values of shifted subjects vs everything the training profile can produce
    # (site range x subject jitter): gamma 0.81-1.24, noise SD <= 0.025 x 1.5 x 1.25, bias SD 0.1.
    for i in range(2):
        info = S.generate_subject(i, SEED, 2, params={"profile": "shifted"})[3]
        assert info["profile"] == "shifted"
        assert _outside(info["gamma"], ((0.85 * 0.95, 1.18 * 1.05),))
        assert info["noise_sd"] > 0.025 * 1.5 * 1.25 and info["bias_sd"] > 0.1
        assert info["gm_contrast"] < 0.85 and info["csf_shift"] > 0.04 and info["blur_mm"] > 0
    with pytest.raises(ConfigError, match="profile"):
        S.generate_subject(0, SEED, 2, params={"profile": "odd"})


def test_training_looks_cover_their_ranges() -> None:
    rng = np.random.default_rng(1)
    looks = [S.draw_lesion_look(rng) for _ in range(400)]
    core = np.array([lk.core for lk in looks])
    assert core.min() < 0.05 and 0.55 < core.max() <= 0.6  # from CSF-like to 60 % of the way to grey matter
    assert 0.3 < np.mean([lk.cavity_mm > 0 for lk in looks]) < 0.5
