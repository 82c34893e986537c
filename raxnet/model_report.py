"""Stage 06: build every model for every plane's input size and report parameters and FLOPs per slice.

Input size: the volume grid from ``<work>/01_dataset/subjects.csv`` (column ``shape``, e.g. ``99x117x95``)
when present, else ``--shape`` (an error without either); each plane's slice shape is padded
to a multiple of ``2**depth`` (:func:`raxnet.planes.padded_shape`).

Outputs under ``<work>/06_model/``: ``models.csv`` (``model, plane, params, flops_per_slice,
input_shape``; one row per model and plane) and ``summary.txt`` (the Keras summaries).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from raxnet import record
from raxnet.batches import DEFAULTS as ARRAY_DEFAULTS
from raxnet.batches import context_setting
from raxnet.cli_common import resolve, stage_parser
from raxnet.config import section, stage_dir, with_flags
from raxnet.errors import ConfigError, StageInputError
from raxnet.io import atomic_path, save_csv
from raxnet.log import get_logger
from raxnet.models import DEFAULTS, MODEL_NAMES, build_from_config, plane_input_shape
from raxnet.planes import channels_for, parse_planes
from raxnet.stage import stage_run
from raxnet.templates import ATLAS_SHAPE

log = get_logger(__name__)

COLUMNS = ["model", "plane", "params", "flops_per_slice", "input_shape"]


def parse_shape(text: str) -> tuple[int, int, int]:
    """'197x233x189' -> (197, 233, 189); anything else raises ConfigError."""
    try:
        shape = tuple(int(v) for v in str(text).lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"volume shape must look like 197x233x189, got {text!r}")
    return shape  # type: ignore[return-value]


def volume_shape(work_dir: str | Path, fallback: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """The data grid: the single ``shape`` of stage 01's ``subjects.csv``, else ``fallback`` (``--shape``).

    Without either it is an error rather than a silent guess: the 1 mm ATLAS grid would describe networks
    four times the size of the 2 mm demo's.
    """
    from raxnet.tables import SUBJECTS, read_table

    path = stage_dir(work_dir, "dataset") / "subjects.csv"
    if path.is_file():
        table = read_table(path, SUBJECTS, columns=["subject"])
        if "shape" in table.columns and table["shape"].notna().any():
            shapes = sorted(set(table["shape"].dropna().astype(str)))
            if len(shapes) > 1:
                raise StageInputError(f"{path}: subjects on different grids ({', '.join(shapes[:4])})")
            return parse_shape(shapes[0])
    if fallback:
        return tuple(fallback)  # type: ignore[return-value]
    atlas = "x".join(map(str, ATLAS_SHAPE))
    raise StageInputError(f"{path}: not found, so the volume grid is unknown: run stage 01 first, or pass "
                          f"--shape (e.g. --shape {atlas} for the 1 mm ATLAS grid, 99x117x95 for 2 mm)")


def _summary_text(model: Any, columns: int = 150) -> str:
    """Keras' summary as plain text; rich (which renders it) takes its width from $COLUMNS, default 80."""
    lines: list[str] = []
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=columns)
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(line.rstrip() for text in lines for line in text.splitlines())


@stage_run("model")
def run(
    cfg: dict[str, Any],
    run: dict[str, Any],
    *,
    planes: str | Sequence[str] = "all",
    models: str | Sequence[str] | None = None,
    shape: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    """Build ``models`` (default all of MODEL_NAMES) for ``planes`` and write models.csv + summary.txt."""
    from raxnet.models.flops import count_flops

    rec = record.begin("model", cfg, run)
    cfg, run = rec.cfg, rec.run
    model_cfg = section(cfg, "model", DEFAULTS)
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    names = list(models) if models else list(MODEL_NAMES)
    bad = [m for m in names if m not in MODEL_NAMES]
    if bad:
        raise ConfigError(f"unknown model(s) {', '.join(bad)}; expected {', '.join(MODEL_NAMES)}")
    plane_list = parse_planes(planes)
    vol = volume_shape(run["work_dir"], shape)
    out_dir = stage_dir(run["work_dir"], "model", create=True)
    channels = channels_for(context_setting(section(cfg, "arrays", ARRAY_DEFAULTS)))  # 2.5D: neighbour slices

    rows, summaries = [], []
    for plane in plane_list:
        input_shape = plane_input_shape(vol, plane, int(model_cfg["depth"]), channels)
        for name in names:
            try:
                model = build_from_config(model_cfg, input_shape, name=name)
            except ValueError as exc:
                raise ConfigError(f"[model] {name}: {exc}") from None
            row = {
                "model": name,
                "plane": plane,
                "params": int(model.count_params()),
                "flops_per_slice": count_flops(model),
                "input_shape": "x".join(str(s) for s in input_shape),
            }
            rows.append(row)
            log.info(
                "%-15s %-8s input %-11s %11s params %8.3f GFLOPs/slice",
                name, plane, row["input_shape"], f"{row['params']:,}", row["flops_per_slice"] / 1e9,
            )
            summaries.append(f"=== {name} / {plane} (input {row['input_shape']}) ===\n{_summary_text(model)}\n")
            del model

    table = pd.DataFrame(rows, columns=COLUMNS)
    csv_path = save_csv(table, out_dir / "models.csv")
    txt_path = out_dir / "summary.txt"
    header = (
        f"volume grid {'x'.join(map(str, vol))}; [model] "
        + ", ".join(f"{k}={model_cfg[k]}" for k in sorted(model_cfg))
        + "\n\n"
    )
    with atomic_path(txt_path, suffix=".txt") as tmp:
        tmp.write_text(header + "\n".join(summaries))
    rec.finish([csv_path], models=names, planes=plane_list, volume_shape=list(vol))
    return {"models_csv": str(csv_path), "summary_txt": str(txt_path), "rows": len(rows), "volume_shape": vol}


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of stage 06."""
    parser = stage_parser(
        "Stage 06 - build RAX-Net and its rivals for each plane's input size; report parameters and\n"
        "FLOPs per slice in <work-dir>/06_model/models.csv and the Keras summaries in summary.txt."
    )
    parser.add_argument("--plane", default="all", help="axial, sagittal, coronal, a comma list or 'all' (default)")
    parser.add_argument(
        "--models", default=None, help=f"comma-separated subset of {','.join(MODEL_NAMES)} (default: all)"
    )
    parser.add_argument(
        "--shape", default=None,
        help="volume grid when 01_dataset/subjects.csv is absent, e.g. 197x233x189 (1 mm ATLAS) or 99x117x95 (2 mm)"
    )
    parser.add_argument("--width", type=int, help="base filters ([model].width)")
    parser.add_argument("--depth", type=int, help="number of down-samplings ([model].depth)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point of stage 06."""
    args = build_parser().parse_args(argv)
    cfg, run_cfg = resolve(args)
    cfg = with_flags(cfg, "model", width=args.width, depth=args.depth)
    shape = parse_shape(args.shape) if args.shape else None
    result = run(cfg, run_cfg, planes=args.plane, models=args.models, shape=shape)
    print(pd.read_csv(result["models_csv"]).to_string(index=False))
    return 0
