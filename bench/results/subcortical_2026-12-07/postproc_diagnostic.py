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

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def fused(folder: Path, seed: str, label: str | None = None) -> pd.DataFrame:
    df = pd.read_csv(folder / "subject_metrics.csv")
    df = df[df["method"] == "fused"].assign(seed=seed)
    if label:
        df = df.assign(weights=label)
    return df


def main(diag: list[str]) -> None:
    rows = []
    for seed, d in zip(("6363", "7474"), diag):
        bench = fused(HERE / f"seed{seed}", seed)
        bench["weights"] = bench["weights"].map({"demo": "candidate (stage 08 choice)",
                                                 "demo (baseline)": "shipped"})
        rows += [bench, fused(Path(d), seed, "candidate networks, shipped post-processing")]
    df = pd.concat(rows, ignore_index=True)
    loc = pd.concat([fused(HERE / f"seed{s}", s)[["subject", "seed", "location"]] for s in ("6363", "7474")])
    df = df.drop(columns="location", errors="ignore").merge(loc.drop_duplicates(), on=["subject", "seed"])
    df["missed"] = df["dice"] == 0
    pd.set_option("display.width", 160)
    for set_name, g in df.groupby("set"):
        print(f"\n[{set_name}] fused mask, seeds 6363 + 7474 pooled")
        print(g.groupby("weights")[["dice", "lesion_f1"]].mean().round(3).to_string())
        by = g.groupby(["location", "weights"]).agg(n=("dice", "size"), dice=("dice", "mean"),
                                                    missed=("missed", "sum"))
        print(by.round(3).to_string())
        vb = g.groupby(["volume_bin", "weights"])["dice"].mean().round(3)
        print(vb.to_string())
    print("\npaired vs shipped, candidate networks with the shipped post-processing (bootstrap 10,000, seed 0):")
    for (set_name, metric) in (("fresh", "dice"), ("fresh", "lesion_f1"), ("shifted", "dice"), ("shifted", "lesion_f1")):
        g = df[df["set"] == set_name].pivot_table(index=["seed", "subject"], columns="weights", values=metric)
        d = (g["candidate networks, shipped post-processing"] - g["shipped"]).dropna().to_numpy(float)
        lo, hi = np.percentile(np.random.default_rng(0).choice(d, (10_000, d.size)).mean(axis=1), [2.5, 97.5])
        print(f"  {set_name:<8} {metric:<9} gain {d.mean():+.3f} ({lo:+.3f} .. {hi:+.3f}), n {d.size}, "
              f"{int((d > 0.01).sum())} better / {int((d < -0.01).sum())} worse")


if __name__ == "__main__":
    main(sys.argv[1:3] or [str(HERE / "diag_shipped_postproc" / f"seed{s}") for s in ("6363", "7474")])
