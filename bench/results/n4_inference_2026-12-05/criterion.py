"""The pre-set criterion on bench_quality's subject_metrics.csv: fresh mean difference and the shifted paired
gain's 95 % bootstrap interval (10,000 resamples of subjects, seed 0).
    .venv/bin/python bench/results/n4_inference_2026-12-05/criterion.py OUT/subject_metrics.csv"""
import sys

import numpy as np
import pandas as pd

s = pd.read_csv(sys.argv[1])
f = s[s.method == "fused"]
for name in ("fresh", "shifted"):
    p = f[f.set == name].pivot_table(index="subject", columns="weights", values="dice")
    d = (p["demo_n4w"] - p["demo"]).to_numpy()
    rng = np.random.default_rng(0)
    boot = rng.choice(d, (10_000, len(d))).mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(f"{name}: n {len(d)}, with N4 {p['demo_n4w'].mean():.3f}, without {p['demo'].mean():.3f}, "
          f"paired gain {d.mean():+.3f} (95 % CI {lo:+.3f} .. {hi:+.3f})")
