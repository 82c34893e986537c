"""Does N4 bias-field correction of the input, at inference only, recover the shifted set? Same subjects as probe.py.

    .venv/bin/python bench/results/shifted_factors_2026-12-05/probe_n4.py --subjects 10 --weights weights/demo
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import bench_quality as BQ  # noqa: E402
from probe import parse_args, subject  # noqa: E402
from raxnet.intensity import n4_correct  # noqa: E402
from raxnet.metrics import evaluate  # noqa: E402
from raxnet.predict import Predictor  # noqa: E402


def main() -> None:
    args = parse_args(__doc__)
    pred = Predictor(args.weights)
    for name in ("all shifted", "none shifted"):
        rows, secs = [], []
        for j in range(args.subjects):
            t1, truth, affine = subject(name, j, args.seed)
            t = time.perf_counter()
            corrected = n4_correct(t1, (1.0, 1.0, 1.0))
            secs.append(time.perf_counter() - t)
            r = evaluate(BQ.predict_masks(pred, corrected, affine, f"{name}-{j}")[BQ.FUSED], truth, spacing=(1.0, 1.0, 1.0))
            rows.append((r["dice"], r["lesion_f1"]))
        d = np.array(rows)
        print(f"{name} + N4 at inference: fused Dice {d[:, 0].mean():.3f} ± {d[:, 0].std(ddof=1):.3f}  lesion F1 "
              f"{d[:, 1].mean():.3f}  N4 {np.mean(secs):.0f} s/scan  per subject {' '.join(f'{v:.2f}' for v in d[:, 0])}",
              flush=True)


if __name__ == "__main__":
    main()
