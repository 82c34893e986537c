"""Where do the lesions under 1 mL vanish: in the network or in the post-processing? (a probe, not a benchmark)

For each true lesion (the weight set's connectivity) of the ``--subjects`` fresh 1 mm whole-head scans of ``--seed``
(exactly ``bench_quality.py``'s fresh set: its ``scans``), the fused probability on the scan's grid as
``raxnet predict`` makes it (the weight set's fusion),
and whether the lesion is touched by the mask at threshold 0.1 / 0.2 with no clean-up, with the size floor only,
and with the weight set's own post-processing. Run from the repository root::

    python bench/results/subject_balance_2026-12-06/small_lesion_probe.py --weights weights/demo --seed 8484
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from raxnet.components import label
from raxnet.postprocess import fused_probability, postprocess
from raxnet.predict import Predictor, to_model_grid

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/
from bench_quality import scans  # noqa: E402

BINS = [0, 0.1, 0.3, 1, 10, np.inf]
LABELS = ["<0.1 mL", "0.1-0.3 mL", "0.3-1 mL", "1-10 mL", ">10 mL"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="weights/demo")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--out", default="work/bench/small_lesion_probe.csv")
    args = ap.parse_args()
    pred = Predictor(args.weights)
    s = pred.settings
    variants = {  # name -> post-processing; the last is the weight set's own
        "t0.1_raw": dict(threshold=0.1, min_lesion_mm3=0.0, min_peak=0.0),
        "t0.2_raw": dict(threshold=0.2, min_lesion_mm3=0.0, min_peak=0.0),
        "size_floor_only": dict(threshold=float(s["threshold"]), min_lesion_mm3=float(s["min_lesion_mm3"]), min_peak=0.0),
        "shipped": dict(threshold=float(s["threshold"]), min_lesion_mm3=float(s["min_lesion_mm3"]),
                        min_peak=float(s["min_peak"])),
    }
    rows = []
    for _, name, subj in tqdm(scans(args.subjects, 0, args.seed, 1), total=args.subjects, desc="probe", unit="scan"):
        img = nib.Nifti1Image(subj["t1"], subj["affine"])
        on_grid, resampled = to_model_grid(subj["t1"], img, pred.manifest, Path(name))
        probs, spacing = pred.scan_probabilities(on_grid, resampled, img, name)
        fused = fused_probability(probs, s["fusion"], s["weights"] or None)
        masks = {k: postprocess(probs, fusion=s["fusion"], spacing=spacing, connectivity=int(s["connectivity"]),
                                weights=s["weights"] or None, **v) for k, v in variants.items()}
        lab, n = label(subj["truth"], int(s["connectivity"]))
        for k in range(1, n + 1):
            inside = lab == k
            rows.append({"subject": name, "lesion": k, "volume_ml": inside.sum() / 1000.0,
                         "max_p": round(float(fused[inside].max()), 4),
                         **{key: bool(m[inside].any()) for key, m in masks.items()}})
    df = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    df["bin"] = pd.cut(df.volume_ml, BINS, labels=LABELS)
    table = df.groupby("bin", observed=True).agg(
        lesions=("lesion", "size"), max_p_median=("max_p", "median"),
        **{f"found_{k}": (k, "mean") for k in variants})
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
