"""Effective in-brain log-bias variation per 2D slice: generator 3D field vs per-slice augmentation."""
import numpy as np
from raxnet.random_fields import smooth_field
from raxnet.augment import smooth_2d
from raxnet.templates import template_data

brain = template_data("brain_mask", 2) > 0
idx = np.argwhere(brain); lo, hi = idx.min(0), idx.max(0) + 1
box = brain[tuple(slice(a, b) for a, b in zip(lo, hi))]
rng = np.random.default_rng(0)
def stats(fields3d):
    within, means, total = [], [], []
    for f in fields3d:
        total.append(f[box].std())
        for ax in range(3):
            for k in range(0, box.shape[ax], 3):
                m = np.take(box, k, axis=ax); v = np.take(f, k, axis=ax)[m]
                if m.sum() > 200:
                    within.append(v.std()); means.append(v.mean())
    return np.mean(total), np.median(within), np.percentile(within, 90), np.std(means)
for sd in (0.1, 0.22, 0.3):
    fs = [sd * smooth_field(rng, box.shape, [4, 5, 4]) for _ in range(30)]
    print(f"generator 3D SD {sd}: total {stats(fs)[0]:.3f}  in-slice SD median {stats(fs)[1]:.3f} p90 {stats(fs)[2]:.3f}  SD of slice means {stats(fs)[3]:.3f}")
# per-slice aug on the full 2 mm slice grid (stage 03 slices are the whole volume plane)
full = brain.shape
for b in (0.15, 0.2, 0.3, 0.45):
    within, means = [], []
    for ax in range(3):
        shp = tuple(s for i, s in enumerate(full) if i != ax)
        for k in range(20, full[ax] - 20, 4):
            m = np.take(brain, k, axis=ax)
            if m.sum() < 200: continue
            f = smooth_2d(rng.standard_normal((4, 4)) * b, shp)
            within.append(f[m].std()); means.append(f[m].mean())
    print(f"augment per-slice {b}: in-slice SD median {np.median(within):.3f} p90 {np.percentile(within,90):.3f}  SD of slice means {np.std(means):.3f}")
# the brain-scaled field of raxnet.augment (bias_brain), applied through augment.intensity to a flat brain slice
from raxnet import augment as A
only = A.AugmentParams(**{**{f.name: 0.0 for f in A.fields(A.AugmentParams)}, "bias_brain": 0.35})
within = []
for ax in range(3):
    for k in range(20, full[ax] - 20, 4):
        m = np.take(brain, k, axis=ax)
        if m.sum() < 200: continue
        out = A.intensity(np.where(m, 0.6, 0.0).astype(np.float32), A.draw(rng, "sagittal", only))
        within.append(np.log(out[m] / 0.6).std())
print(f"augment bias_brain 0.35: in-slice SD median {np.median(within):.3f} p90 {np.percentile(within, 90):.3f}")
