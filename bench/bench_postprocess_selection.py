"""Cost of choosing the post-processing on validation data: scoring stage 08's default candidate grid.

One 2 mm subject (99x117x95): a 15x12x10-voxel lesion and three plane probability maps of smoothed uniform noise
scaled to [0, 0.7] with +0.4 on the lesion — deliberately noisy (many small components at low thresholds),
so this is an upper bound for real predictions. Prints the seconds per subject for the [fusion] default grid
(select_methods x select_thresholds x select_min_lesion_mm3 x select_min_peak), best of --repeats.

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
    from raxnet.postprocess_selection import score_candidates

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


if __name__ == "__main__":
    main()
