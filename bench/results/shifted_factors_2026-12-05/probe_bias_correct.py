"""``raxnet predict --bias-correct`` (N4 on the weights' grid after the brain mask) with the current weights, on the
aligned probe's subjects: does inference-time N4 win back what the bias field costs? Exploratory.

The "all shifted" and "none shifted" variants of ``probe.py`` (aligned streams), each scan predicted with the
weight set's ``bias_correct`` switched on; the rows without it are ``probe.py``'s own (same subjects, same code).

    .venv/bin/python bench/results/shifted_factors_2026-12-05/probe_bias_correct.py --subjects 10 --weights weights/demo
    .venv/bin/python bench/results/shifted_factors_2026-12-05/probe_bias_correct.py --subjects 12 --seed 6262 --weights weights/demo
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import bench_quality as BQ  # noqa: E402
from probe import parse_args, subject  # noqa: E402
from raxnet.metrics import evaluate  # noqa: E402
from raxnet.predict import Predictor  # noqa: E402


def main() -> None:
    args = parse_args(__doc__)
    pred = Predictor(args.weights, overrides={"bias_correct": True})
    for name in ("all shifted", "none shifted"):
        rows, secs = [], []
        for j in range(args.subjects):
            t1, truth, affine = subject(name, j, args.seed)
            t = time.perf_counter()
            mask = BQ.predict_masks(pred, t1, affine, f"{name}-{j}")[BQ.FUSED]
            secs.append(time.perf_counter() - t)
            r = evaluate(mask, truth, spacing=(1.0, 1.0, 1.0))
            rows.append((r["dice"], r["lesion_f1"]))
        d = np.array(rows)
        print(f"{name} + --bias-correct: fused Dice {d[:, 0].mean():.3f} ± {d[:, 0].std(ddof=1):.3f}  lesion F1 "
              f"{d[:, 1].mean():.3f}  {np.mean(secs):.1f} s/scan  per subject {' '.join(f'{v:.2f}' for v in d[:, 0])}",
              flush=True)


if __name__ == "__main__":
    main()
