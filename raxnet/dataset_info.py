"""Stage 01 — lesion information of every labelled ATLAS subject (tables, per-slice counts, figures).

Reads the tree through :mod:`raxnet.atlas` and writes under ``<work>/01_dataset/``: ``subjects.csv``,
``slices_{axial,sagittal,coronal}.csv``, ``lesion_frequency.nii.gz``, four PNG figures, ``summary.json``
and ``errors.csv``. A subject whose files are missing/corrupt/inconsistent is logged, listed in
``errors.csv`` and skipped; the stage fails (InputError) only when no subject could be processed.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from raxnet import lesions, record
from raxnet.atlas import discover
from raxnet.cli_common import resolve, stage_parser
from raxnet.components import LESION_CONNECTIVITY, SLICE_CONNECTIVITY
from raxnet.config import section, stage_dir, with_flags
from raxnet.errors import EXIT_SOME_FAILED, InputError
from raxnet.io import check_same_grid, read_mask, read_t1, save_csv, save_figure, save_json, save_nifti, voxel_spacing
from raxnet.log import get_logger, progress
from raxnet.planes import PLANES
from raxnet.stage import stage_run

log = get_logger(__name__)

DEFAULTS: dict[str, Any] = {
    "connectivity": LESION_CONNECTIVITY,  # 3D lesion components: 6, 18 or 26 (raxnet.components)
    "slice_connectivity": SLICE_CONNECTIVITY,  # 2D components per slice: 4 or 8
    "brain_source": "auto",  # brain_pixels from: auto (template on ATLAS grid, else T1), template, t1
    "brain_threshold": 0.05,  # T1 foreground: voxels > this fraction of the T1's 99th percentile
    "gm_min": lesions.GM_MIN,  # cortical zone: GM probability at least this (and GM >= WM)
    "span_fraction": lesions.SPAN_FRACTION,  # component is 'both' if each zone holds > this share
    "bilateral_fraction": lesions.BILATERAL_FRACTION,  # 'bilateral' if the minority side holds >= this share
    "dpi": 110,  # figure resolution
}

SUBJECT_COLUMNS = [
    "subject", "site", "t1_path", "mask_path", "lesion_voxels", "lesion_volume_mm3", "n_lesions",
    "largest_lesion_voxels", "lesion_sizes", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "hemisphere", "location", "shape", "spacing_mm",
]  # fmt: skip
SLICE_COLUMNS = ["subject", "slice", "lesion_pixels", "n_lesions", "brain_pixels"]
ERROR_COLUMNS = ["subject", "file", "error"]
#: Lesion-volume bins (mm³) of the volume-distribution figure: <1 ml, 1-10, 10-50, 50-100, >=100 ml.
VOLUME_BINS_MM3 = (0, 1_000, 10_000, 50_000, 100_000, np.inf)

# Settings of the running stage, set before the worker pool forks (workers inherit them).
_SETTINGS: dict[str, Any] = dict(DEFAULTS)


def _brain_mask(t1: np.ndarray, affine: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
    """Brain voxels for ``brain_pixels``: template brain mask on the ATLAS grid, else T1 foreground."""
    from raxnet import templates

    source = settings["brain_source"]
    spacing = lesions.atlas_spacing(t1.shape, affine)
    on_grid = spacing is not None
    if source == "template" or (source == "auto" and on_grid):
        if not on_grid:
            return lesions.location_reference(t1.shape, affine, settings["gm_min"]).brain
        return templates.template_data("brain_mask", spacing) > 0
    if source not in ("auto", "t1"):
        raise ValueError(f"brain_source must be auto, template or t1, got {source!r}")
    positive = t1[t1 > 0]
    if positive.size == 0:
        return np.zeros(t1.shape, dtype=bool)
    return t1 > settings["brain_threshold"] * float(np.percentile(positive, 99))


def load_subject(row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and validate one subject: ``(t1, mask, affine)``; InputError names the bad file.

    Refused besides unreadable files: an empty T1w (no contrast), a mask on another grid, and a pair
    whose head lies outside MNI152 space (shifted or not registered).
    """
    from raxnet.templates import check_mni_position

    t1_path, mask_path = row["t1_path"], row.get("mask_path")
    if mask_path is None or (isinstance(mask_path, float) and np.isnan(mask_path)):
        raise InputError(f"{t1_path}: no lesion mask beside this T1w image")
    t1, t1_img = read_t1(t1_path)
    mask, mask_img = read_mask(mask_path)
    check_same_grid(t1_img, mask_img, t1_path, mask_path)
    check_mni_position(t1, t1_img.affine, t1_path)
    return t1, mask, np.asarray(t1_img.affine, dtype=float)


def process_subject(
    row: Mapping[str, Any], settings: Mapping[str, Any] | None = None, *, return_mask: bool = False
) -> tuple[dict[str, Any], dict[str, pd.DataFrame]] | tuple[dict[str, Any], dict[str, pd.DataFrame], np.ndarray]:
    """Lesion statistics of one subject: ``(subject_row, {plane: slices_df})``.

    ``row`` holds ``subject, site, t1_path, mask_path`` (a row of :func:`raxnet.atlas.discover`).
    Raises InputError (naming the file) for missing/corrupt/4D/NaN images, a non-binary mask or T1 and
    mask on different grids. ``return_mask`` appends the 0/1 mask (for the frequency map).
    """
    settings = dict(DEFAULTS if settings is None else settings)
    t1, mask, affine = load_subject(row)
    stats = lesions.subject_lesion_stats(
        mask,
        affine,
        connectivity=settings["connectivity"],
        gm_min=settings["gm_min"],
        span_fraction=settings["span_fraction"],
        bilateral_fraction=settings["bilateral_fraction"],
    )
    zooms = np.asarray(voxel_spacing(affine))
    subject_row = {
        "subject": row["subject"],
        "site": row["site"],
        "t1_path": _relative(row["t1_path"], row.get("data_root")),
        "mask_path": _relative(row["mask_path"], row.get("data_root")),
        **stats,
        "shape": "x".join(str(s) for s in mask.shape),
        "spacing_mm": "x".join(f"{z:g}" for z in np.round(zooms, 4)),
    }
    brain = _brain_mask(t1, affine, settings)
    planes = {
        p: lesions.slice_stats(mask, p, brain, settings["slice_connectivity"]).assign(subject=row["subject"])[
            SLICE_COLUMNS
        ]
        for p in PLANES
    }
    if return_mask:
        return subject_row, planes, mask
    return subject_row, planes


def _relative(path: Any, data_root: Any) -> str:
    """A path as stored in ``subjects.csv``: relative to the data root (so ``--data-root`` moves a dataset)."""
    path = Path(str(path))
    if data_root is not None:
        try:
            return path.resolve().relative_to(Path(data_root).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def _error_file(message: str, row: Mapping[str, Any]) -> str:
    for key in ("mask_path", "t1_path"):
        path = row.get(key)
        if path and message.startswith(str(path)):
            return str(path)
    return str(row.get("t1_path", ""))


def _work(row: dict[str, Any]) -> tuple[str, Any]:
    try:
        result = process_subject(row, _SETTINGS, return_mask=True)
        # Fingerprints of the files read, so later stages notice a dataset rewritten under them.
        images = {kind: {"path": result[0][f"{kind}_path"], **record.file_identity(row[f"{kind}_path"])}
                  for kind in ("t1", "mask")}
        return "ok", (*result, images)
    except InputError as exc:
        return "error", {"subject": row["subject"], "file": _error_file(str(exc), row), "error": str(exc)}


def _map(rows: list[dict[str, Any]], jobs: int):
    """Yield results in input order; a forked pool shares the cached templates with the workers."""
    if jobs <= 1 or len(rows) <= 1:
        yield from map(_work, rows)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    with ctx.Pool(min(jobs, len(rows))) as pool:
        yield from pool.imap(_work, rows, chunksize=1)


@stage_run("dataset")
def run(cfg: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """Stage 01 on ``run['data_root']``: write the tables and figures; return paths and counts."""
    global _SETTINGS
    rec = record.begin("dataset", cfg, run)
    cfg, run = rec.cfg, rec.run
    settings = section(cfg, "dataset", DEFAULTS)
    data_root = Path(run["data_root"])
    out = stage_dir(run["work_dir"], "dataset", create=True)
    found = discover(data_root)
    labelled = found[found["labelled"]]
    log.info("%s: %d subjects found, %d labelled", data_root, len(found), len(labelled))
    if labelled.empty:
        raise InputError(f"{data_root}: no labelled subject (T1w with a lesion mask) found")
    rows = [{**r, "data_root": str(data_root)} for r in labelled.to_dict("records")]

    _SETTINGS = dict(settings)
    subject_rows: list[dict[str, Any]] = []
    slices: dict[str, list[pd.DataFrame]] = {p: [] for p in PLANES}
    errors: list[dict[str, str]] = []
    freq: np.ndarray | None = None
    freq_grid: tuple | None = None
    images: dict[str, dict[str, Any]] = {}
    jobs = int(run.get("jobs") or 1)
    if jobs > 1:  # build the location reference once in the parent: forked workers inherit it
        _warm_reference(rows[0])
    for status, result in progress(_map(rows, jobs), total=len(rows), desc="01 lesion info", unit="subject"):
        if status == "error":
            log.warning("skipping %s: %s", result["subject"], result["error"])
            errors.append(result)
            continue
        subject_row, planes, mask, images[subject_row["subject"]] = result
        subject_rows.append(subject_row)
        for p in PLANES:
            slices[p].append(planes[p])
        if freq is None:
            freq, freq_grid = mask.astype(np.int32), (mask.shape, data_root / subject_row["t1_path"])
        elif mask.shape == freq.shape:
            freq += mask

    errors_df = pd.DataFrame(errors, columns=ERROR_COLUMNS).sort_values("subject", kind="stable")
    paths: dict[str, Path] = {"errors": save_csv(errors_df, out / "errors.csv")}
    if not subject_rows:
        raise InputError(f"{data_root}: none of the {len(rows)} labelled subjects could be processed "
                         f"(see {out / 'errors.csv'})")

    subjects = pd.DataFrame(subject_rows, columns=SUBJECT_COLUMNS)
    paths["subjects"] = save_csv(subjects, out / "subjects.csv")
    for p in PLANES:
        paths[f"slices_{p}"] = save_csv(pd.concat(slices[p], ignore_index=True), out / f"slices_{p}.csv")

    ref_img, n_freq = None, 0
    if freq is not None and freq_grid is not None:
        from raxnet.io import load_nifti

        ref_img = load_nifti(freq_grid[1])
        n_freq = int(sum(1 for r in subject_rows if r["shape"] == "x".join(map(str, freq.shape))))
        paths["lesion_frequency"] = save_nifti(freq, ref_img, out / "lesion_frequency.nii.gz", dtype=np.int16)
    summary = _summary(found, subjects, errors_df, n_freq)
    summary["data_root"] = str(data_root)
    # the lesion definitions the tables were counted with (raxnet.components)
    summary["connectivity"] = int(settings["connectivity"])
    summary["slice_connectivity"] = int(settings["slice_connectivity"])
    paths["summary"] = save_json(summary, out / "summary.json")
    paths.update(make_figures(subjects, {p: pd.read_csv(paths[f"slices_{p}"]) for p in PLANES}, freq, ref_img,
                              n_freq, out, dpi=settings["dpi"]))
    log.info("%d processed, %d errors -> %s", len(subjects), len(errors_df), out)
    rec.finish([paths["subjects"], paths["errors"], *(paths[f"slices_{p}"] for p in PLANES)], images=images)
    return {"out_dir": out, "paths": paths, **{k: summary[k] for k in ("found", "labelled", "processed", "errors")}}


def _warm_reference(row: Mapping[str, Any]) -> None:
    """Build the location reference for the first subject's grid before forking (shared by workers)."""
    try:
        from raxnet.io import load_nifti

        img = load_nifti(row["mask_path"])
        lesions.location_reference(img.shape[:3], img.affine, _SETTINGS["gm_min"])
    except Exception:  # a bad first subject is reported by its own worker
        pass


def _summary(found: pd.DataFrame, subjects: pd.DataFrame, errors: pd.DataFrame, n_freq: int) -> dict[str, Any]:
    vol = subjects["lesion_volume_mm3"].astype(float)
    q = {f"q{int(k * 100):02d}": round(float(vol.quantile(k)), 3) for k in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)}
    return {
        "found": int(len(found)),
        "labelled": int(found["labelled"].sum()),
        "unlabelled": int((~found["labelled"]).sum()),
        "processed": int(len(subjects)),
        "errors": int(len(errors)),
        "parts": {k: int(v) for k, v in found["part"].value_counts().sort_index().items()},
        "sites": int(subjects["site"].nunique()),
        "lesion_volume_mm3": {**q, "mean": round(float(vol.mean()), 3)},
        "n_lesions_median": float(subjects["n_lesions"].median()),
        "location_counts": {k: int(v) for k, v in subjects["location"].value_counts().sort_index().items()},
        "hemisphere_counts": {k: int(v) for k, v in subjects["hemisphere"].value_counts().sort_index().items()},
        "frequency_map_subjects": n_freq,
    }


# --------------------------------------------------------------------------------------------- figures
def make_figures(
    subjects: pd.DataFrame,
    slices: Mapping[str, pd.DataFrame],
    freq: np.ndarray | None,
    ref_img: Any,
    n_freq: int,
    out: Path,
    dpi: int = 110,
) -> dict[str, Path]:
    """The four stage-01 figures (PNG) under ``out``; returns their paths."""
    from raxnet.plotting import plt

    paths: dict[str, Path] = {}
    vol = subjects["lesion_volume_mm3"].astype(float).to_numpy()

    # 1. lesion volume distribution
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    positive = vol[vol > 0]
    if positive.size:
        lo, hi = np.log10(max(positive.min(), 1e-3)), np.log10(positive.max())
        bins = np.logspace(lo, hi if hi > lo else lo + 1, 30)
        axes[0].hist(positive, bins=bins, color="tab:red", edgecolor="black", linewidth=0.4)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("lesion volume (mm³, log scale)")
    axes[0].set_ylabel("subjects")
    axes[0].set_title(f"Lesion volume, {len(vol)} subjects (median {np.median(vol):,.0f} mm³)")
    labels = ["<1 ml", "1–10 ml", "10–50 ml", "50–100 ml", "≥100 ml"]
    counts = pd.cut(pd.Series(vol), VOLUME_BINS_MM3, right=False, labels=labels).value_counts().reindex(labels)
    bars = axes[1].bar(labels, counts.to_numpy(), color="tab:blue")
    axes[1].bar_label(bars)
    axes[1].set_xlabel("lesion volume bin (ml = 1,000 mm³)")
    axes[1].set_ylabel("subjects")
    axes[1].set_title("Subjects per lesion-volume bin")
    paths["fig_volume"] = save_figure(fig, out / "lesion_volume_distribution.png", dpi=dpi)

    # 2. per-slice lesion area per plane
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4), layout="constrained")
    for ax, plane in zip(axes, PLANES):
        df = slices[plane]
        area = df.loc[df["lesion_pixels"] > 0, "lesion_pixels"].to_numpy(dtype=float)
        if area.size:
            bins = np.logspace(0, np.log10(max(area.max(), 2)), 30)
            ax.hist(area, bins=bins, color="tab:purple", edgecolor="black", linewidth=0.4)
        ax.set_xscale("log")
        ax.set_xlabel("lesion pixels per slice (log scale)")
        ax.set_ylabel("slices")
        ax.set_title(f"{plane}: {area.size:,} of {len(df):,} slices with lesion")
    fig.suptitle("Per-slice lesion area (lesion-free slices not shown)")
    paths["fig_area"] = save_figure(fig, out / "lesion_area_per_plane.png", dpi=dpi)

    # 3. location x hemisphere
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    loc_order = [k for k in ("cortical", "subcortical", "both", "outside", "none", "n/a") if k in set(subjects["location"])]
    hemi_order = [k for k in ("left", "right", "bilateral", "midline", "none") if k in set(subjects["hemisphere"])]
    loc_counts = subjects["location"].value_counts().reindex(loc_order, fill_value=0)
    bars = axes[0].bar(loc_counts.index, loc_counts.to_numpy(), color="tab:green")
    axes[0].bar_label(bars)
    axes[0].set_xlabel("lesion location")
    axes[0].set_ylabel("subjects")
    axes[0].set_title("Location (MNI152 GM map + Seitzman 2020 ROI labels)")
    table = pd.crosstab(subjects["location"], subjects["hemisphere"]).reindex(
        index=loc_order, columns=hemi_order, fill_value=0
    )
    bottom = np.zeros(len(loc_order))
    for hemi in hemi_order:
        axes[1].bar(loc_order, table[hemi].to_numpy(), bottom=bottom, label=hemi)
        bottom += table[hemi].to_numpy()
    axes[1].legend(title="hemisphere")
    axes[1].set_xlabel("lesion location")
    axes[1].set_ylabel("subjects")
    axes[1].set_title("Location by hemisphere")
    paths["fig_location"] = save_figure(fig, out / "lesion_location.png", dpi=dpi)

    # 4. lesion frequency map over the template
    if freq is not None and ref_img is not None:
        paths["fig_frequency"] = _frequency_figure(freq, ref_img, n_freq, out / "lesion_frequency.png", dpi)
    return paths


def _frequency_figure(freq: np.ndarray, ref_img: Any, n: int, path: Path, dpi: int) -> Path:
    from raxnet import templates
    from raxnet.plotting import plt

    affine = ref_img.affine
    spacing = lesions.atlas_spacing(freq.shape, affine)
    background = (
        np.asarray(templates.template_data("t1", spacing))
        if spacing is not None
        else np.zeros(freq.shape, dtype=np.float32)
    )
    # Cut through the most frequently lesioned voxel (the centre of the volume if there is no lesion).
    peak = np.unravel_index(int(np.argmax(freq)), freq.shape) if freq.max() > 0 else tuple(s // 2 for s in freq.shape)
    peak_mm = affine[:3, :3] @ np.asarray(peak, dtype=float) + affine[:3, 3]
    pct = 100.0 * freq / max(n, 1)
    vmax = max(float(pct.max()), 1e-6)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), layout="constrained")
    cuts = [("sagittal", 0, "x"), ("coronal", 1, "y"), ("axial", 2, "z")]
    im = None
    for ax, (plane, axis, name) in zip(axes, cuts):
        bg = np.take(background, peak[axis], axis=axis).T
        fg = np.take(pct, peak[axis], axis=axis).T
        ax.imshow(bg, cmap="gray", origin="lower")
        im = ax.imshow(np.ma.masked_less_equal(fg, 0), cmap="hot", origin="lower", vmin=0, vmax=vmax, alpha=0.85)
        ax.set_title(f"{plane}, {name} = {peak_mm[axis]:.0f} mm")
        other = [a for a in range(3) if a != axis]
        ax.set_xlabel(f"array axis {other[0]} ({'xyz'[other[0]]}, voxels)")
        ax.set_ylabel(f"array axis {other[1]} ({'xyz'[other[1]]}, voxels)")
    fig.colorbar(im, ax=axes, shrink=0.8, label="% of subjects lesioned")
    fig.suptitle(f"Lesion frequency over {n} subjects (cuts through the peak voxel, max {vmax:.0f}%)")
    return save_figure(fig, path, dpi=dpi)


# --------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python 01_dataset/extract_lesion_info.py --data-root data/ATLAS_2 --work-dir work/demo``."""
    parser = stage_parser(
        description=(
            "Stage 01: lesion statistics of every labelled ATLAS v2.0 subject.\n"
            "Writes <work-dir>/01_dataset/: subjects.csv, slices_{axial,sagittal,coronal}.csv, "
            "lesion_frequency.nii.gz,\nlesion_*.png figures, summary.json and errors.csv."
        ),
        data_root=True,
    )
    parser.add_argument("--connectivity", type=int, choices=(6, 18, 26), help="3D component connectivity")
    args = parser.parse_args(argv)
    cfg, run_cfg = resolve(args)
    result = run(with_flags(cfg, "dataset", connectivity=args.connectivity), run_cfg)
    print(f"{result['processed']} subjects processed, {result['errors']} errors -> {result['out_dir']}")
    if result["errors"]:
        print(f"{result['errors']} subject(s) failed, listed in {result['paths']['errors']} (exit code 1)")
        return EXIT_SOME_FAILED
    return 0
