"""NIfTI reading with validation, and atomic writers (temp file + rename) for every output kind.

Validation errors are :class:`~raxnet.errors.InputError` with a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np

from raxnet.errors import InputError, OutputError

#: Affines of two images on "the same grid" may differ by float noise from different writers.
AFFINE_ATOL = 1e-3


def voxel_spacing(affine: Any) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes, from the affine (``nibabel.affines.voxel_sizes``).

    The affine, not the header's pixdim, is what places the voxels in MNI space, so it is what every
    volume-in-mm3 and distance-in-mm computation uses.
    """
    return tuple(float(v) for v in nib.affines.voxel_sizes(np.asarray(affine, dtype=float)))  # type: ignore[return-value]


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI header (data stays on disk); missing or unreadable files raise InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt headers
        raise InputError(f"{path}: cannot read NIfTI header ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img


def read_volume(path: str | Path, *, dtype: type = np.float32) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Load a 3D image as ``dtype`` and its header image.

    A trailing singleton 4th dimension (x, y, z, 1) is squeezed; any other non-3D image, an
    unreadable/truncated file or non-finite voxels raise :class:`InputError`.
    """
    img = load_nifti(path)
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3D image, got shape {tuple(img.shape)}")
    try:
        data = np.asarray(img.dataobj, dtype=dtype).reshape(shape)
    except Exception as exc:  # truncated gzip -> EOFError/zlib.error/OSError/ValueError
        raise InputError(f"{path}: cannot read image data ({type(exc).__name__}: {exc})") from None
    if not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise InputError(f"{path}: {n_bad} NaN/Inf voxels")
    return data, img


def read_t1(path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """:func:`read_volume` for a T1w scan: an image without contrast (all voxels equal, e.g. all zero) is
    refused -- it would train on, or predict, nothing."""
    data, img = read_volume(path)
    if data.size == 0 or float(data.min()) == float(data.max()):
        raise InputError(f"{path}: the T1w image is empty (every voxel is {float(data.flat[0]) if data.size else 0:g}); "
                         "check the file, or remove this subject")
    return data, img


def read_mask(path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Load a lesion mask as uint8 0/1; values > 0 are lesion.

    The mask must be binary: at most two distinct values, one of them 0, none negative (masks stored as
    0/1 or 0/255 are both accepted). Anything else (label maps, probability maps) raises InputError.
    """
    data, img = read_volume(path, dtype=np.float32)
    values = np.unique(data)
    if values.size > 2 or values.min() < 0 or (values.size == 2 and values[0] != 0):
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if values.size > 5 else "")
        raise InputError(f"{path}: lesion mask is not binary (values {shown})")
    return (data > 0).astype(np.uint8), img


def check_same_grid(ref: nib.Nifti1Image, other: nib.Nifti1Image, ref_path: Any, other_path: Any) -> None:
    """Raise InputError unless two images share shape (first 3 dims) and affine."""
    if tuple(ref.shape[:3]) != tuple(other.shape[:3]):
        raise InputError(
            f"{other_path}: shape {tuple(other.shape[:3])} does not match {ref_path} {tuple(ref.shape[:3])}"
        )
    if not np.allclose(ref.affine, other.affine, atol=AFFINE_ATOL):
        raise InputError(f"{other_path}: affine does not match {ref_path}")


#: What to do about an output that cannot be written, by errno.
_WRITE_HINTS: dict[int, str] = {
    errno.ENOSPC: "the disk is full: free space or choose another --work-dir / --output",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another --work-dir / --output",
    errno.EROFS: "the file system is read-only: choose a writable --work-dir / --output",
    errno.EACCES: "no permission to write there: choose a writable --work-dir / --output",
    errno.EPERM: "no permission to write there: choose a writable --work-dir / --output",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another --work-dir / --output",
    errno.EISDIR: "a folder is in the way of this file: remove it or choose another --work-dir / --output",
    errno.EEXIST: "a file is in the way of this folder: remove it or choose another --work-dir / --output",
}


def os_error_message(exc: OSError, path: str | Path | None = None) -> str:
    """One line for an OSError: the file, the system's reason and what to do."""
    where = path if path is not None else (exc.filename or "?")
    code = exc.errno
    reason = None
    if code is None:  # libraries put the errno in the text only (h5py), or report a short write (NumPy)
        m = re.search(r"errno = (\d+)", str(exc))
        code = int(m.group(1)) if m else None
        short = re.search(r"(\d+) requested and (\d+) written", str(exc))
        if short:
            code = errno.ENOSPC
            reason = f"only {short.group(2)} of {short.group(1)} bytes written"
    reason = reason or (os.strerror(code) if code else (exc.strerror or str(exc)))
    hint = _WRITE_HINTS.get(code or -1, "check that the folder exists and is writable")
    return f"{where}: {reason}; {hint}"


def make_dirs(path: str | Path) -> Path:
    """``mkdir -p`` whose failure (a file in the way, read-only disk...) is an :class:`OutputError`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(os_error_message(OSError(errno.ENOTDIR, "Not a directory"), path)) from None
    except OSError as exc:
        raise OutputError(os_error_message(exc, exc.filename or path)) from None
    return path


#: Name of atomic_path's temporary files: ``.<target name>.<8 random characters><suffix>``.
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^/]*)$")


def is_temp_file(name: str) -> bool:
    """True for the name of a temporary file left behind by :func:`atomic_path` (e.g. after a SIGKILL)."""
    m = _TEMP_NAME.match(name)
    return bool(m) and (m["target"].endswith(m["suffix"]) or m["suffix"] == ".tmp")


def clean_temp_files(folder: str | Path, *, recursive: bool = True, min_age_s: float = 0.0) -> list[Path]:
    """Remove stale temporary files of :func:`atomic_path` under ``folder``; returns what was removed.

    ``min_age_s`` spares files younger than that (a concurrent writer's file in a shared folder).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed = []
    for path in folder.rglob(".*") if recursive else folder.glob(".*"):
        try:
            if path.is_file() and is_temp_file(path.name) and now - path.stat().st_mtime >= min_age_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # removed meanwhile by its writer
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    ``suffix`` keeps the extension libraries look at (``.nii.gz``, ``.npy``, ``.png``). A failure to
    write (full disk, read-only or missing folder) raises :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    make_dirs(path.parent)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise OutputError(os_error_message(exc, path)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; outputs get the usual permissions (0666 minus the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.filename not in (None, str(tmp_path), str(path)):
            raise  # about another file (e.g. a source being copied): not a failure to write this one
        raise OutputError(os_error_message(exc, path)) from None
    finally:
        try:
            tmp_path.unlink(missing_ok=True)
        except OSError:
            pass


def save_nifti(data: np.ndarray, ref: nib.Nifti1Image, path: str | Path, dtype: type = np.uint8) -> Path:
    """Write ``data`` with the reference image's affine and header (data type set to ``dtype``)."""
    header = ref.header.copy()
    header.set_data_dtype(dtype)
    out = nib.Nifti1Image(np.asarray(data).astype(dtype), ref.affine, header)
    # scl_slope/inter of the reference would rescale a uint8 mask on read.
    out.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        nib.save(out, str(tmp))
    return Path(path)


def save_csv(df: Any, path: str | Path, **kwargs: Any) -> Path:
    """Write a pandas DataFrame as CSV atomically (no index unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(path)


def save_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically, indented and key-sorted (stable diffs, identical re-runs)."""
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return Path(path)


def save_npy(array: np.ndarray, path: str | Path) -> Path:
    """Write one ``.npy`` array atomically (readable later with ``np.load(..., mmap_mode='r')``)."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)
    return Path(path)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
