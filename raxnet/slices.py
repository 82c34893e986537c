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
``index.csv`` lists every stack (paths relative to the stage folder) and the ``source`` digest of what
it was made from; ``convert.json`` records the brain-mask setting (stage 08 and the weight export read
it). ``sources/<subject>.json`` records what each subject's stacks were made from: the SHA-256 of its
T1w and mask, the planes, the brain-mask setting. Re-running skips a subject only when that record
matches the images stage 01 read and the current settings and its stacks exist with the right shape,
dtype and size, and rebuilds it otherwise (a regenerated dataset, another brain-mask setting, an
interrupted or corrupt conversion). Image paths in ``subjects.csv`` are relative to ``--data-root``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from raxnet import record
from raxnet.brainmask import DEFAULT_DILATION_MM, check_setting, prepare, write_record
from raxnet.cli_common import resolve, stage_parser
from raxnet.config import STAGE_DIRS, section, stage_dir, with_flags
from raxnet.errors import EXIT_SOME_FAILED, ConfigError, InputError, StageInputError
from raxnet.io import atomic_path, check_same_grid, load_nifti, read_mask, read_t1, save_csv, save_npy
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
    "bias_correct": False,  # ANTs N4 bias-field correction after the brain mask (raxnet.intensity.n4_correct)
}

IMAGE_DTYPE = np.float16
MASK_DTYPE = np.uint8
INDEX_COLUMNS = ["subject", "set", "plane", "n_slices", "height", "width", "image_path", "mask_path", "source"]
#: Bumped when the conversion itself changes, so stacks made by an older version are rebuilt.
CONVERSION_VERSION = 1
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


def check_stack(path: str | Path, shape: Sequence[int], dtype: Any) -> None:
    """Refuse (StageInputError naming the file and what to do) a stack that is missing, truncated,
    unreadable or not of ``shape``/``dtype``, before a later stage trips over it."""
    from raxnet.tables import rerun_hint

    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise StageInputError(f"{path}: slice stack not found; {rerun_hint('convert')}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise StageInputError(f"{path}: truncated or unreadable slice stack ({type(exc).__name__}: {exc}); "
                              f"{rerun_hint('convert')}") from None
    if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
        raise StageInputError(f"{path}: a {arr.dtype} stack of shape {arr.shape}, index.csv says {np.dtype(dtype)} "
                              f"{tuple(shape)}; {rerun_hint('convert')}")
    del arr


def expected_shapes(volume_shape: tuple[int, ...], planes: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """Stack shape ``(n_slices, H, W)`` of each plane for a volume of ``volume_shape``."""
    return {p: (int(volume_shape[PLANE_AXIS[p]]), *slice_shape(volume_shape, p)) for p in planes}


def source_path(stage: Path, subject: str) -> Path:
    """``sources/<subject>.json``: what the subject's stacks were made from."""
    return Path(stage) / "sources" / f"{subject}.json"


def source_digest(source: dict[str, Any]) -> str:
    """Short digest of a source record (the ``source`` column of ``index.csv``)."""
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]


def _is_done(stage: Path, subject: str, t1_path: Path, planes: Sequence[str], source: dict[str, Any]) -> bool:
    try:
        made_from = json.loads(source_path(stage, subject).read_text())
    except (OSError, ValueError):
        return False
    if made_from != source:
        return False
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
                    brain_mask_mm: float | None = None, bias_correct: bool = False) -> dict[str, tuple[int, int, int]]:
    """Read, validate and normalise one subject and write its stacks; returns ``{plane: stack shape}``.

    Raises :class:`InputError` (message names the file) for a missing/corrupt/4D/NaN image, a non-binary
    mask or a mask on another grid; nothing is written for that subject then.
    """
    stage = Path(stage)
    t1, t1_img = read_t1(t1_path)
    mask, mask_img = read_mask(mask_path)
    check_same_grid(t1_img, mask_img, t1_path, mask_path)
    norm = prepare(t1, t1_img.affine, brain_mask_mm, source=str(t1_path), bias_correct=bias_correct)
    shapes = {}
    for plane in planes:
        img_path, msk_path = stack_paths(stage, subject, plane)
        # ascontiguousarray: the moved-axis view is strided; the stored stack must be slice-contiguous.
        save_npy(np.ascontiguousarray(to_slices(norm, plane), dtype=IMAGE_DTYPE), img_path)
        save_npy(np.ascontiguousarray(to_slices(mask, plane), dtype=MASK_DTYPE), msk_path)
        shapes[plane] = tuple(int(s) for s in to_slices(mask, plane).shape)
    return shapes


def _one_itk_thread() -> None:
    # each conversion worker runs N4 on one core: ITK's own threads would oversubscribe the pool's
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"


def _worker(task: tuple[str, str, str, str, tuple[str, ...], float | None, bool, dict],
            ) -> tuple[str, dict | None, str | None]:
    subject, t1, msk, stage, planes, brain_mask_mm, bias_correct, source = task
    src = source_path(Path(stage), subject)
    try:
        src.unlink(missing_ok=True)  # an interrupted conversion leaves no valid source record
        shapes = convert_subject(subject, t1, msk, stage, planes, brain_mask_mm, bias_correct)
        with atomic_path(src, suffix=".json") as tmp:
            tmp.write_text(json.dumps(source, sort_keys=True))
        return subject, shapes, None
    except InputError as exc:
        return subject, None, str(exc)


def _resolve_path(value: Any, data_root: Path, subject: str, column: str) -> Path:
    path = resolve_data_path(value, data_root)
    if path is None:
        raise InputError(f"subjects.csv: subject {subject} has no {column}")
    return path


def _subjects_table(work: Path, data_root: Path, include_holdout: bool) -> pd.DataFrame:
    from raxnet.tables import SPLIT, SUBJECTS, check_subjects_agree, read_table

    split_csv = stage_dir(work, "split") / "split.csv"
    subjects_csv = stage_dir(work, "dataset") / "subjects.csv"
    split = read_table(split_csv, SPLIT, columns=["subject", "set"])
    subjects = read_table(subjects_csv, SUBJECTS, columns=["subject", "t1_path", "mask_path"])
    check_subjects_agree(split["subject"], split_csv, SPLIT, subjects["subject"], subjects_csv)
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
    if include_holdout is not None:
        cfg = with_flags(cfg, "convert", include_holdout=bool(include_holdout))
    rec = record.begin("convert", cfg, run)
    cfg, run = rec.cfg, rec.run
    opts = section(cfg, "convert", DEFAULTS)
    include_holdout = bool(opts["include_holdout"])
    planes = tuple(parse_planes(opts["planes"]))
    work = Path(run["work_dir"])
    data_root = Path(run["data_root"])
    stage = stage_dir(work, "convert", create=True)
    table = _subjects_table(work, data_root, include_holdout)
    images = record.check_images(work, data_root, table["subject"], "stage 03")
    brain_mask_mm = brain_mask_setting(opts)
    bias_correct = bool(opts["bias_correct"])

    errors: dict[str, str] = {}
    tasks, done, sources = [], [], {}
    for row in table.itertuples(index=False):
        try:
            t1 = _resolve_path(row.t1_path, data_root, row.subject, "t1_path")
            msk = _resolve_path(row.mask_path, data_root, row.subject, "mask_path")
            source = _source(images.get(row.subject), t1, msk, planes, brain_mask_mm, bias_correct)
        except InputError as exc:
            errors[row.subject] = str(exc)
            continue
        sources[row.subject] = source
        if _is_done(stage, row.subject, t1, planes, source):
            done.append(row.subject)
        else:
            tasks.append((row.subject, str(t1), str(msk), str(stage), planes, brain_mask_mm, bias_correct, source))
    if done:
        log.info("%d subject(s) already converted, skipped", len(done))

    jobs = max(1, int(run.get("jobs") or 1))
    shapes: dict[str, dict] = {}
    if tasks:
        if jobs > 1 and len(tasks) > 1:
            with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), initializer=_one_itk_thread) as pool:
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
                "mask_path": msk.relative_to(stage).as_posix(), "source": source_digest(sources[row.subject]),
            })
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    save_csv(index, stage / "index.csv")
    write_record(stage, brain_mask_mm, bias_correct)
    err_df = pd.DataFrame(sorted(errors.items()), columns=ERROR_COLUMNS)
    save_csv(err_df, stage / "errors.csv")
    log.info("converted %d subject(s) (%d skipped as done, %d error(s)) -> %s",
             len(shapes), len(done), len(errors), stage)
    rec.finish([stage / "index.csv", stage / "errors.csv", stage / "convert.json"])
    return index


def _source(recorded: dict[str, Any] | None, t1: Path, mask: Path, planes: Sequence[str],
            brain_mask_mm: float | None, bias_correct: bool = False) -> dict[str, Any]:
    """What a subject's stacks are made from: the images' SHA-256 (as stage 01 recorded them, else read
    now), the planes, the brain-mask and bias-correction settings and the conversion version."""
    def digest(kind: str, path: Path) -> str:
        if recorded and kind in recorded:
            return recorded[kind]["sha256"]
        try:
            return record.sha256_file(path)
        except OSError as exc:
            raise InputError(f"{path}: {'file not found' if isinstance(exc, FileNotFoundError) else exc}") from None

    return {"t1": digest("t1", t1), "mask": digest("mask", mask), "planes": sorted(planes),
            "brain_mask_mm": brain_mask_mm, "version": CONVERSION_VERSION,
            # only when on, so the records of runs made before the setting existed still match
            **({"bias_correct": True} if bias_correct else {})}


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
    parser.add_argument("--bias-correct", action=argparse.BooleanOptionalAction, default=None,
                        help="ANTs N4 bias-field correction of each scan after the brain mask (default off; "
                             "recorded in convert.json and carried into weights.json, so raxnet predict does the same)")
    args = parser.parse_args(argv)
    cfg, run_cfg = resolve(args)
    cfg = with_flags(cfg, "convert", planes=args.planes, include_holdout=True if args.all else None,
                     brain_mask=args.brain_mask, brain_mask_mm=args.brain_mask_mm, bias_correct=args.bias_correct)
    summary = run(cfg, run_cfg)
    print(f"{summary['subjects']} subject(s), {summary['stacks']} stack pair(s) in {summary['index']}; "
          f"{summary['n_errors']} error(s)")
    if summary["n_errors"]:
        print(f"{summary['n_errors']} subject(s) failed, listed in {summary['errors']} (exit code 1)")
        return EXIT_SOME_FAILED
    return 0


__all__ = ["DEFAULTS", "brain_mask_setting", "convert", "convert_subject", "open_stack", "load_volume_from_stacks", "run", "main",
           "stack_paths", "expected_shapes"]
