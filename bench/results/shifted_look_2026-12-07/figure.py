"""Figure: one probe subject in range, with only its lesion look shifted, and with everything shifted.

Subject 2 of the probe (seed 6262, 5.6 mL, a core darker than CSF; fused Dice 0.83 / 0.83 / 0.00 in
``probe_add_one.log`` and ``probe.log``): the axial slice through the lesion's centre of mass, the scan with the
true outline (green) and the fused prediction (red). Aligned random streams, as in the probes.

    .venv/bin/python bench/results/shifted_look_2026-12-07/figure.py --weights weights/demo
"""
import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
import probe  # noqa: E402  (this folder's probe: its variants and, through it, bench_quality)
from raxnet.metrics import evaluate  # noqa: E402
from raxnet.predict import Predictor  # noqa: E402

VARIANTS = ("none shifted", "only lesion look shifted", "all shifted")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", default="weights/demo")
    ap.add_argument("--seed", type=int, default=6262)
    ap.add_argument("--subject", type=int, default=2)
    ap.add_argument("--out", default=str(HERE.parent / "example.png"))
    args = ap.parse_args()
    probe.factors.align_streams()  # each variant changes only its own factors (see the factor probe)
    pred = Predictor(args.weights)
    fig, axes = plt.subplots(1, len(VARIANTS), figsize=(5.2 * len(VARIANTS), 5.6))
    variants = {**probe.variants(), **probe.add_one_variants()}
    for ax, name in zip(axes, VARIANTS):
        t1, truth, affine, info = probe.factors.subject_from(variants[name], args.subject, args.seed)
        mask = probe.BQ.predict_masks(pred, t1, affine, name)[probe.BQ.FUSED]
        dice = evaluate(mask, truth, spacing=(1.0, 1.0, 1.0))["dice"]
        z = int(round(ndimage.center_of_mass(truth)[2]))
        ax.imshow(np.rot90(t1[:, :, z]), cmap="gray")
        ax.contour(np.rot90(truth[:, :, z]), levels=[0.5], colors="lime", linewidths=1.2)
        if mask[:, :, z].any():
            ax.contour(np.rot90(mask[:, :, z]), levels=[0.5], colors="red", linewidths=1.2)
        ax.set_title(f"{name}\ngamma {info['gamma']:.2f}, bias SD {info['bias_sd']:.2f}, core {info['lesion_core']:.2f}; "
                     f"Dice {dice:.2f}", fontsize=10)
        ax.set_xlabel(f"axial slice z = {z} (1 mm); green: truth, red: prediction")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Shifted test subject {args.subject} (seed {args.seed}, {info['lesion_mm3'] / 1000:.1f} mL lesion), "
                 "2026-12-07 weights")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
