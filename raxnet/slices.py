"""Stage 03: normalised 3D volumes -> one memory-mappable 2D slice stack per subject and plane.

For every subject of the split (``train``; with ``include_holdout`` also ``holdout``) the T1w volume is
read, checked against its lesion mask's grid, passed through the brain-mask step (voxels farther than
``brain_mask_mm`` from the MNI152 brain mask set to 0; :mod:`raxnet.brainmask`) and normalised with
:func:`raxnet.intensity.normalise` -- :func:`raxnet.brainmask.prepare`, the same call inference makes --
and written once per plane as

* ``<stage>/<plane>/<subject>_image.npy`` -- float16, shape ``(n_slices, H, W)`` =
  ``raxnet.planes.to_slices(volume, plane)``, C-contiguous, so slice ``i`` is one contiguous read;
* ``<stage>/<plane>/<subject>_mask.npy`` -- uint8 0/1, same shape.

Two ``.npy`` files per subject and plane (not one file per slice) keep the file count small; both open
with ``np.load(path, mmap_mode="r")`` so later stages read single slices without loading volumes.
``index.csv`` lists every stack (paths relative to the stage folder); ``convert.json`` records the
brain-mask setting (stage 08 and the weight export read it). Re-running skips subjects whose stacks
already exist with the right shape and dtype, and redoes any that are missing or corrupt, or all of
them when the brain-mask setting changed.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from raxnet.cli_common import resolve, stage_parser
from raxnet.config import STAGE_DIRS, override, section, stage_dir
from raxnet.brainmask import DEFAULT_DILATION_MM, check_setting, prepare, read_record, write_record
from raxnet.errors import ConfigError, InputError, StageInputError
from raxnet.io import check_same_grid, load_nifti, read_mask, read_volume, save_csv, save_npy
from raxnet.log import get_logger, progress
from raxnet.planes import PLANE_AXIS, PLANES, from_slices, parse_planes, slice_shape, to_slices
from raxnet.runs import resolve_data_path
from raxnet.stage import stage_run

log = get_logger(__name__)

#: ``[convert]`` section of the run configuration.
DEFAULTS: dict[str, Any] = {
    "planes": "all",  # planes to write: "all" or a comma list such as "axial,coronal"
    "include_holdout": False,  # also convert the hold-out subjects (needed by stage 08 / evaluation)
    "brain_mask": True,  # zero everything farther than brain_mask_mm from the MNI152 brain mask (whole-head scans)
    "brain_mask_mm": DEFAULT_DILATION_MM,  # dilation of the brain mask (mm)
}

IMAGE_DTYPE = np.float16
MASK_DTYPE = np.uint8
INDEX_COLUMNS = ["subject", "set", "plane", "n_slices", "height", "width", "image_path", "mask_path"]
ERROR_COLUMNS = ["subject", "error"]


def brain_mask_setting(opts: dict[str, Any]) -> float | None:
    """The ``[convert]`` brain-mask step as a dilation in mm, or None when it is off."""
    if not opts["brain_mask"]:
        return None
    try:
        return check_setting(opts["brain_mask_mm"], "[convert] brain_mask_mm")
    except InputError as exc:
        raise ConfigError(str(exc)) from None


def stack_paths(stage: Path, subject: str, plane: str) -> tuple[Path, Path]:
    """``(image, mask)`` stack paths of ``subject`` and ``plane`` under the stage folder."""
    return stage / plane / f"{subject}_image.npy", stage / plane / f"{subject}_mask.npy"


def _stack_ok(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """True when ``path`` is a readable .npy of exactly ``shape``/``dtype`` with all its bytes present."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):  # missing, truncated header, data shorter than header says
        return False
    ok = arr.shape == tuple(shape) and arr.dtype == np.dtype(dtype) and arr.flags.c_contiguous
    del arr
    return ok


def expected_shapes(volume_shape: tuple[int, ...], planes: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """Stack shape ``(n_slices, H, W)`` of each plane for a volume of ``volume_shape``."""
    return {p: (int(volume_shape[PLANE_AXIS[p]]), *slice_shape(volume_shape, p)) for p in planes}


def _is_done(stage: Path, subject: str, t1_path: Path, planes: Sequence[str]) -> bool:
    try:
        shape = tuple(int(s) for s in load_nifti(t1_path).shape[:3])
    except InputError:
        return False  # let the conversion report the bad file
    for plane, exp in expected_shapes(shape, planes).items():
        img, msk = stack_paths(stage, subject, plane)
        if not (_stack_ok(img, exp, IMAGE_DTYPE) and _stack_ok(msk, exp, MASK_DTYPE)):
            return False
    return True


def convert_subject(subject: str, t1_path: str | Path, mask_path: str | Path, stage: str | Path,
                    planes: Sequence[str] = PLANES,
                    brain_mask_mm: float | None = None) -> dict[str, tuple[int, int, int]]:
    """Read, validate and normalise one subject and write its stacks; returns ``{plane: stack shape}``.

    Raises :class:`InputError` (message names the file) for a missing/corrupt/4D/NaN image, a non-binary
    mask or a mask on another grid; nothing is written for that subject then.
    """
    stage = Path(stage)
    t1, t1_img = read_volume(t1_path)
    mask, mask_img = read_mask(mask_path)
    check_same_grid(t1_img, mask_img, t1_path, mask_path)
    norm = prepare(t1, t1_img.affine, brain_mask_mm, source=str(t1_path))
    shapes = {}
    for plane in planes:
        img_path, msk_path = stack_paths(stage, subject, plane)
        # ascontiguousarray: the moved-axis view is strided; the stored stack must be slice-contiguous.
        save_npy(np.ascontiguousarray(to_slices(norm, plane), dtype=IMAGE_DTYPE), img_path)
        save_npy(np.ascontiguousarray(to_slices(mask, plane), dtype=MASK_DTYPE), msk_path)
        shapes[plane] = tuple(int(s) for s in to_slices(mask, plane).shape)
    return shapes


def _worker(task: tuple[str, str, str, str, tuple[str, ...], float | None]) -> tuple[str, dict | None, str | None]:
    subject, t1, msk, stage, planes, brain_mask_mm = task
    try:
        return subject, convert_subject(subject, t1, msk, stage, planes, brain_mask_mm), None
    except InputError as exc:
        return subject, None, str(exc)


def _resolve_path(value: Any, data_root: Path, subject: str, column: str) -> Path:
    path = resolve_data_path(value, data_root)
    if path is None:
        raise InputError(f"subjects.csv: subject {subject} has no {column}")
    return path


def _subjects_table(work: Path, data_root: Path, include_holdout: bool) -> pd.DataFrame:
    split_csv = stage_dir(work, "split") / "split.csv"
    subjects_csv = stage_dir(work, "dataset") / "subjects.csv"
    for path in (split_csv, subjects_csv):
        if not path.is_file():
            raise StageInputError(f"{path}: not found (run the earlier stages first)")
    split = pd.read_csv(split_csv, dtype={"subject": str})
    subjects = pd.read_csv(subjects_csv, dtype={"subject": str})
    for name, df, cols in ((split_csv, split, ["subject", "set"]),
                           (subjects_csv, subjects, ["subject", "t1_path", "mask_path"])):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise StageInputError(f"{name}: missing column(s) {', '.join(missing)}")
    sets = ["train", "holdout"] if include_holdout else ["train"]
    table = split.loc[split["set"].isin(sets), ["subject", "set"]].merge(
        subjects[["subject", "t1_path", "mask_path"]], on="subject", how="left"
    )
    return table.sort_values("subject", kind="stable").reset_index(drop=True)


def convert(cfg: dict, run: dict, include_holdout: bool | None = None) -> pd.DataFrame:
    """Convert the split's subjects into plane stacks; returns the index table (also ``index.csv``).

    Subjects already converted (stacks present, right shape/dtype) are skipped; bad subjects are
    logged, listed in ``errors.csv`` and left out of the index while the rest go on.
    """
    opts = section(cfg, "convert", DEFAULTS)
    if include_holdout is None:
        include_holdout = bool(opts["include_holdout"])
    planes = tuple(parse_planes(opts["planes"]))
    work = Path(run["work_dir"])
    data_root = Path(run["data_root"])
    stage = stage_dir(work, "convert", create=True)
    table = _subjects_table(work, data_root, include_holdout)
    brain_mask_mm = brain_mask_setting(opts)
    recorded, before = read_record(stage)
    redo_all = recorded and before != brain_mask_mm
    if redo_all:
        log.info("brain-mask setting changed (%s -> %s mm): converting every subject again", before, brain_mask_mm)

    errors: dict[str, str] = {}
    tasks, done = [], []
    for row in table.itertuples(index=False):
        try:
            t1 = _resolve_path(row.t1_path, data_root, row.subject, "t1_path")
            msk = _resolve_path(row.mask_path, data_root, row.subject, "mask_path")
        except InputError as exc:
            errors[row.subject] = str(exc)
            continue
        if not redo_all and _is_done(stage, row.subject, t1, planes):
            done.append(row.subject)
        else:
            tasks.append((row.subject, str(t1), str(msk), str(stage), planes, brain_mask_mm))
    if done:
        log.info("%d subject(s) already converted, skipped", len(done))

    jobs = max(1, int(run.get("jobs") or 1))
    shapes: dict[str, dict] = {}
    if tasks:
        if jobs > 1 and len(tasks) > 1:
            with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
                results = list(progress(pool.map(_worker, tasks), total=len(tasks), desc="03 convert", unit="subj"))
        else:
            results = [_worker(t) for t in progress(tasks, desc="03 convert", unit="subj")]
        for subject, shp, err in results:
            if err is not None:
                log.warning("skipping %s: %s", subject, err)
                errors[subject] = err
            else:
                shapes[subject] = shp

    rows = []
    for row in table.itertuples(index=False):
        if row.subject in errors:
            continue
        for plane in planes:
            img, msk = stack_paths(stage, row.subject, plane)
            if row.subject in shapes:
                n, h, w = shapes[row.subject][plane]
            else:  # skipped as already done: read the shape from the stored header
                n, h, w = np.load(img, mmap_mode="r").shape
            rows.append({
                "subject": row.subject, "set": row.set, "plane": plane, "n_slices": n, "height": h,
                "width": w, "image_path": img.relative_to(stage).as_posix(),
                "mask_path": msk.relative_to(stage).as_posix(),
            })
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    save_csv(index, stage / "index.csv")
    write_record(stage, brain_mask_mm)
    err_df = pd.DataFrame(sorted(errors.items()), columns=ERROR_COLUMNS)
    save_csv(err_df, stage / "errors.csv")
    log.info("converted %d subject(s) (%d skipped as done, %d error(s)) -> %s",
             len(shapes), len(done), len(errors), stage)
    return index


def _stage_of(path: str | Path) -> Path:
    """Accept a work directory or the stage-03 folder itself."""
    path = Path(path)
    if path.name == STAGE_DIRS["convert"] or (path / "index.csv").is_file():
        return path
    return stage_dir(path, "convert")


def open_stack(stage_dir_or_work: str | Path, subject: str, plane: str) -> tuple[np.memmap, np.memmap]:
    """Memory-mapped, read-only ``(image, mask)`` stacks of one subject and plane (nothing is loaded)."""
    stage = _stage_of(stage_dir_or_work)
    img_path, msk_path = stack_paths(stage, subject, plane)
    out = []
    for path in (img_path, msk_path):
        try:
            out.append(np.load(path, mmap_mode="r"))
        except FileNotFoundError:
            raise StageInputError(f"{path}: not found (run stage 03 for {subject})") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot memory-map stack ({exc})") from None
    if out[0].shape != out[1].shape:
        raise InputError(f"{msk_path}: shape {out[1].shape} does not match {img_path} {out[0].shape}")
    return out[0], out[1]


def load_volume_from_stacks(stage_dir_or_work: str | Path, subject: str,
                            plane: str = "axial") -> tuple[np.ndarray, np.ndarray]:
    """Restack one plane's slices into the normalised volume (float32) and its mask (uint8)."""
    image, mask = open_stack(stage_dir_or_work, subject, plane)
    return (np.ascontiguousarray(from_slices(np.asarray(image, dtype=np.float32), plane)),
            np.ascontiguousarray(from_slices(np.asarray(mask), plane)))


@stage_run("convert")
def run(cfg: dict, run: dict, include_holdout: bool | None = None) -> dict[str, Any]:
    """Stage 03 entry point used by the CLI and the demo pipeline; returns a small summary."""
    index = convert(cfg, run, include_holdout=include_holdout)
    stage = stage_dir(run["work_dir"], "convert")
    n_err = len(pd.read_csv(stage / "errors.csv"))
    return {"index": str(stage / "index.csv"), "errors": str(stage / "errors.csv"),
            "subjects": int(index["subject"].nunique()), "stacks": int(len(index)), "n_errors": n_err}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``03_moving_converting/convert_to_2d.py --work-dir W [--all] [--jobs J]``."""
    parser = stage_parser(
        description=__doc__.split("\n\n")[0] + "\n\nReads 02_data_splitting/split.csv and "
        "01_dataset/subjects.csv; writes 03_moving_converting/<plane>/<subject>_{image,mask}.npy, "
        "index.csv and errors.csv.",
        data_root=True,
    )
    parser.add_argument("--all", action="store_true", help="also convert the hold-out subjects")
    parser.add_argument("--planes", help="'all' (default) or a comma list, e.g. axial,coronal")
    parser.add_argument("--brain-mask", action=argparse.BooleanOptionalAction, default=None,
                        help="zero everything farther than --brain-mask-mm from the MNI152 brain mask (default on)")
    parser.add_argument("--brain-mask-mm", type=float, help=f"brain-mask dilation in mm (default {DEFAULT_DILATION_MM:g})")
    args = parser.parse_args(argv)
    cfg, run_cfg = resolve(args)
    conv = section(cfg, "convert", DEFAULTS)
    override(conv, planes=args.planes, include_holdout=True if args.all else None, brain_mask=args.brain_mask,
             brain_mask_mm=args.brain_mask_mm)
    cfg = {**cfg, "convert": conv}
    summary = run(cfg, run_cfg)
    print(f"{summary['subjects']} subject(s), {summary['stacks']} stack pair(s) in {summary['index']}; "
          f"{summary['n_errors']} error(s)")
    return 1 if summary["subjects"] == 0 and summary["n_errors"] > 0 else 0


__all__ = ["DEFAULTS", "brain_mask_setting", "convert", "convert_subject", "open_stack", "load_volume_from_stacks", "run", "main",
           "stack_paths", "expected_shapes"]
