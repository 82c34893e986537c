"""Score the large-lesion outline with a keep guard (a lesion is redrawn only if at least a fraction k of it
reaches the outline threshold; the others stay as the first rule drew them) on dumped fused probabilities: the
shipped first rule (threshold, size, peak from weights.json), then the shipped outline
(``raxnet.postprocess.outline_large``) at each k. Prints Dice, lesion F1 and Dice by subject lesion-volume bin per
k (a k above 1 spares every lesion: the outline off); writes one row per subject and k.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from raxnet.components import label
from raxnet.metrics import dice, lesion_f1
from raxnet.postprocess import component_peaks, keep_large_components, min_voxels, outline_large

BINS = [(0, 1000, "<1 mL"), (1000, 10000, "1-10 mL"), (10000, np.inf, ">10 mL")]


def guarded_outline(base: np.ndarray, prob: np.ndarray, spacing: tuple[float, ...], s: dict, conn: int,
                    min_keep: float) -> np.ndarray:
    """The shipped outline, skipping the lesions of which less than ``min_keep`` reaches its threshold."""
    labels, n = label(base != 0, conn)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    above = np.bincount(labels[prob >= s["large_threshold"]], minlength=n + 1)
    spared = (above < min_keep * sizes) & (sizes >= min_voxels(s["large_mm3"], spacing))
    spared[0] = False
    left = spared[labels]
    out = outline_large(base * ~left, prob, spacing, s["large_mm3"], s["large_threshold"], s["large_fragment_mm3"],
                        conn)
    return (out.astype(bool) | left).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dump", type=Path, help="folder of npz files (prob, truth, spacing)")
    ap.add_argument("--weights", type=Path, default=Path("weights/demo"), help="weight set whose rule to apply")
    ap.add_argument("--keep", type=float, nargs="+", default=[0.0, 0.5, 0.6, 0.7, 0.8, 1.01])
    ap.add_argument("--out", type=Path, required=True, help="CSV of per-subject scores")
    a = ap.parse_args()
    s = json.loads((a.weights / "weights.json").read_text())["inference"]
    conn = int(s.get("connectivity", 26))
    rows = []
    for f in sorted(a.dump.glob("*.npz")):
        z = np.load(f)
        prob, truth, spacing = z["prob"].astype(np.float32), z["truth"] > 0, tuple(float(v) for v in z["spacing"])
        mm3 = float(truth.sum() * np.prod(spacing))
        labels, n = label(prob >= s["threshold"], conn)
        base = keep_large_components(labels, n, min_voxels(s["min_lesion_mm3"], spacing),
                                     component_peaks(labels, n, prob), float(s["min_peak"]))
        for k in a.keep:
            m = guarded_outline(base, prob, spacing, s, conn, k)
            rows.append({"scan": f.stem, "lesion_mm3": mm3, "bin": next(b for lo, hi, b in BINS if lo <= mm3 < hi),
                         "min_keep": k, "dice": dice(m, truth), "lesion_f1": lesion_f1(m, truth, connectivity=conn)})
    df = pd.DataFrame(rows)
    df.to_csv(a.out, index=False)
    g = df.groupby("min_keep").agg(dice=("dice", "mean"), lesion_f1=("lesion_f1", "mean"))
    by_bin = df.pivot_table(index="min_keep", columns="bin", values="dice", aggfunc="mean")
    print(f"{df.scan.nunique()} scans; per bin: {df.drop_duplicates('scan')['bin'].value_counts().to_dict()}")
    print(pd.concat([g, by_bin], axis=1).round(4).to_string())


if __name__ == "__main__":
    main()
