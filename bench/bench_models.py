#!/usr/bin/env python
"""Benchmark: parameters, FLOPs per slice and CPU inference speed of RAX-Net and its rivals.

For 1 mm axial slices (197x233 padded to 208x240x1 at depth 4) and the full-size [model] defaults
(width 32), builds each model, counts parameters and analytic FLOPs per slice, then times
``predict_on_batch`` on batches of 16 random slices after warm-up calls (the path
raxnet.inference.predict_plane uses) and prints slices per second (median over the timed batches).

    python bench/bench_models.py [--models raxnet,unet] [--batch 16] [--repeats 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    from raxnet.models import DEFAULTS, MODEL_NAMES, build_model, plane_input_shape
    from raxnet.models.flops import count_flops
    from raxnet.templates import ATLAS_SHAPE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--plane", default="axial")
    parser.add_argument("--width", type=int, default=DEFAULTS["width"])
    parser.add_argument("--depth", type=int, default=DEFAULTS["depth"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches first (graph tracing)")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    shape = plane_input_shape(ATLAS_SHAPE, args.plane, args.depth)
    x = np.random.default_rng(0).normal(size=(args.batch, *shape)).astype(np.float32)
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    print(
        f"input {shape[0]}x{shape[1]}x{shape[2]} ({args.plane}, 1 mm), width {args.width}, depth {args.depth}, "
        f"batch {args.batch}, {args.warmup} warm-up + {args.repeats} timed batches, devices {devices}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    header = f"{'model':<15} {'params':>11} {'GFLOPs/slice':>13} {'slices/s':>9} {'ms/slice':>9}"
    print(header)
    print("-" * len(header))
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        model = build_model(name, shape, width=args.width, depth=args.depth)
        params, flops = model.count_params(), count_flops(model)
        for _ in range(args.warmup):
            model.predict_on_batch(x)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model.predict_on_batch(x)
            times.append(time.perf_counter() - start)
        per_batch = statistics.median(times)
        print(
            f"{name:<15} {params:>11,} {flops / 1e9:>13.3f} {args.batch / per_batch:>9.2f} "
            f"{1000 * per_batch / args.batch:>9.1f}"
        )
        del model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
