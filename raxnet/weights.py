"""Weight sets for inference: one ``.keras`` model per plane plus a ``weights.json`` manifest.

A weight set is a folder::

    weights/demo/
        weights.json          # grid the models were trained on, which fold per plane, provenance
        axial.keras  sagittal.keras  coronal.keras

:func:`export_weights` builds one from a training work directory (stage 07), choosing per plane the fold
with the lowest inner-validation loss (never the reported outer-fold scores).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raxnet.config import stage_dir
from raxnet.errors import InputError, StageInputError
from raxnet.fusion import select_models
from raxnet.io import atomic_path, load_nifti, save_json
from raxnet.planes import PLANES

MANIFEST = "weights.json"
FORMAT_VERSION = 1


def default_weights_dir() -> Path:
    """``$RAXNET_WEIGHTS`` if set, else the repository's (or image's) ``weights/demo``."""
    import os

    env = os.environ.get("RAXNET_WEIGHTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "weights" / "demo"


def read_manifest(weights_dir: str | Path) -> dict[str, Any]:
    """Read and check a weight set's manifest; every plane's model file must exist."""
    weights_dir = Path(weights_dir)
    path = weights_dir / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: weight manifest not found (expected a folder made by 'raxnet export-weights')")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc})") from None
    for key in ("grid_shape", "affine", "planes"):
        if key not in manifest:
            raise InputError(f"{path}: missing '{key}'")
    for plane, entry in manifest["planes"].items():
        if not (weights_dir / entry["file"]).is_file():
            raise InputError(f"{weights_dir / entry['file']}: model file for plane {plane} not found")
    return manifest


def export_weights(work_dir: str | Path, out_dir: str | Path, model: str = "raxnet", note: str = "") -> Path:
    """Copy the best fold's model per plane from ``<work>/07_train/<model>/`` into a weight set."""
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    train_dir = stage_dir(work_dir, "train") / model
    subjects_csv = stage_dir(work_dir, "dataset") / "subjects.csv"
    if not subjects_csv.is_file():
        raise StageInputError(f"{subjects_csv}: not found (run stage 01 first)")
    from raxnet.atlas import data_path
    from raxnet.record import run_data_root

    first_t1 = data_path(pd.read_csv(subjects_csv)["t1_path"].iloc[0], run_data_root(work_dir) or ".")
    ref = load_nifti(first_t1)
    out_dir.mkdir(parents=True, exist_ok=True)
    planes: dict[str, Any] = {}
    # The same choice stage 08 makes: lowest inner-validation loss, never the reported outer fold.
    chosen = select_models(train_dir, PLANES, ensemble=False)
    for plane in PLANES:
        best = chosen[plane][0]
        info = json.loads((best.path.parent / "run.json").read_text())
        with atomic_path(out_dir / f"{plane}.keras") as tmp:
            shutil.copyfile(best.path, tmp)
        planes[plane] = {
            "file": f"{plane}.keras",
            "fold": best.fold,
            "best_val_loss": info.get("best_val_loss"),
            "best_epoch": info.get("best_epoch"),
            "input_shape": info.get("input_shape"),
        }
    manifest = {
        "format": FORMAT_VERSION,
        "model": model,
        "grid_shape": [int(s) for s in ref.shape[:3]],
        "affine": np.asarray(ref.affine).round(6).tolist(),
        "spacing_mm": [float(s) for s in ref.header.get_zooms()[:3]],
        "space": "MNI152NLin2009aSym",
        "planes": planes,
        "threshold": 0.5,
        "note": note,
    }
    save_json(manifest, out_dir / MANIFEST)
    return out_dir
