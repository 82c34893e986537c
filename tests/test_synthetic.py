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


@pytest.fixture(scope="module")
def subject_1mm() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    # A 45 mL left MCA lesion (seed 0, index 1). Bias field off: the contrast test compares the lesion
    # with CSF ~8 cm away, where a smooth bias field of +-20 % would confound the intrinsic contrast.
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
