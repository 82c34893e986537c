#!/usr/bin/env python
"""Post-hoc diagnostic (not a ship decision: the seeds were already read): the candidate networks with the
*shipped* post-processing, against the shipped weights and the candidate as stage 08 chose it, on the same
scans of seeds 6363 and 7474. Separates the networks' effect from the post-processing's.

    python bench/bench_quality.py --weights <candidate networks + shipped inference block> \\
        --subjects 40 --shifted 20 --spacing 1 --seed 6363 --out diag6363      # and 7474
    python bench/results/subcortical_2026-12-07/postproc_diagnostic.py [diag6363 diag7474]

Without arguments it reads the copies in ``diag_shipped_postproc/`` (output: ``postproc_diagnostic.log``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from bench_quality import _by_location, paired_gain  # noqa: E402

CANDIDATE, SHIPPED = "candidate networks, shipped post-processing", "shipped"


def fused(folder: Path, seed: str, label: str | None = None) -> pd.DataFrame:
    """The fused-mask rows of a bench_quality run, subjects named ``<seed>/<subject>`` (pooled like bench_pool)."""
    df = pd.read_csv(folder / "subject_metrics.csv")
    df = df[df["method"] == "fused"].assign(subject=seed + "/" + df["subject"].astype(str))
    return df.assign(weights=label) if label else df


def main(diag: list[str]) -> None:
    rows = []
    for seed, d in zip(("6363", "7474"), diag):
        bench = fused(HERE / f"seed{seed}", seed)
        bench["weights"] = bench["weights"].map({"demo": "candidate (stage 08 choice)", "demo (baseline)": SHIPPED})
        rows += [bench, fused(Path(d), seed, CANDIDATE)]
    df = pd.concat(rows, ignore_index=True)
    pd.set_option("display.width", 160)
    by_location = _by_location(df).set_index(["set", "location", "weights"])[["n", "dice_mean", "missed"]]
    for set_name, g in df.groupby("set"):
        print(f"\n[{set_name}] fused mask, seeds 6363 + 7474 pooled")
        print(g.groupby("weights")[["dice", "lesion_f1"]].mean().round(3).to_string())
        print(by_location.loc[set_name].sort_index().round(3).to_string())
        print(g.groupby(["volume_bin", "weights"])["dice"].mean().round(3).to_string())
    print(f"\npaired vs {SHIPPED}, {CANDIDATE} (bench_quality.paired_gain: bootstrap 10,000, seed 0):")
    for _, r in paired_gain(df, CANDIDATE, SHIPPED).iterrows():
        print(f"  {r['set']:<8} {r['metric']:<9} gain {r['gain']:+.3f} ({r['ci_low']:+.3f} .. {r['ci_high']:+.3f}), "
              f"n {int(r['n'])}, {int(r['better'])} better / {int(r['worse'])} worse")


if __name__ == "__main__":
    main(sys.argv[1:3] or [str(HERE / "diag_shipped_postproc" / f"seed{s}") for s in ("6363", "7474")])
