"""Which lesions do the shipped networks miss, and could a post-processing rule bring them back?

Reads the out-of-fold dump of stage 08's selection subjects (size_rule_2026-12-07/dump_oof.py --per-plane: fused
and per-plane probabilities, truth) and the generator's lesion table, and prints
1. per subject: lesion volume, Dice of the shipped rule (threshold 0.3, lesions >= 50 mm³ with peak >= 0.7; the
   outline step leaves lesions under 10 mL alone), the highest fused probability inside the lesion, and the
   generator's location and lesion look -- and the miss rate by location;
2. the components at threshold 0.3 whose peak lies just under the shipped peak rule (0.5-0.7): how many are true,
   by size, mean probability and the planes' agreement -- the features a rescue rule could use.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from raxnet.components import label
from raxnet.metrics import dice
from raxnet.planes import PLANES
from raxnet.postprocess import component_peaks, keep_large_components, min_voxels

THRESHOLD, MIN_MM3, MIN_PEAK = 0.3, 50.0, 0.7


def shipped_rule(prob: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    labels, n = label(prob >= THRESHOLD, 26)
    return keep_large_components(labels, n, min_voxels(MIN_MM3, spacing), component_peaks(labels, n, prob),
                                 MIN_PEAK) != 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("oof", type=Path, help="folder of dump_oof.py --per-plane npz files")
    ap.add_argument("--lesion-table", type=Path, required=True, help="the generator's synthetic_lesions.csv")
    ap.add_argument("--out", type=Path, required=True, help="folder for subjects.csv and components.csv")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    info = pd.read_csv(a.lesion_table).set_index("subject")
    subjects, comps = [], []
    for f in sorted(a.oof.glob("sub-*.npz")):
        z = np.load(f)
        prob, truth, spacing = z["prob"].astype(np.float32), z["truth"] > 0, tuple(z["spacing"])
        r = info.loc[f.stem]
        subjects.append({"subject": f.stem, "lesion_mm3": float(truth.sum() * np.prod(spacing)),
                         "dice": dice(shipped_rule(prob, spacing), truth),
                         "max_prob_in_lesion": float(prob[truth].max()) if truth.any() else np.nan,
                         "location": r.location, "territories": r.territories, "n_lesions": int(r.n_lesions),
                         "lesion_core": r.lesion_core, "lesion_rim": r.lesion_rim, "gm_contrast": r.gm_contrast})
        labels, n = label(prob >= THRESHOLD, 26)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        true_vox = np.bincount(labels.ravel(), weights=truth.ravel(), minlength=n + 1)
        mean = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=n + 1) / np.maximum(sizes, 1)
        peaks = component_peaks(labels, n, prob)
        plane_peaks = {p: component_peaks(labels, n, z[f"prob_{p}"].astype(np.float32)) for p in PLANES}
        for j in range(1, n + 1):
            comps.append({"subject": f.stem, "mm3": float(sizes[j] * np.prod(spacing)), "peak": float(peaks[j]),
                          "mean_prob": float(mean[j]), "true": bool(true_vox[j] > 0),
                          **{f"peak_{p}": float(plane_peaks[p][j]) for p in PLANES}})
    s, c = pd.DataFrame(subjects), pd.DataFrame(comps)
    s.to_csv(a.out / "subjects.csv", index=False)
    c.to_csv(a.out / "components.csv", index=False)
    s["bin"] = pd.cut(s.lesion_mm3, [0, 1000, 10000, np.inf], labels=["<1 mL", "1-10 mL", ">10 mL"], right=False)
    s["missed"] = s.dice == 0
    pd.set_option("display.width", 200)
    print(f"{len(s)} out-of-fold subjects; Dice and missed subjects (Dice 0) by volume bin and by location:")
    print(s.groupby("bin", observed=True).agg(n=("dice", "size"), dice=("dice", "mean"), missed=("missed", "mean"))
          .round(3).to_string())
    print(s.groupby("location").agg(n=("dice", "size"), dice=("dice", "mean"), missed=("missed", "mean"))
          .round(3).to_string())
    mid = s[s.bin == "1-10 mL"]
    print("\n1-10 mL subjects, missed vs found: mean of the generator's lesion look and the highest probability")
    print(mid.groupby("missed")[["lesion_core", "lesion_rim", "gm_contrast", "max_prob_in_lesion"]].mean().round(3)
          .to_string())
    print(mid[mid.missed][["subject", "lesion_mm3", "max_prob_in_lesion", "location", "territories",
                           "lesion_core"]].to_string(index=False))
    band = c[(c.peak >= 0.5) & (c.peak < MIN_PEAK)]
    kept = c[c.peak >= MIN_PEAK]
    print(f"\ncomponents at {THRESHOLD}: peak >= {MIN_PEAK}: {len(kept)} ({int(kept.true.sum())} true); "
          f"peak 0.5-{MIN_PEAK}: {len(band)} ({int(band.true.sum())} true)")
    bins = pd.cut(band.mm3, [0, 50, 200, 1000, np.inf], right=False)
    print(band.groupby(bins, observed=True).agg(n=("true", "size"), true=("true", "sum"),
                                                mean_prob_true=("mean_prob", lambda v: v[band.loc[v.index, "true"]].mean()),
                                                mean_prob_false=("mean_prob", lambda v: v[~band.loc[v.index, "true"]].mean()))
          .round(3).to_string())
    pk = band[[f"peak_{p}" for p in PLANES]]
    for name, cond in [("some plane >= 0.9", pk.max(axis=1) >= 0.9), ("two planes >= 0.7", (pk >= 0.7).sum(axis=1) >= 2),
                       ("all three planes >= 0.5", (pk >= 0.5).sum(axis=1) == 3)]:
        print(f"  band components with {name}: {int(cond.sum())} ({int(band.true[cond].sum())} true)")


if __name__ == "__main__":
    main()
