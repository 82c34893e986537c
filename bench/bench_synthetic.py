#!/usr/bin/env python
"""Benchmark the synthetic ATLAS generator: seconds per subject at 1 mm and 2 mm on one core.

For each spacing and head mode (brain-only, and ``--whole-head`` unless ``--brain-only``), generates ``--subjects`` subjects in-process (``generate_subject``: anatomy warp,
lesions, intensities) and, separately, writes them (``generate_dataset`` with ``jobs=1``: generation +
int16/uint8 NIfTI gzip writing). Reports wall and CPU seconds per subject; CPU time is the figure to
compare on a shared machine. Template loading is done once beforehand and reported on its own.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from raxnet import synthetic


def _timed(fn):  # type: ignore[no-untyped-def]
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def bench(n: int, seed: int, spacings: tuple[int, ...], heads: tuple[bool, ...] = (False, True)) -> list[dict]:
    rows = []
    for sp, head in ((sp, head) for sp in spacings for head in heads):
        _, load_w, load_c = _timed(lambda: synthetic._template_rows(sp))
        params = {"whole_head": head}
        gen_w, gen_c, vox = [], [], []
        for i in range(n):
            out, w, c = _timed(lambda: synthetic.generate_subject(i, seed, sp, params=params))
            gen_w.append(w)
            gen_c.append(c)
            vox.append(out[3]["lesion_mm3"])
        with tempfile.TemporaryDirectory() as tmp:
            _, w, c = _timed(lambda: synthetic.generate_dataset(Path(tmp) / "ATLAS_2", n, seed, spacing=sp, n_sites=1,
                                                                params=params))
        rows.append({
            "spacing_mm": sp,
            "whole_head": head,
            "subjects": n,
            "template_load_s": round(load_w, 2),
            "generate_wall_s_per_subject": round(float(np.mean(gen_w)), 2),
            "generate_cpu_s_per_subject": round(float(np.mean(gen_c)), 2),
            "generate_cpu_s_max": round(float(np.max(gen_c)), 2),
            "generate_and_write_wall_s_per_subject": round(w / n, 2),
            "generate_and_write_cpu_s_per_subject": round(c / n, 2),
            "median_lesion_mm3": float(np.median(vox)),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=5, help="subjects per spacing (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=int, nargs="+", default=[1, 2], choices=(1, 2))
    parser.add_argument("--brain-only", action="store_true", help="skip the whole-head runs")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    rows = bench(args.subjects, args.seed, tuple(args.spacing), (False,) if args.brain_only else (False, True))
    for r in rows:
        print(
            f"{r['spacing_mm']} mm {'whole-head' if r['whole_head'] else 'brain-only'}: generate {r['generate_cpu_s_per_subject']:.2f} s CPU "
            f"({r['generate_wall_s_per_subject']:.2f} s wall, max {r['generate_cpu_s_max']:.2f} s CPU) per subject; "
            f"generate + write {r['generate_and_write_cpu_s_per_subject']:.2f} s CPU "
            f"({r['generate_and_write_wall_s_per_subject']:.2f} s wall); template load {r['template_load_s']:.1f} s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
