#!/usr/bin/env python
"""Segmentation quality of a weight set, and of a previous one side by side, on data no weights saw.

A benchmark, not a test. Two sets of synthetic scans are generated in memory (``raxnet.synthetic``;
subject *i* depends only on the seed and *i*, so use a seed no weight set was trained on -- the run
refuses a seed recorded in either manifest):

(a) ``fresh``: ``--subjects`` whole-head subjects (``--spacing`` 2 or 1 mm) with the training profile;
(b) ``shifted``: ``--shifted`` whole-head 1 mm subjects with the ``shifted`` profile -- lesion look,
    contrast, gamma, noise, bias and resolution all outside the training ranges (out of domain).

Each scan goes through the ``raxnet predict`` library path (:class:`raxnet.predict.Predictor`:
``to_model_grid`` -> brain-mask step + normalisation -> plane models -> probabilities back onto the scan's
grid (``Predictor.on_scan_grid``) -> :func:`raxnet.postprocess.postprocess` with the weight set's
decisions) and is scored on its own grid with
:func:`raxnet.metrics.evaluate`: each plane alone (the weight set's threshold and clean-up) and the fused
mask. Printed and written under ``--out`` (default ``work/bench/quality/``):

* ``subject_metrics.csv``: one row per scan x weight set x method (Dice, lesion-wise F1, HD95, ...);
* ``summary.csv``: mean, SD and median per set x weight set x method (``raxnet.evaluation.summarise``);
* ``dice_by_volume.csv``: fused Dice by the subject's total lesion volume (< 1 mL, 1-10 mL, > 10 mL);
* ``dice_by_location.csv``: fused Dice and subjects missed (Dice 0) by the generator's lesion location
  (cortical, subcortical, both: deep lesions are the ones the networks miss most);
* ``lesions.csv`` / ``lesion_detection.csv``: every true lesion (26-connected) with its volume and
  whether the fused mask touches it; the share detected per lesion-volume bin (< 1 mL, 1-10, > 10 mL);
* ``small_lesion_detection.csv``: the lesions under 1 mL split into < 0.01 mL (about one 2 mm model voxel),
  0.01-0.1 mL and 0.1-1 mL, so that a detection rate can be read without the specks;
* ``paired.csv`` (with ``--baseline``): per set, the paired per-subject gain of the fused mask over the
  baseline (Dice, lesion F1) with a 95 % bootstrap interval over subjects and the counts better / worse.

Example (nice: it is long): ``nice -n 10 python bench/bench_quality.py --weights weights/new
--baseline weights/demo --subjects 40 --shifted 20 --seed 7``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np
import pandas as pd

from raxnet import synthetic
from raxnet.components import label
from raxnet.evaluation import format_table, summarise
from raxnet.metrics import evaluate
from raxnet.planes import PLANES
from raxnet.predict import Predictor, to_model_grid

N_SITES = 40  # only names the subjects; 40 sites leave room for thousands of them
VOLUME_BINS_ML = ((0.0, 1.0, "<1 mL"), (1.0, 10.0, "1-10 mL"), (10.0, np.inf, ">10 mL"))
# The "<1 mL" lesions split further: a 2 mm model voxel is 8 mm^3, so a component under 0.01 mL is about one
# model voxel (the generator's masks have 26-connected fragments of 2-4 voxels), 0.01-0.1 mL a few, and only
# 0.1-1 mL (12-125 model voxels) a lesion a 2 mm network can outline (bench/results/subject_balance_2026-12-06).
SMALL_BINS_ML = ((0.0, 0.01, "<0.01 mL"), (0.01, 0.1, "0.01-0.1 mL"), (0.1, 1.0, "0.1-1 mL"))
FUSED = "fused"
PAIRED_METRICS = ("dice", "lesion_f1")
TIE = 0.01  # a subject counts as better / worse only beyond this difference


def _volume_bin(ml: float, bins: tuple[tuple[float, float, str], ...] = VOLUME_BINS_ML) -> str:
    return next(name for lo, hi, name in bins if lo <= ml < hi)


def training_seeds(manifest: dict[str, Any]) -> set[int]:
    """Seeds a manifest says its weights were trained on: any ``seed``/``seeds`` key, or "seed N" in its note."""
    seeds: set[int] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("seed", "seeds", "training_seed", "training_seeds"):
                    for v in value if isinstance(value, (list, tuple)) else [value]:
                        if isinstance(v, (int, float)) or (isinstance(v, str) and v.isdigit()):
                            seeds.add(int(v))
                else:
                    walk(value)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk({k: v for k, v in manifest.items() if k != "note"})
    seeds.update(int(s) for s in re.findall(r"seed[s]?\s*=?\s*(\d+)", str(manifest.get("note", ""))))
    return seeds


def scans(n_fresh: int, n_shifted: int, seed: int, spacing: int) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(set, name, subject)`` for the fresh then the shifted scans, generated one at a time."""
    for i in range(n_fresh):
        t1, truth, affine, info = synthetic.generate_subject(i, seed, spacing, n_sites=N_SITES,
                                                             params={"whole_head": True})
        yield "fresh", f"fresh-{i:03d}", {"t1": t1, "truth": truth, "affine": affine, "info": info}
    for j in range(n_shifted):  # the generator's "testing" stream: other anatomy and lesions than the fresh set
        t1, truth, affine, info = synthetic.generate_subject(j, seed, 1, testing=True, n_sites=N_SITES,
                                                             params={"whole_head": True, "profile": "shifted"})
        yield "shifted", f"shifted-{j:03d}", {"t1": t1, "truth": truth, "affine": affine, "info": info}


def scan_probabilities(predictor: Predictor, t1: np.ndarray, affine: np.ndarray, name: str,
                       ) -> tuple[dict[str, np.ndarray], tuple[float, float, float] | None]:
    """Each plane's probabilities of a scan as ``raxnet predict`` makes them: on the scan's own grid when it was
    resampled (with its spacing), else on the weights' grid (spacing ``None``)."""
    img = nib.Nifti1Image(t1, affine)
    on_grid, resampled = to_model_grid(t1, img, predictor.manifest, Path(name))
    return predictor.scan_probabilities(on_grid, resampled, img, name)


def predict_masks(predictor: Predictor, t1: np.ndarray, affine: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """Each plane's mask and the fused mask on the scan's own grid, as ``raxnet predict`` makes them."""
    # probabilities back on the scan's grid when resampled, thresholded there (Predictor.on_scan_grid)
    probs, spacing = scan_probabilities(predictor, t1, affine, name)
    return {method: predictor.mask(probs, spacing=spacing, fusion=None if method == FUSED else method)
            for method in (*PLANES, FUSED)}


def lesion_rows(pred: np.ndarray, truth: np.ndarray, voxel_ml: float, connectivity: int) -> list[dict[str, Any]]:
    """One row per true lesion: volume (mL), bin, detected (any predicted voxel overlaps it)."""
    lab, n = label(truth, connectivity)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    hit = np.bincount(lab[pred > 0].ravel(), minlength=n + 1)[1:] > 0
    return [{"lesion": k + 1, "volume_ml": round(float(sizes[k] * voxel_ml), 4),
             "volume_bin": _volume_bin(float(sizes[k] * voxel_ml)), "detected": bool(hit[k])} for k in range(n)]


def run(weights: dict[str, Predictor], n_fresh: int, n_shifted: int, seed: int, spacing: int,
        out: Path) -> dict[str, pd.DataFrame]:
    """Score every scan with every weight set; write and return the tables."""
    from tqdm import tqdm

    rows, lesions = [], []
    for set_name, name, subj in tqdm(scans(n_fresh, n_shifted, seed, spacing), total=n_fresh + n_shifted,
                                     desc="bench_quality", unit="scan"):
        sp = float(abs(subj["affine"][0, 0]))
        truth = subj["truth"]
        voxel_ml = sp**3 / 1000.0
        subject_ml = float(truth.sum()) * voxel_ml
        for label_, predictor in weights.items():
            start = time.process_time()
            masks = predict_masks(predictor, subj["t1"], subj["affine"], name)
            seconds = time.process_time() - start
            conn = int(predictor.settings["connectivity"])
            for method, mask in masks.items():
                rows.append({"set": set_name, "weights": label_, "subject": name, "method": method, "error": "",
                             "spacing_mm": sp, "lesion_ml": round(subject_ml, 4), "volume_bin": _volume_bin(subject_ml),
                             "location": subj["info"].get("location", ""),
                             "cpu_s": round(seconds, 2),
                             **evaluate(mask, truth, spacing=(sp, sp, sp), connectivity=conn)})
            for r in lesion_rows(masks[FUSED], truth, voxel_ml, conn):
                lesions.append({"set": set_name, "weights": label_, "subject": name, **r})
    tables = tables_from(pd.DataFrame(rows), pd.DataFrame(lesions), list(weights))
    write_tables(tables, out)
    return tables


def write_tables(tables: dict[str, pd.DataFrame], out: Path) -> None:
    """Each table as ``<out>/<name>.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")


def _detection(les: pd.DataFrame) -> pd.DataFrame:
    """Lesions, detected and their share per set x weight set x ``volume_bin`` (empty in, empty out)."""
    if les.empty:
        return pd.DataFrame()
    return (les.groupby(["set", "weights", "volume_bin"], sort=False)["detected"]
            .agg(lesions="count", detected="sum", share_detected="mean").reset_index())


def _by_location(fused: pd.DataFrame) -> pd.DataFrame:
    """Fused Dice and missed subjects (Dice 0) per set x weight set x the generator's lesion ``location``
    (cortical / subcortical / both); empty for rows without one (runs written before the column existed)."""
    if "location" not in fused:
        return pd.DataFrame()
    with_loc = fused[fused["location"].fillna("").astype(str) != ""].assign(missed=lambda d: d["dice"] == 0)
    if with_loc.empty:
        return pd.DataFrame()
    return (with_loc.groupby(["set", "weights", "location"], sort=True)
            .agg(n=("dice", "count"), dice_mean=("dice", "mean"), dice_median=("dice", "median"),
                 missed=("missed", "sum"), share_missed=("missed", "mean")).reset_index())


def tables_from(df: pd.DataFrame, les: pd.DataFrame, weight_names: list[str]) -> dict[str, pd.DataFrame]:
    """The benchmark's tables from its per-scan rows (``subject_metrics``) and per-lesion rows (``lesions``);
    ``weight_names`` in display order, the evaluated set first and, if two, the baseline second."""
    methods = [*PLANES, FUSED]
    summary = pd.concat(
        [summarise(g.assign(set=f"{s} [{w}]"), methods).assign(set=s, weights=w) for (s, w), g in
         df.groupby(["set", "weights"], sort=False)], ignore_index=True)
    fused = df[df["method"] == FUSED]
    by_volume = (fused.groupby(["set", "weights", "volume_bin"], sort=False)["dice"]
                 .agg(n="count", dice_mean="mean", dice_sd="std", dice_median="median").reset_index())
    detection = _detection(les)
    by_location = _by_location(fused)
    small = les[les["volume_ml"] < 1.0] if not les.empty else les
    small_detection = _detection(small.assign(volume_bin=small["volume_ml"].map(
        lambda v: _volume_bin(v, SMALL_BINS_ML))) if not small.empty else small)
    order = {name: k for k, (_, _, name) in enumerate((*SMALL_BINS_ML, *VOLUME_BINS_ML))}
    wrank = {w: k for k, w in enumerate(weight_names)}
    for t in (by_volume, detection, small_detection):
        if not t.empty:
            t.sort_values(["set", "volume_bin", "weights"], key=lambda c: c.map(order) if c.name == "volume_bin"
                          else c.map(wrank) if c.name == "weights" else c, inplace=True, kind="stable")
    tables = {"subject_metrics": df, "summary": summary, "dice_by_volume": by_volume, "dice_by_location": by_location,
              "lesions": les, "lesion_detection": detection, "small_lesion_detection": small_detection}
    if len(weight_names) == 2:  # the first is the evaluated set, the second the baseline
        tables["paired"] = paired_gain(df, *weight_names)
    return tables


def paired_gain(df: pd.DataFrame, new: str, base: str, n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Fused-mask gain of weight set ``new`` over ``base`` per set and metric, paired by subject.

    The interval is the 2.5-97.5 percentile of ``n_boot`` means of subjects resampled with replacement
    (``seed`` fixes it); a subject missing a value for either set is left out of that metric.
    """
    fused = df[df["method"] == FUSED]
    rows = []
    for set_name, g in fused.groupby("set", sort=False):
        for metric in PAIRED_METRICS:
            p = g.pivot_table(index="subject", columns="weights", values=metric, dropna=False).dropna()
            if p.empty or new not in p or base not in p:
                continue
            d = (p[new] - p[base]).to_numpy(float)
            boot = np.random.default_rng(seed).choice(d, (n_boot, d.size)).mean(axis=1)
            lo, hi = np.percentile(boot, [2.5, 97.5])
            rows.append({"set": set_name, "metric": metric, "n": d.size, "new": new, "base": base,
                         "new_mean": p[new].mean(), "base_mean": p[base].mean(), "gain": d.mean(),
                         "ci_low": lo, "ci_high": hi, "better": int((d > TIE).sum()), "worse": int((d < -TIE).sum())})
    return pd.DataFrame(rows)


def report(tables: dict[str, pd.DataFrame]) -> str:
    """The printed tables: per set and weight set, methods (Dice mean ± sd, median, lesion F1, HD95),
    then fused Dice by subject-volume bin and by lesion location, and lesion detection by lesion-volume bin."""
    summary = tables["summary"]
    lines = [format_table(summary.assign(set=summary["set"] + " [" + summary["weights"] + "]"))]
    lines.append("\nfused Dice by the subject's lesion volume (mean ± sd, median, n):")
    for _, r in tables["dice_by_volume"].iterrows():
        sd = "" if not np.isfinite(r["dice_sd"]) else f" ± {r['dice_sd']:.3f}"
        lines.append(f"  {r['set']:<8} [{r['weights']}] {r['volume_bin']:>8}: {r['dice_mean']:.3f}{sd}, "
                     f"median {r['dice_median']:.3f}, n {int(r['n'])}")
    by_location = tables.get("dice_by_location")
    if by_location is not None and not by_location.empty:
        lines.append("\nfused Dice by the lesion's location (generator's label; missed = Dice 0):")
        for _, r in by_location.iterrows():
            lines.append(f"  {r['set']:<8} [{r['weights']}] {r['location']:>11}: {r['dice_mean']:.3f}, median "
                         f"{r['dice_median']:.3f}, missed {int(r['missed'])}/{int(r['n'])}")
    for key, title, width in (
            ("lesion_detection", "lesions detected by the fused mask, by lesion volume (26-connected components):", 8),
            ("small_lesion_detection", "  of which under 1 mL, by size (< 0.01 mL is about one 2 mm model voxel):", 11)):
        det = tables.get(key)
        if det is None or det.empty:
            continue
        lines.append("\n" + title)
        for _, r in det.iterrows():
            lines.append(f"  {r['set']:<8} [{r['weights']}] {r['volume_bin']:>{width}}: {int(r['detected'])}/"
                         f"{int(r['lesions'])} = {r['share_detected']:.2f}")
    paired = tables.get("paired")
    if paired is not None and not paired.empty:
        lines.append(f"\nfused mask, paired by subject: [{paired['new'].iloc[0]}] - [{paired['base'].iloc[0]}] "
                     f"(95 % bootstrap CI; better / worse by > {TIE}):")
        for _, r in paired.iterrows():
            lines.append(f"  {r['set']:<8} {r['metric']:<9}: {r['new_mean']:.3f} vs {r['base_mean']:.3f}, gain "
                         f"{r['gain']:+.3f} ({r['ci_low']:+.3f} .. {r['ci_high']:+.3f}), n {int(r['n'])}, "
                         f"{int(r['better'])} better / {int(r['worse'])} worse")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="weight-set folder to evaluate")
    parser.add_argument("--baseline", help="previous weight set, evaluated side by side on the same scans")
    parser.add_argument("--subjects", type=int, default=40, help="fresh whole-head subjects (default 40)")
    parser.add_argument("--shifted", type=int, default=20, help="shifted 1 mm whole-head subjects (default 20)")
    parser.add_argument("--seed", type=int, default=7, help="generator seed; must not be a training seed (default 7)")
    parser.add_argument("--spacing", type=int, choices=(1, 2), default=2, help="grid of the fresh set (default 2 mm)")
    parser.add_argument("--brain-mask-mm", help="override both weight sets' brain-mask step: mm, or 'off'")
    parser.add_argument("--out", default="work/bench/quality", help="output folder (default work/bench/quality)")
    args = parser.parse_args(argv)
    overrides = {}
    if args.brain_mask_mm is not None:
        overrides["brain_mask_mm"] = "off" if args.brain_mask_mm == "off" else float(args.brain_mask_mm)
    # labelled by folder name ("weights/demo" -> "demo"); the baseline is marked when the names clash
    weights = {Path(args.weights).name: Predictor(args.weights, overrides=overrides)}
    if args.baseline:
        name = Path(args.baseline).name
        weights[name if name not in weights else f"{name} (baseline)"] = Predictor(args.baseline, overrides=overrides)
    for label_, predictor in weights.items():
        seeds = training_seeds(predictor.manifest)
        if args.seed in seeds:
            parser.error(f"--seed {args.seed}: {predictor.weights_dir} was trained on it (seeds {sorted(seeds)})")
        print(f"[{label_}] {predictor.weights_dir}: training seed(s) {sorted(seeds) or 'not recorded'}; "
              f"inference {json.dumps(predictor.settings, sort_keys=True)}")
    tables = run(weights, args.subjects, args.shifted, args.seed, args.spacing, Path(args.out))
    print(report(tables))
    cpu = tables["subject_metrics"].drop_duplicates(["set", "weights", "subject"]).groupby(["set", "weights"])["cpu_s"].mean()
    print("\nCPU seconds per scan (prediction incl. resampling):",
          ", ".join(f"{s} [{w}] {v:.1f}" for (s, w), v in cpu.items()))
    print(f"tables in {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
