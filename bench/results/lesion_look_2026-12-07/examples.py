"""Draw the experiment's augmentation (lesion_prob 1 here, to show the repainting; bias 0.3) on one axial
2 mm training slice of the shipped recipe's data and save ``examples.png``.

    .venv/bin/python bench/results/lesion_look_2026-12-07/examples.py WORK_DIR/03_moving_converting/axial/sub-r001s001
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from raxnet import augment as A  # noqa: E402

stem = sys.argv[1]
v, m = np.load(f"{stem}_image.npy"), np.load(f"{stem}_mask.npy")
k = int(np.argmax(m.reshape(len(m), -1).sum(1)))  # the slice with the most lesion
img, msk = v[k].astype(np.float32), m[k].astype(np.float32)
p = replace(A.AugmentParams(), lesion_prob=1.0, bias=0.3)
fig, ax = plt.subplots(2, 4, figsize=(14, 7))
ax[0, 0].imshow(img, cmap="gray", vmin=0, vmax=1.2)
ax[0, 0].contour(msk, [0.5], colors="r", linewidths=0.5)
ax[0, 0].set_title("original (lesion outlined)")
rng = np.random.default_rng(1)
for a in ax.flat[1:]:
    d = A.draw(rng, "axial", p)
    out, _ = A.apply(img, msk, d, "axial")
    a.imshow(out, cmap="gray", vmin=0, vmax=1.2)
    a.set_title(f"level {d.lesion_level:.2f}, mix {d.lesion_mix:.2f}\ntexture {d.lesion_texture:.3f}, "
                f"edge {d.lesion_edge_px:.1f} px", fontsize=9)
for a in ax.flat:
    a.axis("off")
fig.suptitle("Lesion-look augmentation (lesion_prob 1 for the figure, bias 0.3): one axial 2 mm training slice")
fig.savefig(Path(__file__).with_name("examples.png"), dpi=70)
