"""CPU cost of the large-lesion outline in postprocess on a 1 mm-sized volume (a 40 mm cube lesion and noisy specks): with
large_mm3 0 vs 10000, twice each (the first call warms up)."""
import time, numpy as np
from scipy import ndimage
from raxnet.postprocess import postprocess
rng = np.random.default_rng(0)
shape = (197, 233, 189)
base = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), 2)
base = (base - base.min()) / (base.max() - base.min())
zz = np.zeros(shape, np.float32); zz[60:100, 80:120, 70:110] = 0.9
probs = {p: np.clip(ndimage.gaussian_filter(zz, 3) + 0.6 * base ** 4 * rng.random(shape, dtype=np.float32), 0, 1) for p in ("axial", "sagittal", "coronal")}
w = {"axial": 0.31, "sagittal": 0.36, "coronal": 0.33}
kw = dict(fusion="weighted", threshold=0.3, min_lesion_mm3=50, min_peak=0.7, spacing=(1, 1, 1), weights=w)
for large in (0, 10000, 0, 10000):
    t = time.process_time(); m = postprocess(probs, large_mm3=large, large_threshold=0.5, large_fragment_mm3=500, **kw)
    print(large, round(time.process_time() - t, 3), "s CPU", int(m.sum()))
