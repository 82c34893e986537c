"""Does N4 bias-field correction of the input, at inference only, recover the shifted set? Same subjects as probe.py.

    .venv/bin/python bench/results/shifted_factors_2026-12-05/probe_n4.py --subjects 10 --weights weights/demo
"""
import argparse
import sys
import time
from pathlib import Path

import ants
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import bench_quality as BQ  # noqa: E402
from probe import variants  # noqa: E402
from raxnet import synthetic  # noqa: E402
from raxnet.metrics import evaluate  # noqa: E402
from raxnet.predict import Predictor  # noqa: E402


def n4(t1: np.ndarray) -> np.ndarray:
    """ANTs N4 on the head (voxels > 0), shrink factor 4; background stays 0."""
    fg = t1 > 0
    out = ants.n4_bias_field_correction(ants.from_numpy(t1.astype(np.float32)),
                                        mask=ants.from_numpy(fg.astype(np.float32)), shrink_factor=4).numpy()
    return np.where(fg, out, 0).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--weights", default="weights/demo")
    ap.add_argument("--seed", type=int, default=8080)
    args = ap.parse_args()
    pred = Predictor(args.weights)
    for name in ("all shifted", "none shifted"):
        synthetic.PROFILES["probe"] = variants()[name]
        rows, secs = [], []
        for j in range(args.subjects):
            t1, truth, affine, _ = synthetic.generate_subject(j, args.seed, 1, testing=True, n_sites=BQ.N_SITES,
                                                              params={"whole_head": True, "profile": "probe"})
            t = time.perf_counter()
            corrected = n4(t1)
            secs.append(time.perf_counter() - t)
            r = evaluate(BQ.predict_masks(pred, corrected, affine, f"{name}-{j}")[BQ.FUSED], truth, spacing=(1.0, 1.0, 1.0))
            rows.append((r["dice"], r["lesion_f1"]))
        d = np.array(rows)
        print(f"{name} + N4 at inference: fused Dice {d[:, 0].mean():.3f} ± {d[:, 0].std(ddof=1):.3f}  lesion F1 "
              f"{d[:, 1].mean():.3f}  N4 {np.mean(secs):.0f} s/scan  per subject {' '.join(f'{v:.2f}' for v in d[:, 0])}",
              flush=True)


if __name__ == "__main__":
    main()
