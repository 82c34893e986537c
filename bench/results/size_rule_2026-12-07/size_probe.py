"""Does the best probability threshold depend on the lesion's size?  Out-of-fold scores (stage 08's selection
subjects, dumped by dump_oof.py) of the shipped rule (threshold t, lesions >= 50 mm³ with peak >= 0.7) at several
t, by subject lesion-volume bin, then of a per-size rule: a kept component of at least V mm³ (at threshold t) is
re-thresholded at t_big (its voxels with p >= t_big).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from raxnet.components import label
from raxnet.metrics import dice, lesion_f1
from raxnet.postprocess import component_peaks, keep_large_components, min_voxels, outline_large

BINS = [(0, 1000, "<1 mL"), (1000, 10000, "1-10 mL"), (10000, np.inf, ">10 mL")]


def rule(prob: np.ndarray, spacing, t: float, big_mm3: float | None = None, t_big: float | None = None,
         min_mm3: float = 50.0, min_peak: float = 0.7, frag_mm3: float = 0.0) -> np.ndarray:
    """Threshold t, lesions >= min_mm3 with peak >= min_peak; then, with big_mm3 and t_big > t, the library's
    large-lesion outline (``raxnet.postprocess.outline_large``, which this probe's first version led to)."""
    labels, n = label(prob >= t, 26)
    mask = keep_large_components(labels, n, min_voxels(min_mm3, spacing), component_peaks(labels, n, prob), min_peak)
    if big_mm3 is not None and t_big is not None and t_big > t:
        mask = outline_large(mask, prob, spacing, big_mm3, t_big, frag_mm3, 26)
    return mask != 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("oof", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    rows = []
    files = sorted(a.oof.glob("sub-*.npz"))
    configs = [(t, None, None, 0.0) for t in (0.3, 0.4, 0.5)]
    configs += [(0.3, v, tb, fr) for v, tb, fr in itertools.product((2000.0, 5000.0, 10000.0), (0.4, 0.5, 0.6),
                                                                   (0.0, 50.0, 200.0, 500.0))]
    for f in files:
        z = np.load(f)
        prob, truth, spacing = z["prob"].astype(np.float32), z["truth"] > 0, tuple(z["spacing"])
        vol = float(truth.sum() * np.prod(spacing))
        b = next(name for lo, hi, name in BINS if lo <= vol < hi)
        for t, v, tb, fr in configs:
            m = rule(prob, spacing, t, v, tb, frag_mm3=fr)
            rows.append({"subject": f.stem, "bin": b, "lesion_mm3": vol, "t": t, "big_mm3": v or 0, "t_big": tb or 0, "frag_mm3": fr,
                         "dice": dice(m, truth), "lesion_f1": lesion_f1(m, truth, connectivity=26)})
    df = pd.DataFrame(rows)
    df.to_csv(a.out, index=False)
    keys = ["t", "big_mm3", "t_big", "frag_mm3"]
    g = df.groupby(keys)
    s = g.agg(dice=("dice", "mean"), f1=("lesion_f1", "mean"))
    s["score"] = (s["dice"] + s["f1"]) / 2
    by_bin = df.pivot_table(index=keys, columns="bin", values="dice", aggfunc="mean")
    print(f"{len(files)} subjects; per bin: {df.drop_duplicates('subject')['bin'].value_counts().to_dict()}")
    print(pd.concat([s, by_bin], axis=1).round(3).to_string())


if __name__ == "__main__":
    main()
