"""Weight sets for inference: one ``.keras`` model per plane plus a ``weights.json`` manifest.

A weight set is a folder::

    weights/demo/
        weights.json          # grid, which fold per plane, every inference decision, provenance
        axial.keras  sagittal.keras  coronal.keras

:func:`export_weights` builds one from a training work directory (stage 07), choosing per plane the fold
with the lowest inner-validation loss (never the reported outer-fold scores; :mod:`raxnet.runs`) -- or, as
nnU-Net ships its folds, every fold per plane (``<plane>_fold<k>.keras``, listed as the plane's ``files``),
whose probabilities ``raxnet predict`` averages: what stage 08 evaluated on the hold-out with ``ensemble``.

The manifest's ``inference`` block carries every decision ``raxnet predict`` makes after the networks
(:data:`INFERENCE_KEYS`): the fusion method, the probability threshold (lesion where ``p >= threshold``),
the minimum lesion size in mm³ and peak probability, the lesion connectivity, flip TTA and the brain-mask step
the networks were trained with (``brain_mask_mm`` and ``bias_correct``, recorded by stage 03; :mod:`raxnet.brainmask`). ``predict`` reads
them; its flags override them. A step that changes what the networks see adds its setting here.
Format 1 manifests (before the block existed) read as their ``threshold`` plus the defaults below.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raxnet.brainmask import check_setting, read_steps
from raxnet.components import LESION_CONNECTIVITY
from raxnet.config import stage_dir
from raxnet.errors import InputError, StageInputError
from raxnet.io import atomic_path, load_nifti, save_json
from raxnet.planes import PLANES
from raxnet.runs import read_subject_folds, select_models, train_dir

MANIFEST = "weights.json"
FORMAT_VERSION = 2

#: The inference decisions of a weight set and their defaults (what format 1 implied).
INFERENCE_KEYS: dict[str, Any] = {
    "fusion": "mean",  # raxnet.postprocess method: mean | vote | weighted | axial | sagittal | coronal
    "threshold": 0.5,  # lesion where probability >= threshold
    "min_lesion_mm3": 0.0,  # lesions (connected components) smaller than this are removed; 0 = keep all
    "min_peak": 0.0,  # lesions whose highest (fused) probability is below this are removed; 0 = keep all
    "large_mm3": 0.0,  # lesions of at least this volume are redrawn at large_threshold; 0 = never
    "large_threshold": 0.0,  # probability a large lesion is redrawn at (raxnet.postprocess.outline_large)
    "large_fragment_mm3": 0.0,  # pieces of a redrawn lesion smaller than this are dropped
    "connectivity": LESION_CONNECTIVITY,  # 3D connectivity of a lesion (clean-up and lesions.csv)
    "tta": False,  # left-right flip test-time augmentation
    "weights": {},  # per-plane weights of the "weighted" fusion ({} = not used)
    "brain_mask_mm": None,  # brain-mask step before normalisation: dilation in mm, None = none (as trained)
    "bias_correct": False,  # N4 bias-field correction after the brain mask (as trained)
}


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
    manifest = _read_json(path)
    for key in ("grid_shape", "affine", "planes"):
        if key not in manifest:
            raise InputError(f"{path}: missing '{key}'")
    for plane, entry in manifest["planes"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("files", entry.get("file")), (str, list)):
            raise InputError(f"{path}: plane {plane} names no model file ('file', or 'files' for a fold ensemble)")
        for name in plane_files(manifest, plane):
            if not (weights_dir / name).is_file():
                raise InputError(f"{weights_dir / name}: model file for plane {plane} not found")
    manifest["inference"] = inference_settings(manifest, path)
    return manifest


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON file of a weight set or of stage 08; InputError naming it when it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc})") from None


def plane_files(manifest: dict[str, Any], plane: str) -> list[str]:
    """The model file names of ``plane`` in a weight set: its one ``file``, or the ``files`` of a fold ensemble
    (whose probabilities are averaged)."""
    entry = manifest["planes"][plane]
    return [str(f) for f in entry["files"]] if "files" in entry else [str(entry["file"])]


def inference_settings(manifest: dict[str, Any], path: str | Path = MANIFEST) -> dict[str, Any]:
    """The manifest's inference decisions, completed with :data:`INFERENCE_KEYS` defaults and checked.

    Format 1 (no ``inference`` block) contributes its top-level ``threshold``.
    """
    given = dict(manifest.get("inference") or {})
    if "inference" not in manifest and "threshold" in manifest:
        given["threshold"] = manifest["threshold"]
    unknown = sorted(set(given) - set(INFERENCE_KEYS))
    if unknown:
        raise InputError(f"{path}: unknown inference setting(s) {', '.join(unknown)}")
    out = {**INFERENCE_KEYS, **given}
    check_inference(out, path)
    return out


def check_inference(settings: dict[str, Any], where: str | Path) -> None:
    """InputError naming ``where`` when an inference decision is out of range."""
    from raxnet.postprocess import ALL_METHODS

    if settings["fusion"] not in ALL_METHODS:
        raise InputError(f"{where}: fusion {settings['fusion']!r} is not one of {', '.join(ALL_METHODS)}")
    if not 0.0 < float(settings["threshold"]) < 1.0:
        raise InputError(f"{where}: threshold must be in (0, 1), got {settings['threshold']}")
    if float(settings["min_lesion_mm3"]) < 0:
        raise InputError(f"{where}: min_lesion_mm3 must be >= 0, got {settings['min_lesion_mm3']}")
    if not 0.0 <= float(settings["min_peak"]) < 1.0:
        raise InputError(f"{where}: min_peak must be in [0, 1), got {settings['min_peak']}")
    if float(settings["large_mm3"]) < 0 or float(settings["large_fragment_mm3"]) < 0:
        raise InputError(f"{where}: large_mm3 and large_fragment_mm3 must be >= 0, got "
                         f"{settings['large_mm3']} / {settings['large_fragment_mm3']}")
    if float(settings["large_mm3"]) > 0 and not float(settings["threshold"]) < float(settings["large_threshold"]) < 1:
        raise InputError(f"{where}: large_threshold must be above threshold ({settings['threshold']}) and below 1, "
                         f"got {settings['large_threshold']}")
    if int(settings["connectivity"]) not in (6, 18, 26):
        raise InputError(f"{where}: connectivity must be 6, 18 or 26, got {settings['connectivity']}")
    if settings["fusion"] == "weighted" and set(settings["weights"]) != set(PLANES):
        raise InputError(f"{where}: weighted fusion needs a weight for each of {', '.join(PLANES)}")
    check_setting(settings["brain_mask_mm"], str(where))
    if not isinstance(settings["bias_correct"], bool):
        raise InputError(f"{where}: bias_correct must be true or false, got {settings['bias_correct']!r}")


def chosen_inference(work_dir: str | Path, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stage 08's validation-chosen inference decisions for ``model`` and where they came from.

    ``({}, reason)`` (= the defaults) when ``08_fusion/postprocessing.json`` is absent, made for another
    model, or chose nothing.
    """
    path = stage_dir(work_dir, "fusion") / "postprocessing.json"
    if not path.is_file():
        return {}, {"from": "defaults", "reason": f"{path} not found (stage 08 with select = true writes it)"}
    record = _read_json(path)
    if record.get("model") != model:
        return {}, {"from": "defaults", "reason": f"{path} was chosen for model {record.get('model')!r}, not {model!r}"}
    if not record.get("inference"):
        return {}, {"from": "defaults", "reason": f"{path}: {record.get('reason', 'nothing chosen')}"}
    chosen = record["chosen"]
    return dict(record["inference"]), {
        "from": str(path), "metric": chosen["metric"], "validation_score": chosen["score"],
        "n_subjects": chosen["n_subjects"], "on": record["source"],
    }


def training_data(work_dir: Path, planes: dict[str, Any], infos: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Which data the exported models saw: the run's seed and the subjects outside each model's outer fold.

    Lets a user check that an evaluation set shares no subject (and no generator seed) with training.
    Without stage 04's fold table (an imported run) only the seed is recorded. Networks adopted untrained
    from one weight set (stage 07 ``epochs = 0``) carry that set's record, plus the seed and outer-fold
    subjects this run chose their post-processing on (``post_processing_chosen_on``). ``infos``: per plane,
    the ``run.json`` of each exported model (one per fold of an ensemble), in the order of its ``folds``.
    """
    models = [(p, fold, info) for p in planes for fold, info in zip(plane_folds(planes[p]), infos[p])]
    seeds = {info.get("seed") for _, _, info in models}
    record: dict[str, Any] = {"seed": seeds.pop() if len(seeds) == 1 else sorted(seeds, key=str)}
    try:
        folds = read_subject_folds(work_dir)
    except StageInputError:
        folds = None
    # adopted untrained (stage 07 epochs = 0): the networks are another weight set's, this run only chose the
    # post-processing (on each model's outer fold)
    trained = [(p, fold) for p, fold, info in models if not info.get("adopted")]
    sources = {str((info.get("init_weights") or {}).get("weights", "")) for _, _, info in models}
    if not trained and len(sources) == 1 and (Path(src := sources.pop()) / MANIFEST).is_file():
        chose = {"seed": record["seed"]}
        if folds is not None:
            oof = sorted(set(folds.loc[folds["fold"].isin([fold for _, fold, _ in models]), "subject"].astype(str)))
            chose.update(n_subjects=len(oof), subjects=oof)
        return {**read_manifest(src).get("training_data", {}), "adopted_from": src, "post_processing_chosen_on": chose}
    inits = {p: info.get("init_weights") for p, _, info in models if info.get("init_weights")}
    if inits:  # fine-tuned: the starting weights' training data counts as seen too
        record["init_weights"] = inits
    adopted = sorted({p for p, _, info in models if info.get("adopted")})
    if adopted:
        record["adopted"] = adopted
    if folds is None:
        return record
    seen: set[str] = set()
    for _, fold in trained:  # a model trained on every fold but its own outer-validation fold
        seen |= set(folds.loc[folds["fold"] != fold, "subject"].astype(str))
    seen_list = sorted(seen)
    record.update(n_subjects_trained_on=len(seen_list), subjects_trained_on=seen_list)
    return record


def plane_folds(entry: dict[str, Any]) -> list[int]:
    """The fold(s) of a manifest's plane entry: its one ``fold``, or the ``folds`` of a fold ensemble."""
    return [int(f) for f in entry["folds"]] if "folds" in entry else [int(entry["fold"])]


def hold_out_folds(work_dir: str | Path, model: str) -> dict[str, list[int]] | None:
    """The folds per plane stage 08 evaluated ``model``'s hold-out with (``08_fusion/fusion.json``
    ``holdout_folds``: several with its ``ensemble`` setting); None when it has not run for this model."""
    path = stage_dir(work_dir, "fusion") / "fusion.json"
    if not path.is_file():
        return None
    record = _read_json(path)
    if record.get("model") != model or not record.get("holdout_folds"):
        return None
    return {str(p): [int(f) for f in folds] for p, folds in record["holdout_folds"].items()}


def export_weights(work_dir: str | Path, out_dir: str | Path, model: str = "raxnet", note: str = "",
                   inference: dict[str, Any] | None = None, ensemble: bool | None = None) -> Path:
    """Copy the best fold's model per plane from ``<work>/07_train/<model>/`` into a weight set; with
    ``ensemble`` every fold's (``<plane>_fold<k>.keras``, averaged by ``raxnet predict``). ``ensemble`` None
    follows stage 08: the folds it evaluated the hold-out with (:func:`hold_out_folds`).

    The manifest's inference decisions are ``inference`` (keys of :data:`INFERENCE_KEYS`) when given,
    else the post-processing stage 08 chose on validation data for this model
    (``08_fusion/postprocessing.json``), else the defaults; ``inference_source`` says which.
    ``brain_mask_mm`` and ``bias_correct`` come from stage 03's record (what the models saw) unless
    ``inference`` sets them.
    """
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    if inference is None:
        inference, source = chosen_inference(work_dir, model)
    else:
        source = {"from": "given to export_weights"}
    seen = read_steps(stage_dir(work_dir, "convert")) or {}
    decisions = {**INFERENCE_KEYS, **seen, **inference}
    unknown = sorted(set(decisions) - set(INFERENCE_KEYS))
    if unknown:
        raise ValueError(f"unknown inference setting(s) {', '.join(unknown)}")
    check_inference(decisions, "export-weights")
    subjects_csv = stage_dir(work_dir, "dataset") / "subjects.csv"
    if not subjects_csv.is_file():
        raise StageInputError(f"{subjects_csv}: not found (run stage 01 first)")
    from raxnet.record import run_data_root
    from raxnet.runs import resolve_data_path

    # subjects.csv stores image paths relative to the run's data root (its config.toml).
    first_t1 = resolve_data_path(pd.read_csv(subjects_csv)["t1_path"].iloc[0], run_data_root(work_dir) or ".")
    ref = load_nifti(first_t1)
    planes: dict[str, Any] = {}
    evaluated = hold_out_folds(work_dir, model) if ensemble is None else None
    if ensemble is None:
        ensemble = evaluated is not None and any(len(f) > 1 for f in evaluated.values())
    # The same choice stage 08 makes: lowest inner-validation loss (never the reported outer fold), or all folds.
    chosen = select_models(train_dir(work_dir, model), PLANES, ensemble=bool(ensemble))
    if ensemble and evaluated is not None:  # exactly the folds stage 08 evaluated, not folds trained since
        for plane in PLANES:
            missing = sorted(set(evaluated.get(plane, [])) - {m.fold for m in chosen[plane]})
            if missing:
                raise StageInputError(f"{train_dir(work_dir, model) / plane}: fold(s) {missing} that stage 08 "
                                      "evaluated the hold-out with are gone; re-run stage 08 or pass --no-ensemble")
            chosen[plane] = [m for m in chosen[plane] if m.fold in evaluated.get(plane, [])]
    infos = {plane: [m.run_info() for m in chosen[plane]] for plane in PLANES}
    for plane in PLANES:  # every model file checked before any is copied (or the folder made)
        for m, info in zip(chosen[plane], infos[plane]):
            m.check_file(work_dir, info)
    out_dir.mkdir(parents=True, exist_ok=True)
    for plane in PLANES:
        ms, info = chosen[plane], infos[plane]
        names = [f"{plane}.keras"] if len(ms) == 1 else [f"{plane}_fold{m.fold}.keras" for m in ms]
        for m, name in zip(ms, names):
            with atomic_path(out_dir / name) as tmp:
                shutil.copyfile(m.path, tmp)
        if len(ms) == 1:
            planes[plane] = {"file": names[0], "fold": ms[0].fold, "best_val_loss": info[0].get("best_val_loss"),
                             "best_epoch": info[0].get("best_epoch"), "input_shape": info[0].get("input_shape")}
        else:
            planes[plane] = {"files": names, "folds": [m.fold for m in ms],
                             "best_val_loss": [i.get("best_val_loss") for i in info],
                             "best_epoch": [i.get("best_epoch") for i in info], "input_shape": info[0].get("input_shape")}
    manifest = {
        "format": FORMAT_VERSION,
        "training_data": training_data(work_dir, planes, infos),
        "model": model,
        "grid_shape": [int(s) for s in ref.shape[:3]],
        "affine": np.asarray(ref.affine).round(6).tolist(),
        "spacing_mm": [float(s) for s in ref.header.get_zooms()[:3]],
        "space": "MNI152NLin2009aSym",
        "planes": planes,
        "inference": decisions,
        "inference_source": source,
        "note": note,
    }
    save_json(manifest, out_dir / MANIFEST)
    return out_dir
