"""`raxnet predict --register` on synthetic scans moved off MNI by a known transform: time and accuracy.

Each subject (raxnet.synthetic, seed 7: never trained on) is moved by a random rigid + affine + smooth
warp onto an LPS grid (1 x 1 x 1.2 mm for 1 mm subjects, 2 x 2 x 2.4 mm for 2 mm ones;
raxnet.native_synthetic) and segmented twice with the same weights: as the MNI-space original
(plain ``predict``) and as the native scan (``predict --register``). Reported per scan:

* time split (the summary's own clocks): registration (ANTs stages, the similarity check, resampling
  onto the weights' grid), segmentation (the three plane models and the post-processing, once per
  segmentation pass), mapping back (mask/probabilities onto the scan's grid, lesions.csv on the 1 mm
  template grid, transform files, registration QC figure) and the total;
* Dice of the native-grid mask against the known native lesion, next to the Dice on the MNI original;
* geometry alone: the true MNI lesion taken through the estimated transform onto the native grid vs the
  true native lesion (independent of the weights), and the similarity the check computed.

Then, on the largest lesion: SyN with and without the lesion in the cost function (the lesion's volume
in template space after SyN / after the affine stages), with the default MI metric and with CC; and the
similarity check on scans that must be refused (T2-like inverted contrast, a header flipped upside
down, noise).

    nice -n 10 .venv/bin/python bench/bench_registration.py [--spacing 1] [--subjects 5,23,22] [--brain-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray) -> float:
    from raxnet.metrics import dice as _dice

    return float(_dice(np.asarray(a) > 0, np.asarray(b) > 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spacing", type=int, default=1, choices=(1, 2), help="synthetic subjects' grid (mm)")
    parser.add_argument("--subjects", default="5,23,22", help="subject indices (seed 7): 141 mL, 61 mL, 41 mL lesions")
    parser.add_argument("--brain-only", action="store_true", help="skull-stripped scans (default: defaced whole head)")
    parser.add_argument("--syn-subject", type=int, default=5, help="also run --registration syn on this one (-1: none)")
    parser.add_argument("--weights", default="weights/demo")
    parser.add_argument("--out", default="work/bench/registration")
    parser.add_argument("--skip-checks", action="store_true", help="skip the lesion-masking and refusal parts")
    parser.add_argument("--checks-only", action="store_true", help="only the lesion-masking and refusal parts")
    args = parser.parse_args()

    from raxnet import native_synthetic as ns
    from raxnet import registration as reg
    from raxnet import templates
    from raxnet.predict import DEFAULTS, Predictor, predict_file
    from raxnet.synthetic import generate_subject

    out = Path(args.out)
    work = out / "scans"
    work.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(args.weights)
    predictor.models  # noqa: B018  (loaded once, outside every clock)
    vox = (1.0, 1.0, 1.2) if args.spacing == 1 else (2.0, 2.0, 2.4)
    print(f"{os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f}; weights {args.weights}; "
          f"{args.spacing} mm subjects{' (brain only)' if args.brain_only else ' (defaced whole head)'} -> LPS {vox} mm grids")
    rows = []
    runs = [(int(s), "affine") for s in args.subjects.split(",")]
    if args.syn_subject >= 0:
        runs.append((args.syn_subject, "syn"))
    for index, transform in [] if args.checks_only else runs:
        t1, mask, affine, info = generate_subject(index, 7, args.spacing, params={"whole_head": not args.brain_only})
        ref = nib.Nifti1Image(t1, affine)
        mni_path = work / f"sub-{index:02d}_space-MNI152NLin2009aSym_T1w.nii.gz"
        nib.save(ref, mni_path)
        img, mask_img, _ = ns.move_off_mni(t1, mask, affine, np.random.default_rng(index), vox)
        path = work / f"sub-{index:02d}_T1w.nii.gz"
        nib.save(img, path)
        opts = {**DEFAULTS, "qc": True}
        mni = predict_file(predictor, mni_path, out / "mni", opts)
        mni_dice = dice(nib.load(mni["mask"]).dataobj, mask)
        s = predict_file(predictor, path, out / transform, {**opts, "register": True, "registration": transform})
        truth = np.asarray(mask_img.dataobj) > 0
        native_dice = dice(nib.load(s["mask"]).dataobj, truth)
        # geometry alone: the true MNI lesion through the estimated transform (files written by predict)
        geometry = np.nan
        if transform == "affine":
            import ants

            moved = ants.apply_transforms(
                fixed=reg.to_ants(np.zeros(img.shape, np.float32), img.affine), moving=reg.to_ants(mask, affine),
                transformlist=s["transforms"].split(";"), whichtoinvert=[True], interpolator="nearestNeighbor")
            geometry = dice(moved.numpy() > 0.5, truth)
        segmentation = s["seconds"] - s["seconds_registration"] - s["seconds_mapping"]
        rows.append({
            "subject": index, "lesion_mL": round(info["lesion_mm3"] / 1000, 1), "registration": transform,
            "native_shape": "x".join(map(str, img.shape)), "similarity": s["similarity"],
            "t_registration_s": s["seconds_registration"], "t_segmentation_s": round(segmentation, 2),
            "t_mapping_s": s["seconds_mapping"], "t_total_s": s["seconds"], "t_mni_predict_s": mni["seconds"],
            "dice_mni": round(mni_dice, 3), "dice_native": round(native_dice, 3),
            "dice_difference": round(native_dice - mni_dice, 3), "geometry_dice": round(geometry, 3),
            "volume_native_mL": round(s["lesion_volume_mm3"] / 1000, 2),
            "volume_mni_mL": round(s["lesion_volume_mni_mm3"] / 1000, 2),
        })
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    if rows:
        table = pd.DataFrame(rows)
        table.to_csv(out / "registration.csv", index=False)
        print("\n" + table.to_string(index=False))
        print(f"\nload average after the scans {os.getloadavg()[0]:.1f}")
    if args.skip_checks:
        return

    # Lesion masking on the largest lesion, 2 mm (the effect is in the template grid's lesion volume).
    head = {"whole_head": not args.brain_only}
    largest = max(runs, key=lambda r: generate_subject(r[0], 7, 2, params=head)[3]["lesion_mm3"])[0]
    t1, mask, affine, info = generate_subject(largest, 7, 2, params=head)
    img, mask_img, _ = ns.move_off_mni(t1, mask, affine, np.random.default_rng(largest), (2.0, 2.0, 2.4))
    data, native_truth = np.asarray(img.dataobj, np.float32), np.asarray(mask_img.dataobj, np.float32)
    shape, grid_affine = templates.grid(2)
    print(f"\nSyN with / without the lesion in the cost function: subject {largest}, {info['lesion_mm3'] / 1000:.0f} mL, "
          "2 mm -> LPS 2 x 2 x 2.4 mm (lesion volume in template space, SyN / affine stages)")
    for metric in ("MI", "CC"):
        settings = dataclasses.replace(reg.Settings(), transform="syn", syn_metric=metric)
        with reg.Registration(img, Path("x"), settings) as r:
            r.affine(data)
            affine_vol = (r.to_template(native_truth, shape, grid_affine, "nearest") > 0.5).sum()
            result = {}
            for name, lesion in (("lesion in the cost function", None), ("lesion masked out", mask)):
                t0 = time.perf_counter()
                r.refine(lesion, affine)
                vol = (r.to_template(native_truth, shape, grid_affine, "nearest") > 0.5).sum()
                result[name] = f"{vol / affine_vol:.3f} ({time.perf_counter() - t0:.0f} s)"
        print(f"  SyN {metric}: " + "; ".join(f"{k}: {v}" for k, v in result.items()), flush=True)

    # The similarity check: valid scans above, scans to refuse below min_similarity.
    print(f"\nsimilarity check (refused below {reg.Settings().min_similarity}):")
    cases = {
        "T2-like (inverted contrast)": np.where(data > 0, data.max() - data, 0).astype(np.float32),
        "header flipped upside down": data[:, :, ::-1].copy(),
        "smooth noise": np.random.default_rng(0).gamma(2.0, 1.0, data.shape).astype(np.float32),
        "the scan itself": data,
    }
    for name, vol in cases.items():
        with reg.Registration(img, Path("x"), dataclasses.replace(reg.Settings(), min_similarity=-1.0)) as r:
            r.affine(vol)
            print(f"  {name:28s} similarity {r.check(vol):+.2f}", flush=True)


if __name__ == "__main__":
    main()
