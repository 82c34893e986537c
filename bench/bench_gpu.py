#!/usr/bin/env python
"""GPU check of the full-size recipe: seconds per epoch at 1 mm, float32 vs mixed precision, and the
projected training time of the real ATLAS v2.0 recipe (``configs/atlas.toml``).

A benchmark for a machine with a GPU (CI has none). Runs the project's own stage CLIs with
``configs/gpu_check.toml`` (``configs/atlas.toml``'s model and batches -- RAX-Net width 32, depth 4,
batch 16, half lesion slices -- on a synthetic whole-head ATLAS at 1 mm):

1. ``synth`` (40 subjects), ``dataset``, ``split``, ``convert``, ``folds``, ``arrays`` (axial, fold 1);
2. ``train`` axial fold 1 for ``--epochs`` epochs of 200 steps, once per precision setting in
   ``--variants`` (``fp32``; ``mixed`` = ``--mixed-precision``; ``xla`` = ``--xla``; combinations with
   ``+``), each a fresh run (``--force``); the epoch times come from its ``history.csv`` (an epoch =
   training steps + precise batch-norm + inner validation + checkpoints, as in a real run);
3. ``raxnet predict`` on 1 mm whole-head scans with the shipped weights (first scan includes compilation).

The projection: lesion slices per training subject and plane, counted in stage 01's slice tables of the
synthetic 1 mm set (its lesion-volume distribution follows ATLAS), times the real recipe's training
subjects per fold (655 x 0.8 x 0.8 = 419) gives the steps per epoch that ``steps_per_epoch = 0`` makes;
x the measured seconds per step (epochs after the first: the first compiles) x 60 epochs x 5 folds x 3
planes is the upper bound (early stopping with patience 10 ends most runs sooner).

Writes under ``--out``: ``gpu_check.json`` (every figure), ``gpu_check.md`` (a table), ``log.txt``.

    python bench/bench_gpu.py --out OUT [--variants fp32,mixed] [--epochs 3]

Under ``KERAS_BACKEND=jax`` every step is XLA-compiled by Keras' default (``jit_compile="auto"``), so the
``xla`` variant only matters under TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "gpu_check.toml"
#: real ATLAS v2.0 recipe (configs/atlas.toml): labelled subjects, hold-out share, folds, epochs, planes
ATLAS_SUBJECTS, HOLDOUT, N_FOLDS, EPOCHS, PLANES = 655, 0.2, 5, 60, 3


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run one command, append its output to ``log``, return wall seconds (raise on failure)."""
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n== {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - t0
    print(f"{seconds:8.1f} s  rc {rc}  {' '.join(cmd[2:6])}", flush=True)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc} (see {log})")
    return seconds


def lesion_slices_per_subject(work: Path) -> dict[str, float]:
    """Mean lesion slices per labelled subject and plane, from stage 01's slice tables."""
    out = {}
    for plane in ("axial", "sagittal", "coronal"):
        t = pd.read_csv(work / "01_dataset" / f"slices_{plane}.csv")
        per = t.assign(les=t["lesion_pixels"] > 0).groupby("subject")["les"].sum()
        out[plane] = float(per.mean())
    return out


def epoch_times(history: Path) -> dict[str, float]:
    h = pd.read_csv(history)
    later = h["time"].iloc[1:] if len(h) > 1 else h["time"]
    return {"epochs": int(len(h)), "first_epoch_s": float(h["time"].iloc[0]),
            "later_epoch_s": float(later.mean()), "val_dice_last": float(h["val_dice"].iloc[-1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "work" / "gpu_check" / "out")
    p.add_argument("--variants", default="fp32,mixed", help="comma list of fp32, mixed, xla, mixed+xla")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--predict-scans", type=int, default=4)
    p.add_argument("--config", type=Path, default=CONFIG, help="run configuration (default configs/gpu_check.toml)")
    args = p.parse_args(argv)
    full_cfg = tomllib.loads(args.config.read_text())
    run_cfg, model_cfg = full_cfg["run"], full_cfg.get("model", {})
    spacing = full_cfg.get("synthetic", {}).get("spacing", 1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    py = [sys.executable, "-m", "raxnet"]
    cfg = ["--config", str(args.config)]
    work = ROOT / run_cfg["work_dir"]
    data_root = ROOT / run_cfg["data_root"]
    result: dict = {"backend": os.environ.get("KERAS_BACKEND", "tensorflow"), "config": str(args.config),
                    "stages_s": {}, "train": {}, "predict": {}}
    try:
        result["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                        "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        result["gpu"] = "no nvidia-smi"

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2))

    stages = [("synth", ["synth", "--testing", str(args.predict_scans)]), ("dataset", ["dataset"]),
              ("split", ["split"]), ("convert", ["convert"]), ("folds", ["folds"]),
              ("arrays", ["arrays", "--plane", "axial", "--fold", "1"])]
    for name, extra in stages:
        result["stages_s"][name] = round(_run(py + extra + cfg, log), 1)
        save()
    slices = lesion_slices_per_subject(work)
    arrays = json.loads((work / "05_prepare_arrays" / "axial" / "fold_1" / "summary.json").read_text())
    result["input_shape"] = arrays["input_shape"]
    result["lesion_slices_per_subject"] = {k: round(v, 1) for k, v in slices.items()}
    steps = int(arrays["steps_per_epoch"])

    for variant in args.variants.split(","):
        flags = ["--mixed-precision"] * ("mixed" in variant) + ["--xla"] * ("xla" in variant)
        try:
            wall = _run(py + ["train", "--plane", "axial", "--fold", "1", "--force", "--epochs", str(args.epochs)]
                        + flags + cfg, log)
        except RuntimeError as exc:
            result["train"][variant] = {"error": str(exc)}
            save()
            continue
        run_dir = next((work / "07_train").rglob("axial/fold_1/history.csv")).parent
        shutil.copy(run_dir / "history.csv", out / f"history_{variant.replace('+', '_')}.csv")
        t = epoch_times(run_dir / "history.csv")
        t.update(wall_s=round(wall, 1), steps_per_epoch=steps, s_per_step=round(t["later_epoch_s"] / steps, 4))
        result["train"][variant] = t
        save()

    scans = sorted((data_root / "Testing").rglob("*_T1w.nii.gz"))[: args.predict_scans]
    if scans:
        inp = work / "predict_in"
        shutil.rmtree(inp, ignore_errors=True)
        inp.mkdir(parents=True)
        for s in scans:
            shutil.copy(s, inp / s.name)
        one = work / "predict_one"
        shutil.rmtree(one, ignore_errors=True)
        first = _run(py + ["predict", "--input", str(inp / scans[0].name), "--output", str(one)], log)
        many = work / "predict_all"
        shutil.rmtree(many, ignore_errors=True)
        wall = _run(py + ["predict", "--input", str(inp), "--output", str(many)], log)
        summary = pd.read_csv(many / "summary.csv")
        result["predict"] = {"scans": len(scans), "one_scan_wall_s": round(first, 1),
                             "all_scans_wall_s": round(wall, 1),
                             "seconds_column_mean": round(float(summary["seconds"].mean()), 2)
                             if "seconds" in summary else None}
        save()

    # projection for the real recipe (configs/atlas.toml): every lesion slice once per epoch
    train_subjects = ATLAS_SUBJECTS * (1 - HOLDOUT) * (N_FOLDS - 1) / N_FOLDS
    proj = {}
    for variant, t in result["train"].items():
        if "s_per_step" not in t:
            continue
        lesion_per_batch = int(arrays["lesion_per_batch"])
        steps_real = {pl: math.ceil(train_subjects * n / lesion_per_batch) for pl, n in slices.items()}
        hours = sum(steps_real.values()) * t["s_per_step"] * EPOCHS * N_FOLDS / 3600
        proj[variant] = {"steps_per_epoch_real": steps_real, "upper_bound_hours": round(hours, 2)}
    result["projection"] = {"train_subjects_per_fold": round(train_subjects), "epochs": EPOCHS,
                            "folds": N_FOLDS, "planes": PLANES, **proj}
    save()

    lines = [f"# GPU check ({result['gpu']}, KERAS_BACKEND={result['backend']})", "",
             f"input {result['input_shape']} (axial, {spacing} mm), RAX-Net width {model_cfg.get('width')} depth "
             f"{model_cfg.get('depth')}, batch {arrays['batch_size']}, {steps} steps per epoch; epoch time = "
             "steps + precise batch-norm + inner validation + checkpoints, so s/step is an upper bound", "",
             "| variant | first epoch s | later epochs s | s/step | inner-val Dice (last) | real recipe, h (upper bound) |",
             "|---|---:|---:|---:|---:|---:|"]
    for variant, t in result["train"].items():
        if "error" in t:
            lines.append(f"| {variant} | failed: {t['error'][:80]} | | | | |")
            continue
        lines.append(f"| {variant} | {t['first_epoch_s']:.1f} | {t['later_epoch_s']:.1f} | {t['s_per_step']:.4f} | "
                     f"{t['val_dice_last']:.3f} | {proj[variant]['upper_bound_hours']:.1f} |")
    if result["predict"]:
        pr = result["predict"]
        lines += ["", f"raxnet predict (weights/demo, 1 mm whole-head): first scan {pr['one_scan_wall_s']} s wall "
                  f"(process start + compile), {pr['scans']} scans {pr['all_scans_wall_s']} s wall"]
    lines += ["", f"stages (s): {result['stages_s']}"]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
