#!/usr/bin/env python
"""How stage 07 feeds ``model.fit``: the stage-05 PyDataset as is vs :func:`raxnet.datasets.as_tf_data`.

Keras turns a ``keras.utils.PyDataset`` into ``tf.data.Dataset.from_generator``; on the 2-core development VM
of 2026-12-06 that made every train step 2-3x slower than the same step fed from in-memory arrays, while
index-addressed ``tf.numpy_function`` calls (``as_tf_data``, what stage 07 uses) ran at the arrays' speed.
Same model, same batches, one process, side by side; the first ``--warmup`` steps (tracing) are not timed:

    python bench/bench_train_feed.py [--steps 20] [--warmup 4] [--width 16] [--subjects 6]

Prints ms per train step (median, min, max) per feed; the arrays feed (the epoch's batches held in memory,
which stage 07 cannot do at full scale) is the floor. Measured 2026-12-06 (2-core VM, defaults, 1 mm stacks):
PyDataset 5488 ms, as_tf_data 5126, arrays 5499 -- no difference at this step cost; the 2-3x slowdown was seen
with 2 mm batches (0.7 s steps) of the real stage-05 data.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import PLANE, make_stacks  # noqa: E402


def step_times(feed: str, sets, width: int, depth: int, steps: int, warmup: int) -> np.ndarray:
    """Seconds per train step of ``fit`` fed by ``feed`` (pydataset, as_tf_data or arrays)."""
    import keras

    from raxnet import losses, models
    from raxnet.datasets import as_tf_data

    class Clock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.t: list[float] = []

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.t.append(time.perf_counter())

    keras.utils.set_random_seed(0)
    model = models.build_model("raxnet", sets.input_shape, width=width, depth=depth)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.get_loss())
    ds, n = sets.train, warmup + steps + 1
    clock = Clock()
    if feed == "pydataset":
        model.fit(ds, epochs=1, steps_per_epoch=min(n, len(ds)), verbose=0, shuffle=False, callbacks=[clock])
    elif feed == "as_tf_data":
        model.fit(as_tf_data(ds), epochs=1, steps_per_epoch=min(n, len(ds)), verbose=0, callbacks=[clock])
    else:
        xs, ys = zip(*(ds.batch(i, 0) for i in range(min(n, len(ds)))))
        model.fit(np.concatenate(xs), np.concatenate(ys), batch_size=ds.batch_size, epochs=1, verbose=0,
                  shuffle=False, callbacks=[clock])
    keras.backend.clear_session()
    return np.diff(clock.t)[warmup:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed train steps per feed")
    p.add_argument("--warmup", type=int, default=4, help="untimed first steps (tracing)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--subjects", type=int, default=6, help="synthetic full-size (1 mm) subjects")
    args = p.parse_args(argv)
    from raxnet import batches

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_stacks(work, args.subjects)
        cfg = {"arrays": {"batch_size": 16, "steps_per_epoch": args.warmup + args.steps + 1}}
        sets = batches.build_training_sets(cfg, {"work_dir": str(work), "seed": 0}, PLANE, 1, args.depth)
        print(f"raxnet width {args.width}, depth {args.depth}, {PLANE} input {sets.input_shape}, batch 16, "
              f"{args.steps} timed steps after {args.warmup}")
        for feed in ("pydataset", "as_tf_data", "arrays"):
            t = step_times(feed, sets, args.width, args.depth, args.steps, args.warmup) * 1000
            print(f"  {feed:<11} {np.median(t):7.0f} ms/step (min {t.min():.0f}, max {t.max():.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
