#!/usr/bin/env python
"""Benchmark the training augmentation (raxnet.augment): milliseconds per batch of 16 slices on one core.

For each spacing, one synthetic whole-head subject (seed 7) is brain-masked and normalised as stage 03
does, its axial lesion slices are padded to the depth-4 network input (2 mm: 112x128, 1 mm: 208x240),
and batches of 16 are drawn and applied with the default ``[augment]`` strengths and with every
optional step on (elastic, blur, resolution loss: probability 1). Reports CPU milliseconds per batch,
the draw alone, and (with ``--steps``) each transform on its own.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from raxnet import augment as A
from raxnet import brainmask, synthetic
from raxnet.planes import pad_slices, padded_shape, slice_shape, to_slices


def _slices(spacing: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    t1, mask, affine, _ = synthetic.generate_subject(1, 7, spacing, params={"whole_head": True})
    norm = brainmask.prepare(t1, affine, brainmask.DEFAULT_DILATION_MM)
    img, msk = to_slices(norm, "axial"), to_slices(mask.astype(np.float32), "axial")
    keep = np.flatnonzero(img.reshape(img.shape[0], -1).max(axis=1) > 0)
    idx = keep[np.linspace(0, keep.size - 1, n).astype(int)]
    target = padded_shape(slice_shape(norm.shape, "axial"), 4)
    return pad_slices(img[idx], target), pad_slices(msk[idx], target)


def _cpu_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat * 1000.0


def bench(spacings: tuple[int, ...], batches: int, steps: bool) -> list[dict]:
    rows = []
    for sp in spacings:
        x, y = _slices(sp, 16)
        for name, params in (("default", A.AugmentParams()),
                             ("all steps on", replace(A.AugmentParams(), elastic_prob=1.0, blur_prob=1.0,
                                                      lowres_prob=1.0))):
            rng = np.random.default_rng(0)

            def batch() -> None:
                for k in range(x.shape[0]):
                    A.augment_pair(x[k], y[k], "axial", params, rng)

            draw_rng = np.random.default_rng(1)
            row = {"spacing_mm": sp, "slice": list(x.shape[1:]), "params": name,
                   "ms_per_batch_of_16": round(_cpu_ms(batch, batches), 1),
                   "draw_ms_per_batch": round(_cpu_ms(lambda: [A.draw(draw_rng, "axial", params) for _ in range(16)],
                                                      batches), 2)}
            rows.append(row)
        if steps:
            img, msk = x[0], y[0]
            fields = A.smooth_2d(np.ones((5, 5), np.float32), img.shape)
            disp = np.stack([fields, fields])
            for label, fn in (
                ("warp (affine)", lambda: A.warp(img, msk, 5.0, 1.05, (2.0, 1.0))),
                ("warp (affine + elastic)", lambda: A.warp(img, msk, 5.0, 1.05, (2.0, 1.0), disp)),
                ("elastic field", lambda: A.smooth_2d(np.ones((5, 5), np.float32), img.shape)),
                ("blur", lambda: A.blur(img, 0.8)),
                ("lower_resolution", lambda: A.lower_resolution(img, 2.0, 0)),
                ("gamma", lambda: A.gamma(img, 1.2)),
                ("bias_field", lambda: A.bias_field(img, fields)),
                ("add_noise", lambda: A.add_noise(img, 0.03, 1)),
            ):
                rows.append({"spacing_mm": sp, "step": label, "ms_per_slice": round(_cpu_ms(fn, 20 * batches), 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spacing", type=int, nargs="+", default=[2, 1], choices=(1, 2))
    parser.add_argument("--batches", type=int, default=20, help="batches timed per setting (default 20)")
    parser.add_argument("--steps", action="store_true", help="also time each transform alone")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    rows = bench(tuple(args.spacing), args.batches, args.steps)
    for r in rows:
        if "step" in r:
            print(f"{r['spacing_mm']} mm  {r['step']:<26} {r['ms_per_slice']:7.3f} ms per slice")
        else:
            print(f"{r['spacing_mm']} mm  slices {tuple(r['slice'])}  {r['params']:<13} "
                  f"{r['ms_per_batch_of_16']:7.1f} ms per batch of 16 (draw {r['draw_ms_per_batch']:.2f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
