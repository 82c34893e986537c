"""``raxnet demo`` / ``make demo``: the main job on the embedded default, end to end.

Generates the synthetic ATLAS (if the data root holds no dataset yet), runs stages 01-08 in-process with one
configuration, packages the trained models as a weight set under the work directory, runs
``raxnet predict`` on one hold-out scan, and prints where every stage's outputs are, the per-plane and fused
Dice table and the time each stage took.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from raxnet.cli_common import resolve, stage_parser
from raxnet.config import STAGE_DIRS, stage_dir
from raxnet.log import get_logger
from raxnet.runs import resolve_data_path
from raxnet.stage import update_report

log = get_logger(__name__)

#: (title, module, stage key or None) in the order the demo runs them.
STAGES: list[tuple[str, str, str | None]] = [
    ("00 synthetic ATLAS", "raxnet.synthetic", None),
    ("01 lesion information", "raxnet.dataset_info", "dataset"),
    ("02 train/hold-out split", "raxnet.splitting", "split"),
    ("03 3D -> 2D slices", "raxnet.slices", "convert"),
    ("04 cross-validation folds", "raxnet.folds", "folds"),
    ("05 balanced batches", "raxnet.batches", "arrays"),
    ("06 models", "raxnet.model_report", "model"),
    ("07 training", "raxnet.training", "train"),
    ("08 fusion + 3D evaluation", "raxnet.fusion", "fusion"),
]


def _has_dataset(root: Path) -> bool:
    return any(root.glob("Training/R*/sub-*/ses-*/anat/*_T1w.nii*"))


def _timed(title: str, fn: Callable[[], Any], timings: list[tuple[str, float]]) -> Any:
    log.info("=== %s ===", title)
    start = time.perf_counter()
    result = fn()
    timings.append((title, time.perf_counter() - start))
    log.info("=== %s done in %.1f s ===", title, timings[-1][1])
    return result


def trained_run_name(cfg: dict[str, Any]) -> str:
    """Stage 07's run folder of the first ``[train]`` model and loss (``raxnet``, ``raxnet-tversky_focal_slice``):
    the networks the demo exports."""
    from raxnet.runs import run_name
    from raxnet.training import loss_names, model_names

    return run_name(model_names(cfg)[0], loss_names(cfg)[0])


def run_demo(cfg: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Run the whole pipeline; returns the timings, the results table and output locations."""
    from raxnet.predict import Predictor, predict_batch
    from raxnet.predict import DEFAULTS as PREDICT_DEFAULTS
    from raxnet.config import section
    from raxnet.weights import export_weights

    work = Path(run["work_dir"])
    data_root = Path(run["data_root"])
    timings: list[tuple[str, float]] = []
    results: dict[str, Any] = {}
    for title, module_name, key in STAGES:
        if key is None and _has_dataset(data_root):
            log.info("%s: dataset already present in %s, not regenerated", title, data_root)
            continue
        module = importlib.import_module(module_name)
        results[title] = _timed(title, lambda m=module: m.run(cfg, run), timings)

    weights_dir = work / "weights"
    train_cfg = section(cfg, "train", importlib.import_module("raxnet.training").DEFAULTS)
    model_name = trained_run_name(cfg)
    _timed("export weights", lambda: export_weights(work, weights_dir, model=model_name,
                                                    note="demo run on the synthetic ATLAS"), timings)

    split = pd.read_csv(stage_dir(work, "split") / "split.csv")
    subjects = pd.read_csv(stage_dir(work, "dataset") / "subjects.csv").set_index("subject")
    holdout = split.loc[split["set"] == "holdout", "subject"].tolist()
    predicted = None
    if holdout:
        scan = resolve_data_path(subjects.loc[holdout[0], "t1_path"], data_root)
        opts = section(cfg, "predict", PREDICT_DEFAULTS)
        out_dir = stage_dir(work, "predict")

        def _predict() -> dict[str, Any]:
            predictor = Predictor(weights_dir, batch_size=opts["batch_size"],
                                  overrides={"brain_mask_mm": opts["brain_mask_mm"],
                                             "bias_correct": opts["bias_correct"]})
            return predict_batch(predictor, [scan], out_dir, opts)[0][0]

        predicted = _timed("raxnet predict (one hold-out scan)", _predict, timings)
        update_report(work, "predict")  # the run report links the prediction's own report
    summary = {"timings": timings, "work_dir": str(work), "predicted": predicted, "weights": str(weights_dir),
               "init_weights": str(train_cfg["init_weights"]), "adopted": int(train_cfg["epochs"]) == 0}
    print_summary(work, summary)
    return summary


def print_summary(work: Path, summary: dict[str, Any]) -> None:
    """The final report of the demo: outputs, Dice table, overlays, timings."""
    print("\n" + "=" * 78)
    print("RAX-Net demo finished. Outputs:")
    for key, folder in STAGE_DIRS.items():
        path = work / folder
        if path.exists():
            print(f"  {folder:<22} {path}/")
    print(f"  {'weight set':<22} {summary['weights']}/")
    if summary.get("init_weights") and summary.get("adopted"):
        print(f"\nThe plane networks are those of {summary['init_weights']}, adopted untrained ([train] epochs = 0); "
              "stage 08 chose their post-processing on this run's out-of-fold subjects.")
    elif summary.get("init_weights"):
        print(f"\nThe plane networks were fine-tuned from {summary['init_weights']} ([train] init_weights; "
              "configs/demo_scratch.toml trains from scratch).")
    fusion_summary = stage_dir(work, "fusion") / "summary.csv"
    if fusion_summary.is_file():
        table = pd.read_csv(fusion_summary)
        print("\n3D results on the synthetic hold-out (every hold-out subject; see 08_fusion/summary.csv):")
        print(format_results(table))
    qc = sorted((stage_dir(work, "fusion") / "qc").glob("*.png"))
    if qc:
        print(f"\nQC overlays (T1 + ground truth + prediction, three views), {len(qc)} in {qc[0].parent}/:")
        for path in qc:
            print(f"  {path}")
    if summary.get("predicted"):
        p = summary["predicted"]
        print(f"\nraxnet predict on {Path(p['input']).name}: {p['lesion_voxels']} lesion voxels, "
              f"{p['n_lesions']} lesions, {p['seconds']} s -> {p['mask']}")
    print("\nTime per stage:")
    total = 0.0
    for title, seconds in summary["timings"]:
        total += seconds
        print(f"  {title:<40} {seconds:8.1f} s")
    print(f"  {'total':<40} {total:8.1f} s")
    print("=" * 78)


def format_results(table: pd.DataFrame) -> str:
    """Method x (Dice mean ± sd, median, lesion F1, HD95) for the hold-out set, single planes first."""
    df = table.copy()
    if "set" in df.columns:
        df = df[df["set"] == "holdout"] if (df["set"] == "holdout").any() else df
    cols = [c for c in df.columns if c in ("method", "n", "n_failed")]
    fmt = df[cols].copy()
    for metric in ("dice", "lesion_f1", "hd95_mm"):
        if f"{metric}_mean" in df.columns:
            sd = df.get(f"{metric}_sd", 0.0)
            fmt[metric] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(df[f"{metric}_mean"], sd)]
        if f"{metric}_median" in df.columns and metric == "dice":
            fmt["dice_median"] = df["dice_median"].map(lambda v: f"{v:.3f}")
    return fmt.to_string(index=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``raxnet demo``."""
    parser = stage_parser(
        "Run the whole RAX-Net pipeline on the embedded synthetic ATLAS (or your data root): "
        "stages 01-08, a weight set, one prediction, and a printed summary.",
        data_root=True,
        prog="raxnet demo",
    )
    args = parser.parse_args(argv)
    cfg, run = resolve(args)
    run_demo(cfg, run)
    return 0
