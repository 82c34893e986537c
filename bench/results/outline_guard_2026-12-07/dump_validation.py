"""Dump the shipped networks' fused probability on a validation set of generated scans (never a benchmark
seed), so that a post-processing rule that out-of-fold data cannot inform -- here how the large-lesion outline
behaves on scans unlike the training ones -- is chosen on validation data, not on the benchmark.

Scans as bench/bench_quality.py makes them (same generator calls); probabilities as `raxnet predict` makes them
(on the scan's grid), fused with the weights' own plane weights. One npz per scan under --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ for bench_quality
from bench_quality import scan_probabilities, scans  # noqa: E402

from raxnet.log import progress  # noqa: E402
from raxnet.postprocess import fused_probability  # noqa: E402
from raxnet.predict import Predictor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--fresh", type=int, default=0)
    ap.add_argument("--shifted", type=int, default=20)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    pred = Predictor(a.weights)
    s = pred.settings
    for set_name, name, subj in progress(scans(a.fresh, a.shifted, a.seed, 1), total=a.fresh + a.shifted,
                                         desc="validation", unit="scan"):
        target = a.out / f"{name}.npz"
        if target.exists():
            continue
        probs, spacing = scan_probabilities(pred, subj["t1"], subj["affine"], name)
        prob = fused_probability(probs, s["fusion"], s["weights"] or None)
        tmp = a.out / f"{name}.tmp.npz"
        np.savez_compressed(tmp, prob=prob.astype(np.float16), truth=subj["truth"].astype(np.uint8),
                            spacing=np.array(spacing or pred.manifest["spacing_mm"], dtype=float))
        tmp.rename(target)


if __name__ == "__main__":
    main()
