"""Which factor of the ``shifted`` profile breaks the shipped weights at 1 mm? Leave-one-out probe.

Each variant is the ``shifted`` profile with one group of factors put back to its ``training`` range (the
lesion look as one group); ``all shifted`` and ``none shifted`` (every range the training one, through the
same code path) bracket them. Same subjects (the generator's testing stream, seed 8080, 1 mm whole-head) in
every variant; fused mask as ``raxnet predict`` makes it (bench_quality.predict_masks).

    .venv/bin/python bench/results/shifted_factors_2026-12-05/probe.py --subjects 10 --weights weights/demo
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import bench_quality as BQ  # noqa: E402
from raxnet import synthetic  # noqa: E402
from raxnet.metrics import evaluate  # noqa: E402
from raxnet.predict import Predictor  # noqa: E402

LOOK = ("core", "texture", "texture_mm", "rim", "rim_mm", "edge_mm")
GROUPS = {"lesion look": LOOK, "gm_contrast": ("gm_contrast",), "csf_shift": ("csf_shift",), "gamma": ("gamma",),
          "noise": ("noise",), "bias": ("bias",), "blur_mm": ("blur_mm",)}


def variants() -> dict[str, dict]:
    train, shifted = synthetic.PROFILES["training"], synthetic.PROFILES["shifted"]
    bias = float(synthetic.DEFAULTS["bias"])
    as_train = {**train, "bias": ((bias, bias),)}  # training draws bias from [synthetic] bias
    out = {"all shifted": dict(shifted), "none shifted": dict(as_train)}
    for name, keys in GROUPS.items():
        out[f"{name} back to training"] = {**shifted, **{k: as_train[k] for k in keys}}
    return out


def parse_args(doc: str) -> argparse.Namespace:
    """The probes' shared flags: subjects per variant, weight set, generator seed."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--weights", default="weights/demo")
    ap.add_argument("--seed", type=int, default=8080)
    return ap.parse_args()


def subject(variant: str, j: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t1, truth, affine)`` of subject ``j`` (testing stream, 1 mm whole-head) drawn with ``variant``'s ranges."""
    synthetic.PROFILES["probe"] = variants()[variant]
    t1, truth, affine, _ = synthetic.generate_subject(j, seed, 1, testing=True, n_sites=BQ.N_SITES,
                                                      params={"whole_head": True, "profile": "probe"})
    return t1, truth, affine


def main() -> None:
    args = parse_args(__doc__)
    pred = Predictor(args.weights)
    for name in variants():
        rows = []
        for j in range(args.subjects):
            t1, truth, affine = subject(name, j, args.seed)
            mask = BQ.predict_masks(pred, t1, affine, f"{name}-{j}")[BQ.FUSED]
            r = evaluate(mask, truth, spacing=(1.0, 1.0, 1.0))
            rows.append((r["dice"], r["lesion_f1"]))
        d = np.array(rows)
        print(f"{name:32s} fused Dice {d[:, 0].mean():.3f} ± {d[:, 0].std(ddof=1):.3f}  lesion F1 {d[:, 1].mean():.3f}  "
              f"per subject {' '.join(f'{v:.2f}' for v in d[:, 0])}", flush=True)


if __name__ == "__main__":
    main()
