"""Does the shipped post-processing delete the shifted lesions the networks do see? Exploratory probe.

The shipped ``inference`` rules (weighted fusion, threshold 0.4, lesions >= 50 mm^3 whose peak fused probability
is >= 0.9) were chosen out of fold on in-range scans. Out of range the networks may be less sure of a lesion, and
a peak rule of 0.9 then removes it whole. For the probe's subjects (``probe.py``: seed 6262, 1 mm whole-head),
the fused probabilities are computed once per scan and cut with the shipped rules and with looser ones; the
peak fused probability inside the true lesion, and the shipped rules' voxel precision and recall, are printed per
subject.

    .venv/bin/python bench/results/shifted_look_2026-12-07/postproc_probe.py --subjects 12 --seed 6262 --weights weights/demo
"""
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
import probe  # noqa: E402  (this folder's probe: variants, flags, bench_quality)
from raxnet.metrics import evaluate  # noqa: E402
from raxnet.predict import Predictor, to_model_grid  # noqa: E402
from raxnet.postprocess import fused_probability  # noqa: E402

VARIANTS = ("all shifted", "edge back to training", "none shifted")
#: (label, threshold, min_peak); fusion, minimum size and connectivity stay the shipped ones
RULES = (("shipped (0.4, peak 0.9)", None, None), ("0.4, no peak rule", None, 0.0), ("0.4, peak 0.5", None, 0.5),
         ("0.3, peak 0.5", 0.3, 0.5), ("0.2, peak 0.5", 0.2, 0.5))


def main() -> None:
    args = probe.factors.parse_args(__doc__)
    pred = Predictor(args.weights)
    shipped = dict(pred.settings)
    for name in VARIANTS:
        dice = {label: [] for label, _, _ in RULES}
        f1 = {label: [] for label, _, _ in RULES}
        prec, rec = [], []
        peaks = []
        for j in range(args.subjects):
            t1, truth, affine, _ = probe.factors.subject_from(probe.variants()[name], j, args.seed)
            img = nib.Nifti1Image(t1, affine)
            on_grid, resampled = to_model_grid(t1, img, pred.manifest, Path(f"{name}-{j}"))
            probs, spacing = pred.scan_probabilities(on_grid, resampled, img, f"{name}-{j}")
            fused = fused_probability(probs, shipped["fusion"], shipped["weights"] or None)
            peaks.append(float(fused[truth > 0].max()) if truth.any() else float("nan"))
            for label, thr, peak in RULES:
                pred.settings = {**shipped, **({"threshold": thr} if thr is not None else {}),
                                 **({"min_peak": peak} if peak is not None else {})}
                r = evaluate(pred.mask(probs, spacing=spacing), truth, spacing=(1.0, 1.0, 1.0))
                dice[label].append(r["dice"])
                f1[label].append(r["lesion_f1"])
                if thr is None and peak is None:
                    prec.append(r["precision"])
                    rec.append(r["recall"])
            pred.settings = shipped
        print(f"== {name}: peak fused probability in the true lesion, per subject: "
              f"{' '.join(f'{v:.2f}' for v in peaks)}", flush=True)
        print(f"   shipped rules, voxel precision: {' '.join(f'{v:.2f}' for v in prec)}", flush=True)
        print(f"   shipped rules, voxel recall:    {' '.join(f'{v:.2f}' for v in rec)}", flush=True)
        for label, _, _ in RULES:
            d = np.array(dice[label])
            print(f"   {label:26s} fused Dice {d.mean():.3f} ± {d.std(ddof=1):.3f}  lesion F1 {np.mean(f1[label]):.3f}  "
                  f"per subject {' '.join(f'{v:.2f}' for v in d)}", flush=True)


if __name__ == "__main__":
    main()
