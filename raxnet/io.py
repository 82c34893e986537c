"""NIfTI reading with validation, and atomic writers (temp file + rename) for every output kind.

Validation errors are :class:`~raxnet.errors.InputError` with a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np

from raxnet.errors import InputError

#: Affines of two images on "the same grid" may differ by float noise from different writers.
AFFINE_ATOL = 1e-3


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


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    ``suffix`` keeps the extension libraries look at (``.nii.gz``, ``.npy``, ``.png``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; outputs get the usual permissions (0666 minus the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
