"""Cost of choosing the post-processing on validation data: scoring stage 08's default candidate grid.

One 2 mm subject (99x117x95): a 15x12x10-voxel lesion and three plane probability maps of smoothed uniform noise
scaled to [0, 0.7] with +0.4 on the lesion — deliberately noisy (many small components at low thresholds),
so this is an upper bound for real predictions. Prints the seconds per subject for the [fusion] default grid
(select_methods x select_thresholds x select_min_lesion_mm3 x select_min_peak), then for stage 08's second step,
the large-lesion outline grid (select_large_mm3 x select_large_threshold x select_large_fragment_mm3) on top of
a first choice, with the kept-voxel round trip stage 08 makes (``keep`` -> ``unkeep``); best of --repeats.

    .venv/bin/python bench/bench_postprocess_selection.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage


def noisy_case(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (99, 117, 95)
    truth = np.zeros(shape, np.uint8)
    truth[40:55, 50:62, 40:50] = 1
    probs = {}
    for plane in ("axial", "sagittal", "coronal"):
        noise = ndimage.gaussian_filter(rng.random(shape).astype(np.float32), 2)
        noise = (noise - noise.min()) / (noise.max() - noise.min()) * 0.7
        probs[plane] = np.clip(noise + 0.4 * truth, 0, 1)
    return probs, truth


def main() -> None:
    from raxnet.fusion import DEFAULTS
    from raxnet.postprocess_selection import keep, score_candidates, score_large_candidates, unkeep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    probs, truth = noisy_case()
    grid = dict(methods=DEFAULTS["select_methods"], thresholds=DEFAULTS["select_thresholds"],
                sizes_mm3=DEFAULTS["select_min_lesion_mm3"], peaks=DEFAULTS["select_min_peak"],
                weights={"axial": 0.4, "sagittal": 0.3, "coronal": 0.3})
    best, n = np.inf, 0
    for _ in range(args.repeats):
        start = time.perf_counter()
        n = len(score_candidates(probs, truth, (2.0, 2.0, 2.0), **grid))
        best = min(best, time.perf_counter() - start)
    print(f"{n} candidates scored in {best:.2f} s per 2 mm subject (best of {args.repeats}, noisy maps)")
    # the outline step on top of a first choice like the shipped weights' (the 14.4 mL lesion is redrawn)
    base = {"fusion": "weighted", "threshold": 0.3, "min_lesion_mm3": 50.0, "min_peak": 0.7}
    best, n = np.inf, 0
    for _ in range(args.repeats):
        start = time.perf_counter()
        kept = keep(probs, truth, (2.0, 2.0, 2.0), min(float(t) for t in DEFAULTS["select_thresholds"]))
        n = len(score_large_candidates(*unkeep(kept), kept.spacing, base, large_mm3=DEFAULTS["select_large_mm3"],
                                       large_thresholds=DEFAULTS["select_large_threshold"],
                                       fragments_mm3=DEFAULTS["select_large_fragment_mm3"],
                                       weights=grid["weights"]))
        best = min(best, time.perf_counter() - start)
    print(f"{n} outline candidates scored in {best:.2f} s per 2 mm subject (best of {args.repeats}, keep + unkeep "
          "included)")


if __name__ == "__main__":
    main()
