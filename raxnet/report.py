"""The run report: ``<work>/report.html``, one page a researcher scrolls to judge a run.

Modelled on the visual reports of MRIQC and fMRIPrep. It is built only from what the stages wrote to disk
(nothing is recomputed), so it can be rebuilt at any time (``raxnet report --work-dir W``); stage 08 writes
it and every other stage refreshes it when it exists (:func:`raxnet.stage.stage_run`). Sections:

1. dataset — stage 01's counts and figures;
2. split — train / hold-out counts per lesion-volume bin, the two-sample tests, the figure;
3. folds — per plane and fold: subjects, lesion / normal slices, largest bin deviation, tests; figures;
4. models — parameters and FLOPs per slice (stage 06);
5. training — one row per trained model, plane and fold, and its training curves (``curves.png``);
6. fusion — the 3D metrics per set and method, the box plots and Dice by lesion volume;
7. QC gallery — every hold-out subject, worst Dice first, with its metrics and overlay;
8. logs and errors — links to each stage's ``log.txt`` and ``errors.csv``.

Images and logs are linked with paths relative to the work directory (nothing is copied), so the work
directory can be zipped and mailed as is; a training run without ``curves.png`` (trained before stage 07
drew them) gets its curves drawn into the page as an embedded PNG.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

import numpy as np
import pandas as pd

from raxnet.config import STAGE_DIRS, stage_dir
from raxnet.io import atomic_path
from raxnet.log import LOG_NAME, get_logger

log = get_logger(__name__)

REPORT_NAME = "report.html"
#: Method whose per-subject Dice orders the QC gallery when fusion.json does not name one.
DEFAULT_QC_METHOD = "mean"
SET_LABELS = {"holdout": "hold-out", "train": "out-of-fold (train subjects)", "oof": "out-of-fold (train subjects)"}

_CSS = """
:root { --fg: #1d2430; --muted: #5b6675; --line: #d9dee5; --accent: #2b6cb0; --bg2: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color: var(--fg); background: #fff; }
nav { position: sticky; top: 0; z-index: 10; background: #1d2430; padding: 8px 24px; display: flex;
      flex-wrap: wrap; gap: 4px 18px; align-items: baseline; }
nav .brand { color: #fff; font-weight: 600; margin-right: 12px; }
nav a { color: #c9d6e8; text-decoration: none; font-size: 13px; }
nav a:hover { color: #fff; }
main { max-width: 1280px; margin: 0 auto; padding: 8px 24px 48px; }
h1 { font-size: 24px; margin: 18px 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 8px; }
p.meta, .muted { color: var(--muted); }
.missing { color: var(--muted); font-style: italic; background: var(--bg2); padding: 8px 12px; border-radius: 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.card { background: var(--bg2); border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 130px; }
.card .v { font-size: 20px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 12px; }
table.data { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
table.data th, table.data td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; }
table.data th { background: var(--bg2); }
table.data td.l, table.data th.l { text-align: left; }
table.data tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; margin-top: 2px; }
.grid { display: grid; gap: 12px; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); }
.gallery { display: grid; gap: 14px; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); }
.qc { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.qc h3 { margin: 0 0 4px; font-size: 14px; }
.qc img { width: 100%; }
.qc .metrics { font-size: 12px; color: var(--muted); margin-bottom: 4px; }
.badge { display: inline-block; min-width: 52px; text-align: center; padding: 1px 6px; border-radius: 10px;
         color: #fff; font-weight: 600; font-size: 12px; }
.bad { background: #c53030; } .mid { background: #c77c02; } .good { background: #2f855a; } .fail { background: #555; }
.err { color: #c53030; }
.scroll { overflow-x: auto; }
"""


# ------------------------------------------------------------------------------------------ HTML helpers


def esc(value: Any) -> str:
    """HTML-escaped text."""
    return html.escape(str(value), quote=True)


def href(path: Path, base: Path) -> str:
    """URL of ``path`` relative to the folder ``base`` (percent-encoded)."""
    try:
        rel = path.resolve().relative_to(base.resolve())
    except ValueError:
        return path.resolve().as_uri()
    return quote(rel.as_posix())


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals (or 3 significant digits when small), ints with separators."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isinf(v):
            return "∞" if v > 0 else "-∞"
        if v.is_integer() and abs(v) >= 1000:
            return f"{int(v):,}"
        if v != 0 and abs(v) < 10 ** (-digits):
            return f"{v:.2g}"
        return f"{v:.{digits}f}"
    return str(value)


def table_html(df: pd.DataFrame, *, left: Sequence[str] = (), digits: int = 3, raw: Sequence[str] = (),
               ints: Sequence[str] = ()) -> str:
    """A compact HTML table; columns in ``left`` are left-aligned, ``raw`` hold HTML, ``ints`` are counts."""
    if df.empty:
        return '<p class="missing">(no rows)</p>'
    head = "".join(f'<th class="{"l" if c in left else ""}">{esc(c)}</th>' for c in df.columns)
    df = df.copy()
    for c in ints:  # counts read back from a CSV with gaps are floats
        if c in df.columns:
            df[c] = pd.Series([None if pd.isna(x) else int(x) for x in df[c]], index=df.index, dtype=object)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in df.columns:
            text = str(r[c]) if c in raw else esc(fmt(r[c], digits))
            cells.append(f'<td class="{"l" if c in left else ""}">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def figure_html(path: Path, base: Path, caption: str = "", *, lazy: bool = False) -> str:
    """``<figure>`` linking an image by its path relative to ``base``; '' if the file does not exist."""
    if not path.is_file():
        return ""
    url = href(path, base)
    loading = ' loading="lazy"' if lazy else ""
    cap = f"<figcaption>{esc(caption)} — <code>{esc(url)}</code></figcaption>" if caption else ""
    return f'<figure><a href="{url}"><img src="{url}" alt="{esc(caption or path.name)}"{loading}></a>{cap}</figure>'


def cards_html(items: Iterable[tuple[str, Any]]) -> str:
    """A row of key-figure cards."""
    def value(v: Any) -> str:
        return fmt(int(v)) if isinstance(v, float) and v.is_integer() else fmt(v)

    body = "".join(f'<div class="card"><div class="v">{esc(value(v))}</div><div class="k">{esc(k)}</div></div>'
                   for k, v in items if v is not None)
    return f'<div class="cards">{body}</div>' if body else ""


def missing_html(what: str) -> str:
    return f'<p class="missing">{esc(what)}</p>'


def dice_badge(value: Any, failed: bool = False) -> str:
    """A coloured Dice badge (red < 0.3 ≤ orange < 0.6 ≤ green; grey for a failed subject)."""
    if failed:
        return '<span class="badge fail">failed</span>'
    try:
        v = float(value)
    except (TypeError, ValueError):
        return '<span class="badge fail">n/a</span>'
    if math.isnan(v):
        return '<span class="badge fail">n/a</span>'
    cls = "bad" if v < 0.3 else "mid" if v < 0.6 else "good"
    return f'<span class="badge {cls}">{v:.3f}</span>'


def page_html(title: str, subtitle: str, nav: Sequence[tuple[str, str]], body: str) -> str:
    """A whole page: sticky navigation bar, title, body."""
    links = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f'<nav><span class="brand">RAX-Net</span>{links}</nav>'
        f"<main><h1>{esc(title)}</h1><p class=\"meta\">{subtitle}</p>{body}</main></body></html>\n"
    )


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, keep_default_na=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        log.warning("report: cannot read %s (%s)", path, exc)
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        log.warning("report: cannot read %s (%s)", path, exc)
        return None


def _png_data_uri(fig: Any) -> str:
    from raxnet.plotting import plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------------------ sections


def _dataset(work: Path) -> str:
    folder = stage_dir(work, "dataset")
    summary = _read_json(folder / "summary.json")
    if summary is None:
        return missing_html("Stage 01 has not run: no 01_dataset/summary.json.")
    vol = summary.get("lesion_volume_mm3", {}) or {}
    out = [cards_html([
        ("subjects found", summary.get("found")), ("labelled", summary.get("labelled")),
        ("unlabelled", summary.get("unlabelled")), ("sites", summary.get("sites")),
        ("errors", summary.get("errors")), ("median lesions per subject", summary.get("n_lesions_median")),
    ])]
    if vol:
        keys = [("q00", "min"), ("q10", "10 %"), ("q25", "25 %"), ("q50", "median"), ("q75", "75 %"),
                ("q90", "90 %"), ("q100", "max"), ("mean", "mean")]
        row = {label: vol.get(k) for k, label in keys if k in vol}
        out.append("<h3>Lesion volume (mm³)</h3>" + table_html(pd.DataFrame([row]), digits=0))
    counts = []
    for key, label in (("location_counts", "location"), ("hemisphere_counts", "hemisphere")):
        for name, n in sorted((summary.get(key) or {}).items()):
            counts.append({"variable": label, "value": name, "subjects": int(n)})
    if counts:
        out.append("<h3>Lesion location and side</h3>" + table_html(pd.DataFrame(counts), left=("variable", "value")))
    figs = [
        ("lesion_volume_distribution.png", "Lesion volume per subject (log scale) and subjects per volume bin"),
        ("lesion_area_per_plane.png", "Lesion area per slice in each plane"),
        ("lesion_location.png", "Lesion location × hemisphere"),
        ("lesion_frequency.png", "How often each voxel is lesioned, over the MNI152 T1"),
    ]
    out.append('<div class="grid">' + "".join(figure_html(folder / f, work, c) for f, c in figs) + "</div>")
    return "".join(out)


def _split(work: Path) -> str:
    folder = stage_dir(work, "split")
    split = _read_csv(folder / "split.csv")
    stats = _read_csv(folder / "split_stats.csv")
    if split is None:
        return missing_html("Stage 02 has not run: no 02_data_splitting/split.csv.")
    n_train = int((split["set"] == "train").sum())
    n_hold = int((split["set"] == "holdout").sum())
    out = [cards_html([("train subjects", n_train), ("hold-out subjects", n_hold),
                       ("hold-out share", n_hold / max(1, len(split)))])]
    if stats is not None and "row" in stats.columns:
        tests = stats[stats["row"] == "test"]
        bins = stats[stats["row"] == "bin"][["name", "train_count", "holdout_count", "holdout_share"]]
        bins = bins.rename(columns={"name": "lesion-volume bin (mm³)", "train_count": "train",
                                    "holdout_count": "hold-out", "holdout_share": "hold-out share"})
        out.append(table_html(bins, left=("lesion-volume bin (mm³)",), ints=("train", "hold-out")))
        if not tests.empty:
            t = tests.set_index("name")
            names = {"kolmogorov_smirnov": "Kolmogorov–Smirnov D", "mann_whitney_u": "Mann–Whitney U"}
            parts = [f"{esc(names.get(n, n))} = {fmt(t.loc[n, 'statistic'])}, p = {fmt(t.loc[n, 'p_value'])}"
                     for n in t.index]
            out.append(f"<p>Train vs hold-out lesion volume — {'; '.join(parts)}.</p>")
    out.append(figure_html(folder / "split_distribution.png", work, "Train / hold-out lesion-volume distribution"))
    return "".join(out)


def _folds(work: Path) -> str:
    folder = stage_dir(work, "folds")
    stats = _read_csv(folder / "fold_stats.csv")
    if stats is None:
        return missing_html("Stage 04 has not run: no 04_cross_validation/fold_stats.csv.")
    out = []
    per_fold = stats[(stats["bin"].astype(str) == "all") & (stats["fold"].astype(str) != "all")]
    cols = [c for c in ("plane", "fold", "subjects", "lesion_slices", "normal_slices", "lesion_slice_share",
                        "max_bin_deviation", "ks_p", "mwu_p") if c in per_fold.columns]
    if not per_fold.empty:
        table = per_fold[cols].rename(columns={
            "lesion_slices": "lesion slices", "normal_slices": "normal slices",
            "lesion_slice_share": "lesion-slice share", "max_bin_deviation": "largest bin deviation",
            "ks_p": "KS p (vs other folds)", "mwu_p": "Mann-Whitney p"})
        out.append(
            "<p>Each fold against the union of the other folds: per-bin deviation of its lesion-area (or, for "
            "<code>volume</code>, subject lesion-volume) histogram from the whole train set's, and two-sample "
            "tests. Small deviations and large p-values mean balanced folds.</p>"
            + table_html(table, left=("plane",), ints=("subjects", "lesion slices", "normal slices")))
    figs = [("fold_balance.png", "Lesion-area bins per fold and plane"),
            ("fold_volume_balance.png", "Subject lesion volume per fold")]
    out.append('<div class="grid">' + "".join(figure_html(folder / f, work, c) for f, c in figs) + "</div>")
    return "".join(out)


def _models(work: Path) -> str:
    table = _read_csv(stage_dir(work, "model") / "models.csv")
    if table is None:
        return missing_html("Stage 06 has not run: no 06_model/models.csv.")
    df = table.copy()
    if "flops_per_slice" in df.columns:
        df["GFLOPs / slice"] = pd.to_numeric(df.pop("flops_per_slice"), errors="coerce") / 1e9
    if "input_shape" in df.columns:
        df = df.rename(columns={"input_shape": "input H×W×C"})
    out = [table_html(df, left=("model", "plane", "input H×W×C"))]
    summary = stage_dir(work, "model") / "summary.txt"
    if summary.is_file():
        out.append(f'<p>Layer-by-layer summaries: <a href="{href(summary, work)}">06_model/summary.txt</a>.</p>')
    return "".join(out)


def training_runs(work: Path) -> pd.DataFrame:
    """Every stage-07 run folder (``<run>/<plane>/fold_<k>`` with a ``history.csv`` or ``run.json``)."""
    rows = []
    train = stage_dir(work, "train")
    if not train.is_dir():
        return pd.DataFrame(columns=["run", "plane", "fold", "path"])
    for path in sorted(train.glob("*/*/fold_*")):
        if not ((path / "history.csv").is_file() or (path / "run.json").is_file()):
            continue
        try:
            fold = int(path.name.split("_", 1)[1])
        except ValueError:
            continue
        rows.append({"run": path.parent.parent.name, "plane": path.parent.name, "fold": fold, "path": path})
    order = {"axial": 0, "sagittal": 1, "coronal": 2}
    df = pd.DataFrame(rows, columns=["run", "plane", "fold", "path"])
    if not df.empty:
        df = df.assign(_p=df["plane"].map(order).fillna(9)).sort_values(["run", "_p", "fold"]).drop(columns="_p")
    return df.reset_index(drop=True)


def _curves_html(run_dir: Path, work: Path, label: str) -> str:
    png = run_dir / "curves.png"
    if png.is_file():
        return figure_html(png, work, label, lazy=True)
    history = _read_csv(run_dir / "history.csv")
    if history is None or history.empty:
        return ""
    from raxnet.plotting import plot_training_curves

    uri = _png_data_uri(plot_training_curves(history, title=label))
    return (f'<figure><img src="{uri}" alt="{esc(label)}"><figcaption>{esc(label)} — drawn from '
            f'<code>{esc(href(run_dir / "history.csv", work))}</code></figcaption></figure>')


def _training(work: Path) -> str:
    runs = training_runs(work)
    if runs.empty:
        return missing_html("Stage 07 has not run: no 07_train/<model>/<plane>/fold_<k>/ folders.")
    rows, curves = [], []
    for r in runs.itertuples():
        info = _read_json(r.path / "run.json") or {}
        metrics = info.get("metrics") or {}
        history = _read_csv(r.path / "history.csv")
        epochs = len(history) if history is not None else info.get("epochs_run")
        rows.append({
            "run": r.run, "plane": r.plane, "fold": r.fold,
            "epochs": epochs, "best epoch": info.get("best_epoch"),
            "best inner-val loss": info.get("best_val_loss"),
            "lesion-slice Dice": metrics.get("lesion_slice_dice"), "all-slice Dice": metrics.get("all_slice_dice"),
            "3D Dice (fold)": metrics.get("dice_3d_mean"),
            "train time (s)": info.get("train_time_s"), "stopped early": info.get("stopped_early"),
            "status": "finished" if info else "incomplete (no run.json)",
        })
        curves.append(_curves_html(r.path, work, f"{r.run} / {r.plane} / fold {r.fold}"))
    out = [
        "<p>One model per plane and outer fold (fold <i>k</i> = trained with fold <i>k</i> held out). The best epoch "
        "and checkpoint are chosen on the <b>inner</b> validation loss; the Dice columns are measured on the outer "
        "fold, which played no part in training or selection.</p>",
        table_html(pd.DataFrame(rows), left=("run", "plane", "status"), ints=("fold", "epochs", "best epoch")),
        "<h3>Training curves</h3>",
        '<div class="grid">' + "".join(curves) + "</div>",
    ]
    comparison = stage_dir(work, "train") / "comparison.png"
    out.append(figure_html(comparison, work, "Compare mode: models / losses on the same folds"))
    return "".join(out)


def _set_label(name: Any) -> str:
    return SET_LABELS.get(str(name), str(name))


def _fusion(work: Path) -> str:
    folder = stage_dir(work, "fusion")
    summary = _read_csv(folder / "summary.csv")
    if summary is None:
        return missing_html("Stage 08 has not run: no 08_fusion/summary.csv.")
    info = _read_json(folder / "fusion.json") or {}
    out = []
    folds = info.get("holdout_folds") or {}
    if folds or info:
        chosen = "; ".join(f"{p}: fold {', '.join(map(str, f))}" for p, f in folds.items())
        weights = info.get("weights") or {}
        wtext = ", ".join(f"{p} {fmt(w)}" for p, w in weights.items())
        settings = [("models used for the hold-out", chosen or "–"), ("selection", info.get("selection", "–")),
                    ("threshold", info.get("threshold")), ("flip TTA", info.get("tta")),
                    ("min lesion size (voxels)", info.get("min_size")), ("weighted fusion weights", wtext or "–")]
        out.append(table_html(pd.DataFrame(settings, columns=["setting", "value"]).astype(str),
                              left=("setting", "value")))
    for set_name, g in summary.groupby("set", sort=False):
        cols = {"method": "method", "n": "n", "n_failed": "failed"}
        view = g[[c for c in cols if c in g.columns]].rename(columns=cols)
        for metric, label in (("dice", "Dice"), ("iou", "IoU"), ("precision", "precision"), ("recall", "recall"),
                              ("lesion_f1", "lesion F1"), ("hd95_mm", "HD95 (mm)")):
            if f"{metric}_mean" in g.columns:
                sd = g.get(f"{metric}_sd", pd.Series(np.nan, index=g.index))
                view[f"{label} mean ± sd"] = [f"{fmt(float(m))} ± {fmt(float(s))}" if not pd.isna(s) else fmt(float(m))
                                              for m, s in zip(g[f"{metric}_mean"], sd)]
            if metric == "dice" and "dice_median" in g.columns:
                view["Dice median"] = g["dice_median"].to_numpy()
        out.append(f"<h3>{esc(_set_label(set_name))}</h3>" + table_html(view, left=("method",), ints=("n", "failed")))
    chosen = (_read_json(folder / "postprocessing.json") or {}).get("chosen")
    if chosen:
        out.append(
            f"<p>Post-processing chosen on the out-of-fold predictions of {fmt(chosen.get('n_subjects'))} train "
            f"subject(s), never on the hold-out: fusion <b>{esc(chosen.get('fusion'))}</b>, threshold "
            f"{fmt(chosen.get('threshold'), 2)}, lesions ≥ {fmt(chosen.get('min_lesion_mm3'), 0)} mm³"
            + (f" with a peak probability ≥ {fmt(chosen['min_peak'], 2)}" if chosen.get("min_peak") else "")
            + (f"; lesions ≥ {fmt(chosen['large_mm3'], 0)} mm³ redrawn at probability "
               f"{fmt(chosen.get('large_threshold'), 2)} (their pieces under "
               f"{fmt(chosen.get('large_fragment_mm3'), 0)} mm³ dropped)" if chosen.get("large_mm3") else "")
            + " (validation "
            f"{esc(chosen.get('metric'))} {fmt(chosen.get('score'))}); scored on the hold-out as method "
            f"<code>selected</code> — <a href=\"{href(folder / 'postprocessing.json', work)}\">postprocessing.json</a>.</p>")
    skipped = _read_csv(folder / "skipped.csv")
    if skipped is not None and not skipped.empty:
        reasons = "; ".join(f"{esc(r)} ({n})" for r, n in skipped["reason"].value_counts(sort=False).items())
        out.append(f'<p>{len(skipped)} train subject(s) not scored out of fold, by design: {reasons} — '
                   f'<a href="{href(folder / "skipped.csv", work)}">skipped.csv</a>.</p>')
    out.append('<div class="grid">'
               + figure_html(folder / "dice_boxplot.png", work, "3D Dice per subject and method")
               + figure_html(folder / "dice_by_volume_bin.png", work, "3D Dice by lesion-volume bin")
               + "</div>")
    return "".join(out)


def qc_table(work: Path) -> tuple[pd.DataFrame, str]:
    """Hold-out subjects for the QC gallery, worst first: failed ones, then by ascending Dice.

    Returns ``(rows of subject_metrics.csv for the QC method, the method)``.
    """
    folder = stage_dir(work, "fusion")
    metrics = _read_csv(folder / "subject_metrics.csv")
    if metrics is None or metrics.empty:
        return pd.DataFrame(), ""
    info = _read_json(folder / "fusion.json") or {}
    methods = list(dict.fromkeys(metrics["method"].astype(str)))
    method = str(info.get("qc_method") or DEFAULT_QC_METHOD)
    if method not in methods:
        fused = [m for m in methods if m not in ("axial", "sagittal", "coronal")]
        method = (fused or methods)[0]
    df = metrics[(metrics["method"].astype(str) == method) & (metrics["set"].astype(str) == "holdout")].copy()
    df["error"] = df["error"].fillna("").astype(str) if "error" in df.columns else ""
    df["_failed"] = df["error"] != ""
    df["_dice"] = pd.to_numeric(df.get("dice"), errors="coerce").fillna(-1.0)
    df = df.sort_values(["_failed", "_dice", "subject"], ascending=[False, True, True], kind="stable")
    return df.drop(columns=["_failed", "_dice"]).reset_index(drop=True), method


def _gallery(work: Path) -> str:
    df, method = qc_table(work)
    if df.empty:
        return missing_html("No hold-out subject scored yet (stage 08).")
    qc_dir = stage_dir(work, "fusion") / "qc"
    cards = []
    for r in df.to_dict(orient="records"):
        failed = bool(r.get("error"))
        def num(key: str, label: str, digits: int = 3, unit: str = "") -> str:
            value = r.get(key)
            if value is None or pd.isna(value):
                return ""
            return f"{label} {fmt(value if key.endswith('voxels') else float(value), digits)}{unit}"

        parts = [num("lesion_voxels", "lesion voxels"), num("pred_voxels", "predicted voxels"),
                 num("hd95_mm", "HD95", 1, " mm"), num("lesion_f1", "lesion F1"), num("precision", "precision"),
                 num("recall", "recall"), num("plane_agreement", "plane agreement")]
        if isinstance(r.get("volume_bin"), str) and r["volume_bin"]:
            parts.append(f"volume bin {r['volume_bin']} mm³")
        metrics_line = esc(" · ".join(p for p in parts if p))
        img = figure_html(qc_dir / f"{r['subject']}_qc.png", work, "", lazy=True)
        if failed:
            body = f'<p class="err">{esc(r["error"])}</p>'
        else:
            body = img or missing_html("no QC overlay")
        cards.append(f'<div class="qc" id="qc-{esc(r["subject"])}"><h3>{dice_badge(r.get("dice"), failed)} '
                     f'{esc(r["subject"])}</h3><div class="metrics">{metrics_line}</div>{body}</div>')
    n_failed = int((df["error"] != "").sum())
    intro = (f"<p>Every hold-out subject ({len(df)}; {n_failed} failed), worst first, scored with the "
             f"<b>{esc(method)}</b> fusion. Green contour: ground truth; red: prediction; three views through the "
             "lesion. Badge: 3D Dice (red &lt; 0.3 ≤ orange &lt; 0.6 ≤ green). <i>Plane agreement</i>: the share of "
             "the predicted lesion that each of the three plane models alone also calls lesion (low = the planes "
             "disagree; look closer).</p>")
    return intro + '<div class="gallery">' + "".join(cards) + "</div>"


def _logs(work: Path) -> str:
    rows = []
    for key, folder in STAGE_DIRS.items():
        path = work / folder
        if not path.is_dir():
            continue
        log_file = path / LOG_NAME
        errors = _read_csv(path / "errors.csv")
        n_err = None if errors is None else len(errors)
        page = path / REPORT_NAME
        rows.append({
            "stage": folder + (f' (<a href="{href(page, work)}">report</a>)' if page.is_file() else ""),
            "log": f'<a href="{href(log_file, work)}">{LOG_NAME}</a>' if log_file.is_file() else "–",
            "errors.csv": (f'<a href="{href(path / "errors.csv", work)}">{n_err} row(s)</a>'
                           if n_err is not None else "–"),
        })
    if not rows:
        return missing_html("No stage has run.")
    return table_html(pd.DataFrame(rows), left=("stage", "log", "errors.csv"), raw=("stage", "log", "errors.csv"))


def _overview(work: Path) -> str:
    items: list[tuple[str, Any]] = []
    summary = _read_json(stage_dir(work, "dataset") / "summary.json") or {}
    items.append(("labelled subjects", summary.get("labelled")))
    split = _read_csv(stage_dir(work, "split") / "split.csv")
    if split is not None:
        items.append(("hold-out subjects", int((split["set"] == "holdout").sum())))
    runs = training_runs(work)
    if not runs.empty:
        items.append(("trained models (plane × fold)", len(runs)))
    df, method = qc_table(work)
    if not df.empty:
        ok = df[df["error"] == ""]
        dice = pd.to_numeric(ok["dice"], errors="coerce").dropna()
        items.append((f"hold-out mean Dice ({method})", float(dice.mean()) if len(dice) else None))
        items.append(("hold-out subjects failed", int((df["error"] != "").sum())))
    return cards_html(items)


SECTIONS: list[tuple[str, str, Any]] = [
    ("dataset", "1 · Dataset", _dataset),
    ("split", "2 · Train / hold-out split", _split),
    ("folds", "3 · Cross-validation folds", _folds),
    ("models", "4 · Models", _models),
    ("training", "5 · Training", _training),
    ("fusion", "6 · Fusion and 3D evaluation", _fusion),
    ("qc", "7 · QC gallery (hold-out, worst first)", _gallery),
    ("logs", "8 · Logs and errors", _logs),
]


def build_report(work_dir: str | Path) -> str:
    """The HTML text of the run report of ``work_dir`` (sections whose stage has not run say so)."""
    work = Path(work_dir)
    body = [_overview(work)]
    for anchor, title, section in SECTIONS:
        body.append(f'<section id="{anchor}"><h2>{esc(title)}</h2>{section(work)}</section>')
    when = datetime.datetime.now().isoformat(timespec="seconds")
    subtitle = f"work directory <code>{esc(work.resolve())}</code> · generated {esc(when)}"
    nav = [(a, t.split(" · ", 1)[-1].split(" (")[0]) for a, t, _ in SECTIONS]
    return page_html(f"Run report — {work.resolve().name}", subtitle, nav, "".join(body))


def write_report(work_dir: str | Path) -> Path:
    """Write ``<work_dir>/report.html`` atomically; returns its path."""
    work = Path(work_dir)
    path = work / REPORT_NAME
    text = build_report(work)
    with atomic_path(path, suffix=".html") as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info("run report: %s", path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``raxnet report``: (re)build ``<work-dir>/report.html`` from what the stages wrote."""
    from raxnet.cli_common import resolve, stage_parser
    from raxnet.errors import StageInputError

    parser = stage_parser("Build <work-dir>/report.html (one page: dataset, split, folds, models, training "
                          "curves, fusion results, QC gallery, logs) from the stages' outputs.",
                          prog="raxnet report")
    args = parser.parse_args(argv)
    _, run = resolve(args)
    work = Path(run["work_dir"])
    if not work.is_dir():
        raise StageInputError(f"{work}: work directory not found")
    print(write_report(work))
    return 0


# ------------------------------------------------------------------------------------------ predict batch

PREDICT_SUMMARY = "summary.csv"
#: Lesion columns shown per scan in the predict report, when present in ``<name>_lesions.csv``.
_LESION_VIEW = ["label", "volume_mm3", "hemisphere", "location", "mean_probability", "plane_agreement",
                "planes_detecting"]
_LESION_HEADERS = {"label": "lesion", "volume_mm3": "mm³", "hemisphere": "side", "mean_probability": "mean p",
                   "plane_agreement": "agreement", "planes_detecting": "planes"}


def check_first(lesions: pd.DataFrame) -> pd.DataFrame:
    """Lesions in the order to check them: lowest plane agreement, then lowest mean probability, then
    largest (lesions.csv's order) when the confidence columns are absent."""
    keys = [c for c in ("plane_agreement", "mean_probability") if c in lesions.columns]
    if not keys:
        return lesions
    return lesions.sort_values(keys + ["label"] if "label" in lesions.columns else keys, kind="stable")


def _scan_card(out_dir: Path, row: Mapping[str, Any]) -> str:
    name = str(row.get("name") or Path(str(row.get("input", ""))).name)
    failed = str(row.get("status", "ok")) != "ok"
    head = (f'<h3><span class="badge {"fail" if failed else "good"}">{"failed" if failed else "ok"}</span> '
            f"{esc(name)}</h3>")
    if failed:
        return f'<div class="qc" id="scan-{esc(name)}">{head}<p class="err">{esc(row.get("error", ""))}</p></div>'
    n_lesions = row.get("n_lesions")
    bits = [f"{fmt(int(n_lesions)) if pd.notna(n_lesions) else '?'} lesion(s)",
            f"{fmt(row.get('lesion_volume_mm3'), 1)} mm³", f"{fmt(row.get('seconds'), 1)} s"]
    parts = [head, f'<div class="metrics">{esc(" · ".join(bits))}</div>',
             figure_html(out_dir / f"{name}_qc.png", out_dir, "", lazy=True)]
    unc_png = out_dir / f"{name}_uncertainty.png"
    if unc_png.is_file():
        parts.append(figure_html(unc_png, out_dir, "Plane disagreement (standard deviation of the three plane "
                                 "probabilities)", lazy=True))
    lesions = _read_csv(out_dir / f"{name}_lesions.csv")
    if lesions is not None and not lesions.empty:
        view = check_first(lesions)[[c for c in _LESION_VIEW if c in lesions.columns]]
        view = view.rename(columns=_LESION_HEADERS)
        more = len(view) - 10
        parts.append("<div class=\"metrics\">Lesions, to check first at the top (lowest plane agreement):</div>"
                     + '<div class="scroll">'
                     + table_html(view.head(10), left=("side", "location"), ints=("lesion", "planes"), digits=2)
                     + "</div>")
        if more > 0:
            parts.append(f'<p class="muted">… {more} more in <a href="{href(out_dir / f"{name}_lesions.csv", out_dir)}">'
                         f"{esc(name)}_lesions.csv</a></p>")
    return f'<div class="qc" id="scan-{esc(name)}">{"".join(parts)}</div>'


def build_predict_report(out_dir: str | Path) -> str:
    """HTML of a ``raxnet predict`` batch: its ``summary.csv`` as a table, then each scan's overlay and lesions."""
    out = Path(out_dir)
    table = _read_csv(out / PREDICT_SUMMARY)
    if table is None:
        body = missing_html(f"No {PREDICT_SUMMARY} in this folder.")
        return page_html("raxnet predict", esc(out.resolve()), [], body)
    if "status" not in table.columns:
        table["status"] = "ok"
    table["status"] = table["status"].fillna("ok").astype(str)
    n_failed = int((table["status"] != "ok").sum())
    ok = table[table["status"] == "ok"]
    cards = cards_html([
        ("scans", len(table)), ("segmented", len(ok)), ("failed", n_failed),
        ("median lesion volume (mm³)", float(pd.to_numeric(ok.get("lesion_volume_mm3"), errors="coerce").median())
         if len(ok) else None),
        ("mean time per scan (s)", float(pd.to_numeric(ok.get("seconds"), errors="coerce").mean()) if len(ok) else None),
    ])
    view = table.copy()
    view["scan"] = [f'<a href="#scan-{esc(n)}">{esc(n)}</a>' for n in view.get("name", view.get("input"))]
    cols = ["scan", "status"] + [c for c in ("n_lesions", "lesion_volume_mm3", "lesion_voxels", "seconds", "error")
                                 if c in view.columns]
    summary = table_html(view[cols], left=("scan", "status", "error"), raw=("scan",),
                         ints=("n_lesions", "lesion_voxels"), digits=2)
    order = table.assign(_f=table["status"] == "ok").sort_values("_f", kind="stable").drop(columns="_f")
    gallery = "".join(_scan_card(out, r) for r in order.to_dict(orient="records"))
    csv_link = f'<p>Table: <a href="{href(out / PREDICT_SUMMARY, out)}">{PREDICT_SUMMARY}</a>.</p>'
    body = (cards + f'<section id="scans"><h2>Scans</h2>{csv_link}{summary}</section>'
            '<section id="gallery"><h2>Overlays (failed first)</h2>'
            "<p>Red contour: the predicted lesion mask, three views through the lesion. Heat map (with "
            "<code>--save-uncertainty</code>): where the three plane models disagree. Lesion tables (columns of "
            "<code>&lt;name&gt;_lesions.csv</code>): <i>mean p</i> = <code>mean_probability</code>, the mean fused "
            "probability over the lesion; <i>agreement</i> = <code>plane_agreement</code>, the share of its voxels "
            "that every plane model alone calls lesion; <i>planes</i> = <code>planes_detecting</code>, how many "
            "plane models alone find any of it.</p>"
            f'<div class="gallery">{gallery}</div></section>')
    when = datetime.datetime.now().isoformat(timespec="seconds")
    subtitle = f"output folder <code>{esc(out.resolve())}</code> · generated {esc(when)}"
    return page_html("raxnet predict — batch report", subtitle, [("scans", "Scans"), ("gallery", "Overlays")], body)


def write_predict_report(out_dir: str | Path) -> Path:
    """Write ``<out_dir>/report.html`` for a predict batch (from ``<out_dir>/summary.csv``)."""
    out = Path(out_dir)
    path = out / REPORT_NAME
    with atomic_path(path, suffix=".html") as tmp:
        tmp.write_text(build_predict_report(out), encoding="utf-8")
    return path
