#!/usr/bin/env python
"""The Dice a perfect 2 mm prediction can reach on a 1 mm scan, for the two ways back onto the scan's grid.

Networks: none. For each synthetic whole-head 1 mm subject (testing stream of ``--seed``, never trained on),
the true mask is taken onto the weights' 2 mm grid exactly as ``raxnet predict`` takes a scan there
(``to_model_grid``: linear), then back onto the 1 mm grid

* ``nearest``: thresholded at 0.5 on the 2 mm grid, the binary mask back by nearest neighbour (the way
  ``raxnet predict`` worked before 2026-12-04);
* ``linear``: the 2 mm values ("probabilities") back by linear interpolation, thresholded at 0.5 on the scan's
  grid (``Predictor.on_scan_grid``, nnU-Net's way),

and scored against the 1 mm truth. The gap is a ceiling on what the resampling alone costs.

    .venv/bin/python bench/bench_resample_ceiling.py [--subjects 8] [--seed 8081] [--weights weights/demo]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from raxnet import synthetic
from raxnet.metrics import dice
from raxnet.predict import back_to_input_grid, to_model_grid
from raxnet.weights import read_manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=8)
    p.add_argument("--seed", type=int, default=8081)
    p.add_argument("--weights", default="weights/demo", help="weight set whose grid is used (its weights.json)")
    args = p.parse_args(argv)
    manifest = read_manifest(Path(args.weights))
    warnings.filterwarnings("ignore", message="Resampling binary images")
    rows = []
    print(f"{'subject':>7} {'lesion mL':>10} {'nearest':>8} {'linear':>8}")
    for j in range(args.subjects):
        _, truth, affine, _ = synthetic.generate_subject(j, args.seed, 1, testing=True, n_sites=4,
                                                         params={"whole_head": True})
        truth = truth > 0
        img = nib.Nifti1Image(truth.astype(np.float32), affine)
        coarse, _ = to_model_grid(truth.astype(np.float32), img, manifest, Path(f"subject-{j}"))
        nearest = back_to_input_grid((coarse >= 0.5).astype(np.float32), manifest, img, "nearest") > 0.5
        linear = back_to_input_grid(coarse, manifest, img, "linear") >= 0.5
        rows.append((truth.sum() / 1000.0, dice(nearest, truth), dice(linear, truth)))
        print(f"{j:>7} {rows[-1][0]:>10.3f} {rows[-1][1]:>8.3f} {rows[-1][2]:>8.3f}", flush=True)
    r = np.array(rows)
    print(f"{'mean':>7} {'':>10} {r[:, 1].mean():>8.3f} {r[:, 2].mean():>8.3f}")
    small = r[:, 0] < 1.0
    if small.any():
        print(f"{'< 1 mL':>7} {int(small.sum()):>10} {r[small, 1].mean():>8.3f} {r[small, 2].mean():>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
