"""Dump the out-of-fold fused probabilities stage 08 chooses its post-processing on, so that post-processing
rules can be compared without predicting again.

Same subjects, models, weights and input preparation as stage 08's selection (raxnet.fusion.run); writes one
npz per subject (weighted-mean probability as float16, truth as uint8, spacing) under --out; with --per-plane
also each plane's probability (``prob_axial`` ...), for rules that read the planes' agreement.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from raxnet.brainmask import read_steps
from raxnet.config import stage_dir
from raxnet.evaluation import load_subjects, load_truth
from raxnet.inference import ModelCache, predict_probabilities
from raxnet.io import voxel_spacing
from raxnet.log import progress
from raxnet.planes import PLANES
from raxnet.postprocess import fused_probability
from raxnet.runs import fold_models, plane_weights, train_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--model", default="raxnet-tversky_focal_slice")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-plane", action="store_true", help="also store each plane's probability")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    models_dir = train_dir(a.work_dir, a.model)
    weights, _ = plane_weights(models_dir, list(PLANES))
    steps = read_steps(stage_dir(a.work_dir, "convert"))
    models = fold_models(models_dir, list(PLANES))
    subjects = [s for s in load_subjects(a.work_dir, a.data_root, oof=True) if s.set != "holdout"]
    subjects.sort(key=lambda s: s.fold)
    cache = ModelCache()
    for s in progress(subjects, desc="oof", unit="subject"):
        target = a.out / f"{s.subject}.npz"
        if target.exists():
            continue
        fm = {p: [models[p][s.fold]] for p in PLANES}
        cache.keep_only(m.path for ms in fm.values() for m in ms)
        t1, truth, img = load_truth(s)
        probs = predict_probabilities(t1, fm, cache=cache, batch_size=32, source=str(s.t1_path), affine=img.affine,
                                      brain_mask_mm=steps["brain_mask_mm"], bias_correct=steps["bias_correct"])
        prob = fused_probability(probs, "weighted", weights)
        tmp = a.out / f"{s.subject}.tmp.npz"
        planes = {f"prob_{p}": probs[p].astype(np.float16) for p in PLANES} if a.per_plane else {}
        np.savez_compressed(tmp, prob=prob.astype(np.float16), truth=truth.astype(np.uint8),
                            spacing=np.array(voxel_spacing(img.affine)), fold=s.fold, **planes)
        tmp.rename(target)


if __name__ == "__main__":
    main()
