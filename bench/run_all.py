"""Run every benchmark in bench/ one after the other (``make bench``) and keep their reports.

Each benchmark prints its own table; this script runs them in fresh processes (so one's memory or
thread pools do not colour the next), echoes their output and writes it to ``<out>/<name>.txt``.
Benchmarks measure speed and memory ratios within one run: run them on an otherwise idle machine.

    .venv/bin/python bench/run_all.py [--out work/bench] [--only inference,models]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: name -> extra arguments (quick settings that still measure what the targets are about)
BENCHMARKS: dict[str, list[str]] = {
    "synthetic": ["--subjects", "3"],
    "stage01": ["--subjects", "4"],
    "folds_real_scale": [],
    "slice_read": ["--subjects", "3"],
    "pipeline": [],
    "models": [],
    "train_step": ["--steps", "3"],
    "inference": [],
    "postprocess_selection": [],
    "augment": ["--batches", "10"],
    # the shipped weights on 40 fresh 2 mm + 20 shifted 1 mm whole-head scans (seed 7: never trained on)
    # predict --register: 3 defaced whole-head 1 mm scans moved off MNI (+ one with SyN), lesion masking, refusals
    "registration": [],
    "quality": ["--weights", "weights/demo", "--subjects", "40", "--shifted", "20", "--seed", "7"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="work/bench", help="folder for the reports (default work/bench)")
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    failed = []
    for name in names:
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *BENCHMARKS[name]]
        print(f"\n### {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        report = proc.stdout + (f"\n[stderr tail]\n{proc.stderr[-2000:]}" if proc.returncode else "")
        print(report, flush=True)
        (out / f"{name}.txt").write_text(report)
        print(f"### {name}: exit {proc.returncode}, {time.perf_counter() - start:.0f} s", flush=True)
        if proc.returncode:
            failed.append(name)
    print(f"\nreports in {out}/" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
