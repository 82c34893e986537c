"""Post-processing chosen on 1 mm validation scans: the probe behind this record (not a benchmark).

Three steps, run from the repository root:

    # 1. per-plane probabilities of the fresh scans of a validation seed, on the scan grid as `raxnet predict`
    #    makes them (float16 .npz per scan, with the true mask); resumable
    python bench/results/postproc_1mm_2026-12-06/validation_probs.py dump --seed 3131 --subjects 60 --out VAL
    # 2. the post-processing grid scored on them and chosen exactly as stage 08 chooses
    python bench/results/postproc_1mm_2026-12-06/validation_probs.py grid VAL --out validation/postprocessing_candidates.csv
    # 3. per candidate: true lesions found by size, false-positive components per scan, Dice
    python bench/results/postproc_1mm_2026-12-06/validation_probs.py tradeoff VAL --out validation/detection_tradeoff.csv
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from raxnet.components import label
from raxnet.metrics import dice, lesion_detection
from raxnet.planes import PLANES
from raxnet.postprocess import postprocess
from raxnet.postprocess_selection import choose, score_candidates, summarise_candidates
from raxnet.predict import Predictor, to_model_grid

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/
from bench_quality import scans  # noqa: E402

GRID = dict(thresholds=[0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5], sizes_mm3=[0, 20, 50, 100, 200, 300],
            peaks=[0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
SIZE_BINS_ML = [0, 0.01, 0.1, 1, 10, np.inf]
SIZE_NAMES = ["<0.01", "0.01-0.1", "0.1-1", "1-10", ">10"]


def dump(weights: str, seed: int, subjects: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pred = Predictor(weights)
    for _, name, subj in tqdm(scans(subjects, 0, seed, 1), total=subjects, desc="dump", unit="scan"):
        target = out / f"{name}.npz"
        if target.exists():
            continue
        img = nib.Nifti1Image(subj["t1"], subj["affine"])
        on_grid, resampled = to_model_grid(subj["t1"], img, pred.manifest, Path(name))
        probs, spacing = pred.scan_probabilities(on_grid, resampled, img, name)
        tmp = out / f"{name}.tmp.npz"
        np.savez_compressed(tmp, truth=subj["truth"].astype(np.uint8), spacing=np.asarray(spacing, float),
                            **{k: v.astype(np.float16) for k, v in probs.items()})
        tmp.rename(target)


def _load(folder: Path):
    """``(name, probs, truth, spacing)`` per dumped scan, one at a time (60 scans in float32 would take 6 GB)."""
    files = sorted(p for p in folder.glob("*.npz") if not p.name.endswith(".tmp.npz"))
    for f in tqdm(files, unit="scan"):
        z = np.load(f)
        yield f.stem, {k: z[k].astype(np.float32) for k in PLANES}, z["truth"], tuple(z["spacing"])


def grid(folder: Path, out: Path) -> None:
    rows = []
    for name, probs, truth, spacing in _load(folder):
        rows += [{**r, "subject": name} for r in score_candidates(probs, truth, spacing, methods=["mean"], **GRID)]
    cand = summarise_candidates(rows)
    cand.to_csv(out, index=False, float_format="%.6g")
    print(cand.sort_values("dice_lesion_f1_mean", ascending=False).head(10).to_string())
    print("chosen:", choose(cand, metric="dice_lesion_f1", default_threshold=0.5, min_gain=0.005))


def tradeoff(folder: Path, out: Path) -> None:
    cands = [(t, s, p) for t, s, p in itertools.product([0.1, 0.15, 0.2, 0.3], [0, 20, 50, 100],
                                                          [0, 0.3, 0.4, 0.5, 0.6]) if not (p and p <= t)]
    rows = []
    for name, probs, truth, spacing in _load(folder):
        fused = np.mean([probs[p] for p in PLANES], axis=0)
        box = np.argwhere((fused >= min(c[0] for c in cands)) | (truth > 0))  # every mask voxel lies inside
        crop = tuple(slice(a, b) for a, b in zip(box.min(0), box.max(0) + 1))
        t_c, p_c = truth[crop], {k: v[crop] for k, v in probs.items()}
        tl, tn = label(t_c, 26)
        ml = np.bincount(tl.ravel(), minlength=tn + 1)[1:] * float(np.prod(spacing)) / 1000.0
        for t, s, p in cands:
            m = postprocess(p_c, fusion="mean", threshold=t, min_lesion_mm3=s, min_peak=p, spacing=spacing,
                            connectivity=26)
            hit = np.bincount(tl[m > 0].ravel(), minlength=tn + 1)[1:] > 0
            row = {"subject": name, "threshold": t, "min_lesion_mm3": s, "min_peak": p, "dice": dice(m, t_c),
                   "fp": lesion_detection(m, t_c, connectivity=26)["fp"]}
            for b, size in enumerate(SIZE_NAMES):
                sel = (ml >= SIZE_BINS_ML[b]) & (ml < SIZE_BINS_ML[b + 1])
                row[f"n_{size}"], row[f"hit_{size}"] = int(sel.sum()), int(hit[sel].sum())
            rows.append(row)
    df = pd.DataFrame(rows)
    keys = ["threshold", "min_lesion_mm3", "min_peak"]
    g = df.groupby(keys).sum(numeric_only=True)
    table = pd.DataFrame({"dice_mean": df.groupby(keys)["dice"].mean(),
                          "fp_per_scan": g["fp"] / df["subject"].nunique(),
                          **{f"found_{s}": g[f"hit_{s}"] / g[f"n_{s}"] for s in SIZE_NAMES}}).reset_index()
    table.to_csv(out, index=False, float_format="%.4g")
    print({s: int(g[f"n_{s}"].iloc[0]) for s in SIZE_NAMES})
    print(table.round(3).to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--weights", default="weights/demo")
    d.add_argument("--seed", type=int, required=True)
    d.add_argument("--subjects", type=int, default=60)
    d.add_argument("--out", type=Path, required=True)
    for step in ("grid", "tradeoff"):
        s = sub.add_parser(step)
        s.add_argument("folder", type=Path)
        s.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    if a.step == "dump":
        dump(a.weights, a.seed, a.subjects, a.out)
    else:
        (grid if a.step == "grid" else tradeoff)(a.folder, a.out)


if __name__ == "__main__":
    main()
