"""Real ATLAS v2.0 lesion tables -> stage-01 CSVs, and stages 02 + 04 on them at the real scale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raxnet.planes import PLANE_AXIS, PLANES
from raxnet.templates import ATLAS_SHAPE

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "atlas_reference"
BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_folds_real_scale.py"

pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"{REFERENCE} not present")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """Convert + stage 02 + stage 04 in a fresh process (so its peak RSS is measured on its own)."""
    work = tmp_path_factory.mktemp("atlas_real")
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--reference", str(REFERENCE), "--work-dir", str(work), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print("\nreal-scale stages 02+04:", json.dumps(result, indent=1))  # shown with pytest -s
    return work, result


def test_converted_tables_match_the_reference(real_run):
    work, _ = real_run
    subjects = pd.read_csv(work / "01_dataset" / "subjects.csv", dtype={"subject": str})
    ref = pd.read_csv(REFERENCE / "atlas_v2_subject_lesions.csv", dtype={"subject": str})
    assert len(subjects) == len(ref) == 655
    assert subjects["subject"].tolist() == sorted(ref["subject"])
    assert (subjects["t1_path"].isna()).all()
    from raxnet.templates import template_data

    mask = template_data("brain_mask", 1) > 0
    for plane in PLANES:
        sl = pd.read_csv(work / "01_dataset" / f"slices_{plane}.csv", dtype={"subject": str})
        n = ATLAS_SHAPE[PLANE_AXIS[plane]]
        assert len(sl) == 655 * n  # every slice of every subject
        lesion = pd.read_csv(REFERENCE / f"atlas_v2_lesion_slices_{plane}.csv", dtype={"subject": str})
        assert (sl["lesion_pixels"] > 0).sum() == len(lesion)
        per_subject = sl.groupby("subject")["lesion_pixels"].sum()
        assert (per_subject == subjects.set_index("subject")["lesion_voxels"]).all()
        first = sl[sl["subject"] == subjects["subject"].iloc[0]]["brain_pixels"].to_numpy()
        axes = tuple(a for a in range(3) if a != PLANE_AXIS[plane])
        assert np.array_equal(first, mask.sum(axis=axes))
    # centroid x from the sagittal areas, in mm (x = index - 98)
    sag = pd.read_csv(REFERENCE / "atlas_v2_lesion_slices_sagittal.csv", dtype={"subject": str})
    s0 = sag[sag["subject"] == "sub-r001s001"]
    cx = (s0["slice"] * s0["lesion_pixels"]).sum() / s0["lesion_pixels"].sum() - 98
    row = subjects.set_index("subject").loc["sub-r001s001"]
    assert row["centroid_x_mm"] == pytest.approx(cx, abs=0.01) and row["hemisphere"] == "right"


def test_real_scale_time_memory_and_balance(real_run):
    _, r = real_run
    # CPU time: the work itself (wall time also counts other jobs' load on a shared 2-core machine).
    assert r["cpu_seconds_02_04"] < 30, r
    assert r["seconds_02_04"] < 120, r
    assert r["peak_rss_mb"] < 1024, r
    assert r["n_train"] == 524 and r["n_holdout"] == 131
    assert r["split_ks_p"] > 0.05 and r["split_mwu_p"] > 0.05
    bal = {b["plane"]: b for b in r["balance"]}
    for plane in ("volume", *PLANES):
        assert bal[plane]["max_bin_deviation"] < 0.02, bal[plane]
        assert bal[plane]["min_ks_p"] > 0.01 and bal[plane]["min_mwu_p"] > 0.01, bal[plane]
    for plane in PLANES:
        assert 0.18 < bal[plane]["lesion_slice_share_min"] <= bal[plane]["lesion_slice_share_max"] < 0.22


def test_real_scale_leakage_invariants(real_run):
    work, r = real_run
    sys.path.insert(0, str(BENCH.parent))
    try:
        from bench_folds_real_scale import check_invariants
    finally:
        sys.path.pop(0)
    counts = check_invariants(work)  # raises on a violation
    assert counts == r["lesion_slices"]
    # normal slices: lesion-free, >= 25 % of the largest slice brain area, 1:1 with lesion slices per fold
    ax = pd.read_csv(work / "04_cross_validation" / "axial_folds.csv", dtype={"subject": str})
    sl = pd.read_csv(work / "01_dataset" / "slices_axial.csv", dtype={"subject": str})
    nrm = ax[ax["kind"] == "normal"].merge(sl, on=["subject", "slice"], suffixes=("", "_src"))
    assert (nrm["lesion_pixels_src"] == 0).all()
    assert (nrm["brain_pixels"] >= 0.25 * sl["brain_pixels"].max()).all()
    n = ax.groupby(["fold", "kind"]).size().unstack()
    assert (n["normal"] == n["lesion"]).all()
