"""Probe: anti-aliased (Gaussian) vs point-sampled 1 mm -> 2 mm input resampling, shipped weights."""
import sys
import numpy as np, nibabel as nib
from pathlib import Path
from scipy import ndimage
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import bench_quality as BQ
from raxnet.predict import Predictor, to_model_grid
from raxnet.metrics import evaluate

pred = Predictor(sys.argv[2] if len(sys.argv) > 2 else "weights/demo")
n = int(sys.argv[1]); seed = 9393
rows = []
for set_name, name, subj in BQ.scans(n, n, seed, 1):
    img = nib.Nifti1Image(subj["t1"], subj["affine"])
    res = {}
    for sigma in (0.0, 0.6, 0.85):
        data = subj["t1"] if sigma == 0 else ndimage.gaussian_filter(subj["t1"], sigma)
        data = np.where(subj["t1"] > 0, data, 0).astype(np.float32)
        on_grid, _ = to_model_grid(data, img, pred.manifest, Path(name))
        probs = pred.probabilities(on_grid, source=name)
        probs, spacing = pred.on_scan_grid(probs, img)
        m = pred.mask(probs, spacing=spacing)
        r = evaluate(m, subj["truth"], spacing=(1, 1, 1))
        res[sigma] = (r["dice"], r["lesion_f1"])
    print(set_name, name, int(subj["truth"].sum()), " ".join(f"s{s}: {d:.3f}/{f:.2f}" for s, (d, f) in res.items()), flush=True)
    rows.append((set_name, res))
for st in ("fresh", "shifted"):
    for s in (0.0, 0.6, 0.85):
        v = np.array([r[s] for n_, r in rows if n_ == st])
        print(st, s, "dice", v[:, 0].mean().round(3), "f1", v[:, 1].mean().round(3))
