#!/usr/bin/env python
"""Stages 02 + 04 on the real ATLAS v2.0 lesion tables (655 subjects): time, peak memory, fold balance.

Converts ``shared/atlas_reference/`` to stage-01 CSVs (raxnet.reference), runs stage 02 (80/20 split) and
stage 04 (5 folds) in-process, checks the leakage invariants and prints, per plane, the largest per-bin
deviation of any fold's lesion-area histogram from the whole train set's and the smallest KS / Mann-Whitney
p-value of a fold against the other folds, plus the same for subject lesion volume.

    python bench/bench_folds_real_scale.py [--reference DIR] [--work-dir DIR] [--seed 42] [--json] [--baseline]

Peak memory is the process's maximum resident set size (imports and the conversion included). Times are
wall-clock and, because a shared machine's load inflates wall time, also the process's CPU time.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from raxnet import folds, splitting
from raxnet.planes import PLANES
from raxnet.reference import default_reference_dir, reference_to_stage01


def check_invariants(work: Path) -> dict[str, int]:
    """Leakage invariants on the written CSVs; raises AssertionError on a violation."""
    split = pd.read_csv(work / "02_data_splitting" / "split.csv", dtype={"subject": str})
    sf = pd.read_csv(work / "04_cross_validation" / "subject_folds.csv", dtype={"subject": str})
    train = set(split.loc[split["set"] == "train", "subject"])
    hold = set(split.loc[split["set"] == "holdout", "subject"])
    assert not sf["subject"].duplicated().any(), "a subject is in two folds"
    assert set(sf["subject"]) == train, "folds do not cover exactly the train subjects"
    fold_of = dict(zip(sf["subject"], sf["fold"]))
    counts = {}
    for plane in PLANES:
        pf = pd.read_csv(work / "04_cross_validation" / f"{plane}_folds.csv", dtype={"subject": str})
        sl = pd.read_csv(work / "01_dataset" / f"slices_{plane}.csv", dtype={"subject": str})
        assert not pf.duplicated(["subject", "slice"]).any(), f"{plane}: a slice is in two folds"
        assert not set(pf["subject"]) & hold, f"{plane}: hold-out subject in a fold"
        assert (pf["subject"].map(fold_of) == pf["fold"]).all(), f"{plane}: fold differs from subject_folds"
        want = sl[sl["subject"].isin(train) & (sl["lesion_pixels"] > 0)][["subject", "slice"]]
        got = pf[pf["kind"] == "lesion"][["subject", "slice"]]
        assert len(want) == len(got) and want.merge(got).shape[0] == len(want), f"{plane}: lesion slices lost"
        nrm = pf[pf["kind"] == "normal"].merge(sl, on=["subject", "slice"], suffixes=("", "_src"))
        assert (nrm["lesion_pixels_src"] == 0).all(), f"{plane}: normal slice with lesion"
        counts[plane] = len(got)
    return counts


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    Linux keeps ``ru_maxrss`` across fork + exec, so a process started from a big parent (pytest with
    TensorFlow loaded) would report the parent's size; ``VmHWM`` is the high-water mark of this program's
    own address space. Falls back to ``ru_maxrss`` where /proc is absent.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", default=str(default_reference_dir()))
    p.add_argument("--work-dir")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--baseline", action="store_true",
                   help="also print the balance of the volume-stratified deal alone (no swap search)")
    args = p.parse_args(argv)
    if not Path(args.reference).is_dir():
        print(f"reference tables not found: {args.reference}", file=sys.stderr)
        return 2
    tmp = None
    if args.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="raxnet_bench_folds_")
        args.work_dir = tmp.name
    work = Path(args.work_dir)
    run = {"work_dir": str(work), "seed": args.seed}

    t0 = time.perf_counter()
    reference_to_stage01(args.reference, work)
    t1 = time.perf_counter()
    c1 = time.process_time()
    s02 = splitting.run({}, run)
    t2 = time.perf_counter()
    s04 = folds.run({}, run)
    t3 = time.perf_counter()
    c3 = time.process_time()
    lesion_slices = check_invariants(work)
    peak_mb = peak_rss_mb()
    result = {
        "subjects": s02["n_train"] + s02["n_holdout"], "n_train": s02["n_train"], "n_holdout": s02["n_holdout"],
        "split_ks_p": s02["ks_p"], "split_mwu_p": s02["mwu_p"],
        "lesion_slices": lesion_slices, "balance": s04["balance"],
        "seconds_convert": round(t1 - t0, 2), "seconds_split": round(t2 - t1, 2),
        "seconds_folds": round(t3 - t2, 2), "seconds_02_04": round(t3 - t1, 2),
        "cpu_seconds_02_04": round(c3 - c1, 2), "peak_rss_mb": round(peak_mb, 1),
        "work_dir": str(work) if tmp is None else None,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"ATLAS v2.0 reference: {result['subjects']} subjects -> {result['n_train']} train / "
              f"{result['n_holdout']} hold-out (KS p={result['split_ks_p']:.3f}, MWU p={result['split_mwu_p']:.3f})")
        print(f"lesion slices in folds: {lesion_slices}")
        print(pd.DataFrame(result["balance"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"time: convert {result['seconds_convert']} s, stage 02 {result['seconds_split']} s, "
              f"stage 04 {result['seconds_folds']} s (02+04: {result['seconds_02_04']} s wall, "
              f"{result['cpu_seconds_02_04']} s CPU); peak RSS {result['peak_rss_mb']} MB")
    if args.baseline:
        split = pd.read_csv(work / "02_data_splitting" / "split.csv", dtype={"subject": str, "volume_bin": str})
        slices = {p: pd.read_csv(work / "01_dataset" / f"slices_{p}.csv", dtype={"subject": str}) for p in PLANES}
        _, _, st = folds.make_folds(split, slices, 5, args.seed, search_swaps=0, search_restarts=1)
        print("baseline (volume-stratified deal, no swap search):")
        print(folds.balance_summary(st).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
