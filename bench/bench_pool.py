#!/usr/bin/env python
"""Pool several ``bench_quality.py`` runs (different generator seeds) into one set of tables.

One seed's 40 subjects give a paired 95 % interval about +-0.05 wide, and two seeds have disagreed on the
sign of a gain (bench/results/steps_bias_2026-12-06/); a comparison judged on two seeds pooled is steadier.
Each run's subjects are renamed ``<seed folder>/<subject>`` so that pairing stays within a run, then every
table of ``bench_quality.py`` is recomputed over all of them and written under ``--out``.

Example: ``python bench/bench_pool.py work/bench/q8484 work/bench/q9595 --out work/bench/pooled``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import report, tables_from, write_tables  # noqa: E402


def pool(runs: list[Path]) -> dict[str, pd.DataFrame]:
    """The pooled tables of the ``bench_quality.py`` output folders ``runs`` (same weight sets in each)."""
    metrics, lesions, names = [], [], None
    for folder in runs:
        df = pd.read_csv(folder / "subject_metrics.csv", keep_default_na=False, na_values=[""])
        order = list(dict.fromkeys(df["weights"]))
        if names is None:
            names = order
        elif order != names:
            raise SystemExit(f"{folder}: weight sets {order} differ from the first run's {names}")
        metrics.append(df.assign(subject=folder.name + "/" + df["subject"].astype(str)))
        les_path = folder / "lesions.csv"
        if les_path.exists() and les_path.stat().st_size > 1:
            les = pd.read_csv(les_path)
            lesions.append(les.assign(subject=folder.name + "/" + les["subject"].astype(str)))
    if names is None:
        raise SystemExit("no runs given")
    les_all = pd.concat(lesions, ignore_index=True) if lesions else pd.DataFrame()
    return tables_from(pd.concat(metrics, ignore_index=True), les_all, names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="bench_quality.py output folders (--out of each run)")
    parser.add_argument("--out", type=Path, default=Path("work/bench/pooled"), help="output folder")
    args = parser.parse_args(argv)
    tables = pool(args.runs)
    write_tables(tables, args.out)
    print(f"pooled {len(args.runs)} runs: " + ", ".join(str(r) for r in args.runs))
    print(report(tables))
    print(f"tables in {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
