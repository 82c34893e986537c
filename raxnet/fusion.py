"""Stage 08: three-plane fusion of the 2D plane models into 3D masks, and honest 3D evaluation.

This module only orchestrates; each step has its owner:

* which models: :mod:`raxnet.runs` (per plane the fold with the lowest *inner-validation* loss in its
  ``run.json`` — never chosen by a reported metric — or, with ``ensemble``, the mean of all folds);
* prediction: :func:`raxnet.inference.predict_probabilities` (optionally with left-right flip TTA);
* probabilities -> masks: :mod:`raxnet.postprocess` (threshold rule ``p >= threshold``, the fusion
  methods ``axial``, ``sagittal``, ``coronal``, ``mean``, ``vote``, ``weighted``, and with
  ``min_size > 0`` the ``<fused>_clean`` variants without components smaller than ``min_size`` voxels);
* scoring, tables and figures: :mod:`raxnet.evaluation` with :mod:`raxnet.metrics`.

``weighted`` uses each plane's mean cross-validated 3D Dice (``metrics.csv`` of stage 07, see
:func:`raxnet.runs.plane_weights`), normalised; equal weights (logged) when those are unavailable.

``oof`` adds out-of-fold fusion on the train subjects (set ``oof`` in the tables): a subject of fold ``k``
is predicted by the three ``fold_<k>`` models, which never saw it. Folds without all three models (e.g.
``[train] folds = "1"``) are skipped: their subjects are listed in ``skipped.csv`` with the reason and are
neither scored nor counted as failed (``errors.csv`` lists only failures). Caveat: the ``weighted`` weights come from those same out-of-fold scores, so
on the train set ``weighted`` is very slightly optimistic; on the hold-out it is not.

Post-processing chosen on validation data (``select``, on by default; :mod:`raxnet.postprocess_selection`): the
train subjects are predicted out of fold (even without ``oof``, which only decides whether they are reported)
and every candidate of the grid ``select_methods`` × ``select_thresholds`` × ``select_min_lesion_mm3`` ×
``select_min_peak`` is scored on them; the choice (best mean ``select_metric``; lesion removal kept only if it
improves it by more than ``select_min_gain``) is made before the first hold-out subject is read, written to
``postprocessing.json`` (choice, validation scores, the ``inference`` block ``raxnet export-weights`` copies
into ``weights.json``) and ``postprocessing_candidates.csv`` (mean scores of every candidate), and applied to
the hold-out as method ``selected``.

``evaluate_only`` scores existing masks (``<subject>_<method>.nii.gz`` or ``<subject>.nii.gz``) instead,
writing the same tables under ``08_fusion/evaluate_<folder name>/``.

Every decision (models, threshold, connectivity, methods, weights) is recorded in ``fusion.json``.
A subject whose input is missing or corrupt appears in ``subject_metrics.csv`` with its error and NaN
metrics, so every hold-out subject is accounted for. Metric semantics: :mod:`raxnet.metrics`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from raxnet import record
from raxnet.brainmask import read_steps
from raxnet.cli_common import resolve, stage_parser
from raxnet.components import LESION_CONNECTIVITY
from raxnet.config import section, stage_dir, with_flags
from raxnet.errors import EXIT_SOME_FAILED, ConfigError, InputError, StageInputError
from raxnet.evaluation import (
    Subject,
    find_predictions,
    load_subjects,
    load_truth,
    qc_subject,
    record_failure,
    subject_row,
    write_results,
)
from raxnet.inference import ModelCache, predict_probabilities
from raxnet.io import check_same_grid, read_mask, save_csv, save_json, save_nifti, voxel_spacing
from raxnet.metrics import evaluate
from raxnet.log import get_logger, progress
from raxnet.planes import PLANES
from raxnet.postprocess import ALL_METHODS, CLEAN_SUFFIX, FUSED_METHODS, fuse_all, method_names, postprocess
from raxnet.postprocess_selection import (
    LARGE_KEYS,
    check_grid,
    choose,
    choose_large,
    Kept,
    keep,
    score_candidates,
    score_large_candidates,
    summarise_candidates,
    unkeep,
)
from raxnet.runs import FoldModel, fold_models, plane_weights, run_name, select_models, train_dir
from raxnet.stage import stage_run

log = get_logger(__name__)

DEFAULTS: dict[str, Any] = {
    "model": "raxnet",  # run folder under 07_train/ (stage 07's run name: <model> or <model>-<loss>)
    "ensemble": False,  # mean of all folds per plane instead of the fold with the lowest inner-val loss
    "tta": False,  # left-right flip test-time augmentation (axial, coronal)
    "threshold": 0.5,  # probability >= threshold = lesion (planes, mean, weighted; per plane for vote)
    "min_size": 0,  # > 0: add <fused>_clean variants without components smaller than this (voxels)
    "connectivity": LESION_CONNECTIVITY,  # lesions (components) for lesion F1, lesion counts, cleaning: 6/18/26
    "batch_size": 16,  # slices per prediction batch
    "methods": list(ALL_METHODS),  # scored side by side: axial, sagittal, coronal, mean, vote, weighted
    "oof": False,  # also fuse the train subjects out-of-fold (fold_<k> models for fold-k subjects)
    "save_probabilities": False,  # write probabilities/<subject>_<plane>.nii.gz (float32)
    "qc": True,  # write qc/<subject>_qc.png overlays
    "qc_method": "mean",  # which method's mask the QC overlay shows
    "evaluate_only": "",  # folder of existing masks to score instead of predicting ("" = off)
    # Post-processing chosen on out-of-fold predictions of the train subjects, never on the hold-out
    # (raxnet.postprocess_selection); applied to the hold-out as method "selected" and exported to weights.json.
    "select": True,
    "select_metric": "dice_lesion_f1",  # dice | lesion_f1 | dice_lesion_f1 (their mean; over the out-of-fold subjects)
    "select_methods": ["mean", "vote", "weighted"],  # fusion methods tried
    "select_thresholds": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7],  # lesion where probability >= threshold
    "select_min_lesion_mm3": [0, 20, 50, 100, 200, 500],  # smaller lesions removed (0 = keep all)
    "select_min_peak": [0, 0.5, 0.6, 0.7, 0.8, 0.9],  # lesions whose peak probability is lower removed (0 = keep all)
    "select_min_gain": 0.005,  # lesion removal kept only if it raises the mean metric by more than this
    # then, given that choice, the large-lesion outline (raxnet.postprocess.outline_large; [] = not tried): lesions
    # of at least large_mm3 redrawn at large_threshold, their pieces under large_fragment_mm3 dropped
    "select_large_mm3": [2000, 5000, 10000],
    "select_large_threshold": [0.4, 0.5, 0.6],
    "select_large_fragment_mm3": [200, 500, 1000],
}

#: Name of the hold-out method that applies the post-processing chosen on validation data.
SELECTED = "selected"


def settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Merged and validated ``[fusion]`` section."""
    f = section(cfg, "fusion", DEFAULTS)
    if not 0.0 < float(f["threshold"]) < 1.0:
        raise ConfigError(f"fusion.threshold must be in (0, 1), got {f['threshold']}")
    if f["connectivity"] not in (6, 18, 26):
        raise ConfigError(f"fusion.connectivity must be 6, 18 or 26, got {f['connectivity']}")
    if int(f["min_size"]) < 0 or int(f["batch_size"]) < 1:
        raise ConfigError("fusion.min_size must be >= 0 and fusion.batch_size >= 1")
    for key in ("methods", "select_methods"):
        if isinstance(f[key], str):
            f[key] = [m.strip() for m in f[key].split(",") if m.strip()]
    if f["select"]:
        check_grid(f["select_methods"], f["select_thresholds"], f["select_min_lesion_mm3"], f["select_metric"],
                   f["select_min_gain"], f["select_min_peak"], large_grid(f))
    return f


def large_grid(f: Mapping[str, Any]) -> dict[str, list[float]]:
    """The large-lesion outline grid of a ``[fusion]`` section, by :data:`LARGE_KEYS`."""
    return {k: [float(v) for v in f[f"select_{k}"]] for k in LARGE_KEYS}


def _finish(out: Path, rows: list[dict[str, Any]], errors: list[dict[str, str]], methods: Sequence[str],
            extra: dict[str, Any], skipped: Sequence[Mapping[str, str]] = (),
            rec: record.StageRun | None = None) -> dict[str, Any]:
    result = write_results(out, rows, errors, methods, skipped)
    print(result["table"])
    why = sorted({s["reason"] for s in skipped})
    log.info("08_fusion: %d subject(s) scored, %d failed (errors.csv), %d skipped%s -> %s",
             result["n_subjects"] - result["n_failed"], result["n_failed"], result["n_skipped"],
             f" (skipped.csv: {'; '.join(why)})" if why else "", out)
    if rec is not None:
        rec.finish([p for p in sorted(out.glob("*.csv")) + sorted(out.glob("*.json")) if p.name != record.RECORD_FILE])
    return {**result, **extra}


def _choose_postprocessing(f: Mapping[str, Any], out: Path, candidate_rows: list[dict[str, Any]],
                           subjects: Sequence[str], weights: Mapping[str, float],
                           kept: Sequence[Kept] = ()) -> dict[str, Any]:
    """Choose on the out-of-fold candidate scores; write ``postprocessing.json`` and its candidates CSV.

    ``kept``: each out-of-fold subject's plane probabilities and truth where they could make a lesion
    (:func:`raxnet.postprocess_selection.keep`), for the large-lesion outline step."""
    grid = large_grid(f)
    record: dict[str, Any] = {
        "source": "out-of-fold predictions of the train subjects (fold_<k> models on fold k); hold-out never read",
        "model": f["model"],
        "metric": f["select_metric"],
        "grid": {"methods": list(f["select_methods"]), "thresholds": [float(t) for t in f["select_thresholds"]],
                 "min_lesion_mm3": [float(v) for v in f["select_min_lesion_mm3"]],
                 "min_peak": [float(v) for v in f["select_min_peak"]], **grid},
        "subjects": list(subjects),
    }
    if not candidate_rows:
        record.update(chosen=None, inference=None,
                      reason="no train subject could be predicted out of fold (train every fold's three planes, "
                             "see 08_fusion/skipped.csv and errors.csv)")
        log.warning("post-processing not chosen: %s", record["reason"])
        save_json(record, out / "postprocessing.json")
        return record
    candidates = summarise_candidates(candidate_rows)
    chosen = choose(candidates, metric=f["select_metric"], default_threshold=float(f["threshold"]),
                    methods=f["select_methods"], min_gain=float(f["select_min_gain"]))
    is_chosen = ((candidates["method"] == chosen["fusion"]) & (candidates["threshold"] == chosen["threshold"])
                 & (candidates["min_lesion_mm3"] == chosen["min_lesion_mm3"])
                 & (candidates["min_peak"] == chosen["min_peak"]))
    save_csv(candidates.assign(chosen=is_chosen), out / "postprocessing_candidates.csv", float_format="%.6g")
    large = {k: 0.0 for k in LARGE_KEYS}
    if kept and all(grid.values()):
        rows = [r for k in kept
                for r in score_large_candidates(*unkeep(k), k.spacing, chosen, large_mm3=grid["large_mm3"],
                                                large_thresholds=grid["large_threshold"],
                                                fragments_mm3=grid["large_fragment_mm3"],
                                                connectivity=int(f["connectivity"]), weights=weights or None)]
        step = choose_large(rows, metric=f["select_metric"], min_gain=float(f["select_min_gain"]))
        table = step.pop("candidates")
        is_chosen = np.logical_and.reduce([table[k] == step[k] for k in LARGE_KEYS])
        save_csv(table.assign(chosen=is_chosen), out / "postprocessing_large_candidates.csv", float_format="%.6g")
        large = {k: step[k] for k in LARGE_KEYS}
        chosen.update(large, score_without_large=step["score_without"], score=step["score"])
    record["chosen"] = chosen
    record["inference"] = {
        "fusion": chosen["fusion"], "threshold": chosen["threshold"], "min_lesion_mm3": chosen["min_lesion_mm3"],
        "min_peak": chosen["min_peak"], **large, "connectivity": int(f["connectivity"]), "tta": bool(f["tta"]),
        "weights": dict(weights) if chosen["fusion"] == "weighted" else {},
    }
    save_json(record, out / "postprocessing.json")
    log.info("post-processing chosen on %d out-of-fold subject(s): %s, threshold %.2f, lesions >= %g mm³ "
             "with peak probability >= %g%s (validation %s %.3f)", chosen["n_subjects"], chosen["fusion"],
             chosen["threshold"], chosen["min_lesion_mm3"], chosen["min_peak"],
             f", lesions >= {large['large_mm3']:g} mm³ redrawn at {large['large_threshold']:g} (pieces under "
             f"{large['large_fragment_mm3']:g} mm³ dropped)" if large["large_mm3"] else "",
             chosen["metric"], chosen["score"])
    return record


def check_trained_current(work: Path, models: Sequence[FoldModel]) -> None:
    """Refuse a stage-07 model trained from stage-03/04 tables that have changed since, or a ``model.keras``
    that is not the one stage 07 wrote (its run.json records the tables' and the model's SHA-256; models
    without that record, e.g. made by hand, are not checked)."""
    from raxnet.training import input_digests

    seen: set[Path] = set()
    for m in models:
        run_json = m.path.parent / "run.json"
        if run_json in seen or not run_json.is_file():
            continue
        seen.add(run_json)
        info = json.loads(run_json.read_text())
        m.check_file(work, info)
        made = info.get("inputs")
        if made is None:
            continue
        now = input_digests(work, m.plane)
        changed = [k for k in sorted(set(now) | set(made)) if now.get(k) != made.get(k)]
        if changed:
            raise StageInputError(
                f"{m.path.parent}: trained from other tables ({changed[0]} changed since); re-train it: "
                f"07_train/train.py --work-dir {work} --plane {m.plane} --fold {m.fold} --force")


@stage_run("fusion")
def run(cfg: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """Fuse, write masks and score every hold-out (and, with ``oof``, train) subject; see module doc."""
    rec = record.begin("fusion", cfg, run)
    cfg, run = rec.cfg, rec.run
    if ("fusion", "model") not in rec.explicit:  # the models stage 07 trained with the run's settings
        from raxnet.training import loss_names, model_names

        cfg["fusion"]["model"] = run_name(model_names(cfg)[0], loss_names(cfg)[0])
    f = settings(cfg)
    if f["evaluate_only"]:
        return evaluate_only(cfg, run, f["evaluate_only"], rec=rec)
    work, data_root = Path(run["work_dir"]), Path(run["data_root"])
    out = stage_dir(work, "fusion", create=True)
    methods = method_names(f["methods"], int(f["min_size"]))
    select = bool(f["select"])
    tried = list(methods) + (list(f["select_methods"]) if select else [])
    models_dir = train_dir(work, f["model"])
    # fused methods need all three planes; otherwise only the planes asked for are predicted
    needed = list(PLANES) if any(m in FUSED_METHODS for m in tried) else [p for p in PLANES if p in tried]
    holdout_models = select_models(models_dir, needed, bool(f["ensemble"]))
    weights, weight_source = plane_weights(models_dir, needed) if "weighted" in tried else ({}, "unused")
    if weights:
        log.info("weighted fusion weights (%s): %s", weight_source,
                 ", ".join(f"{p} {w:.3f}" for p, w in weights.items()))
    # The brain-mask and bias-correction steps stage 03 applied to the training inputs apply here too.
    steps = read_steps(stage_dir(work, "convert")) or {"brain_mask_mm": None, "bias_correct": False}
    brain_mask_mm, bias_correct = steps["brain_mask_mm"], steps["bias_correct"]
    # out-of-fold subjects are predicted when they are reported (oof) or choose the post-processing (select)
    subjects = load_subjects(work, data_root, oof=bool(f["oof"]) or select)
    if not any(s.set == "holdout" for s in subjects):
        raise StageInputError(f"{stage_dir(work, 'split') / 'split.csv'}: no hold-out subject")
    record.check_images(work, data_root, [s.subject for s in subjects], "stage 08")

    # Out-of-fold: the fold_<k> models of all needed planes must exist.
    all_models = fold_models(models_dir, needed)
    skipped_folds: dict[int, str] = {}
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    todo: list[tuple[Subject, dict[str, list[FoldModel]]]] = []
    for s in subjects:
        if s.set == "holdout":
            todo.append((s, holdout_models))
            continue
        if s.fold is None:  # stage 04's table does not match stage 02's: a failure, not a choice
            record_failure(s, StageInputError(f"{s.subject}: train subject without a fold in subject_folds.csv"),
                           methods if f["oof"] else [], rows, errors)
            continue
        missing = [p for p in needed if s.fold not in all_models[p]]
        if missing:  # e.g. [train] folds = "1": the other folds' subjects cannot be scored out of fold
            why = f"fold_{s.fold} not trained ({', '.join(missing)})"
            if s.fold not in skipped_folds:
                log.info("out-of-fold: %s; its subjects are skipped", why)
            skipped_folds[s.fold] = why
            skipped.append({"subject": s.subject, "set": s.set, "reason": why})
            continue
        todo.append((s, {p: [all_models[p][s.fold]] for p in needed}))
    check_trained_current(work, [m for _, models in todo for ms in models.values() for m in ms])

    # out-of-fold subjects first, grouped by fold so each fold's models load once; the post-processing is
    # chosen on them before the first hold-out subject is read
    todo.sort(key=lambda item: (item[0].set == "holdout", item[0].fold or 0))
    cache = ModelCache()
    candidate_rows: list[dict[str, Any]] = []
    oof_scored: list[str] = []
    oof_kept: list[Kept] = []  # for the outline step
    keep_voxels = select and all(large_grid(f).values())
    postprocessing: dict[str, Any] | None = None
    grid = dict(methods=f["select_methods"], thresholds=f["select_thresholds"],
                sizes_mm3=f["select_min_lesion_mm3"], peaks=f["select_min_peak"], connectivity=int(f["connectivity"]),
                weights=weights)
    for s, models in progress(todo, desc="08 fusion", unit="subject"):
        holdout = s.set == "holdout"
        if holdout and select and postprocessing is None:
            postprocessing = _choose_postprocessing(f, out, candidate_rows, oof_scored, weights, oof_kept)
            oof_kept.clear()
            if postprocessing["inference"] is not None:
                methods = methods + [SELECTED]
        report = holdout or bool(f["oof"])
        cache.keep_only(m.path for ms in models.values() for m in ms)  # frees the previous fold's models
        try:
            t1, truth, img = load_truth(s)
            spacing = voxel_spacing(img.affine)
            probs = predict_probabilities(t1, models, cache=cache, batch_size=int(f["batch_size"]),
                                          tta=bool(f["tta"]), source=str(s.t1_path), affine=img.affine,
                                          brain_mask_mm=brain_mask_mm, bias_correct=bias_correct)
        except InputError as exc:
            record_failure(s, exc, methods if report else [], rows, errors)
            continue
        s.lesion_voxels = float(truth.sum())
        if not holdout and select:
            candidate_rows += score_candidates(probs, truth, spacing, **grid)
            oof_scored.append(s.subject)
            if keep_voxels:  # the step runs after the first choice, on every subject at once
                oof_kept.append(keep(probs, truth, spacing, min(float(t) for t in f["select_thresholds"])))
        if not report:
            continue
        masks = fuse_all(probs, [m for m in methods if m != SELECTED], threshold=float(f["threshold"]),
                         weights=weights, min_size=int(f["min_size"]), connectivity=int(f["connectivity"]))
        if holdout and SELECTED in methods:
            chosen = postprocessing["inference"]
            masks[SELECTED] = postprocess(probs, fusion=chosen["fusion"], threshold=chosen["threshold"],
                                          min_lesion_mm3=chosen["min_lesion_mm3"], spacing=spacing,
                                          min_peak=chosen["min_peak"], large_mm3=chosen["large_mm3"],
                                          large_threshold=chosen["large_threshold"],
                                          large_fragment_mm3=chosen["large_fragment_mm3"],
                                          connectivity=chosen["connectivity"], weights=chosen["weights"] or None)
        # where every predicted plane alone says lesion (at the threshold each mask was made with): the share
        # of a mask inside it is its plane agreement
        unanimous: dict[float, np.ndarray] = {}

        def agreement(method: str, mask: np.ndarray) -> float:
            thr = float(postprocessing["inference"]["threshold"]) if method == SELECTED else float(f["threshold"])
            if thr not in unanimous:
                unanimous[thr] = np.logical_and.reduce([p >= thr for p in probs.values()])
            n_mask = int(np.count_nonzero(mask))
            return float(np.count_nonzero(unanimous[thr] & (mask > 0))) / n_mask if n_mask else float("nan")
        results = {}
        for m, mask in masks.items():
            save_nifti(mask, img, out / "masks" / f"{s.subject}_{m}.nii.gz", dtype=np.uint8)
            results[m] = evaluate(mask, truth, spacing=spacing, connectivity=int(f["connectivity"]))
            results[m]["plane_agreement"] = agreement(m, mask)
            rows.append(subject_row(s, m, results[m]))
        if f["save_probabilities"]:
            for p, prob in probs.items():
                save_nifti(prob, img, out / "probabilities" / f"{s.subject}_{p}.nii.gz", dtype=np.float32)
        if f["qc"]:
            qc_subject(out, s, t1, truth, masks, results, spacing, f["qc_method"])

    used = {p: [m.fold for m in ms] for p, ms in holdout_models.items()}
    info = {
        "model": f["model"],
        "selection": "ensemble of all folds" if f["ensemble"] else "lowest inner-validation loss (run.json best_val_loss)",
        "holdout_folds": used,
        "holdout_best_val_loss": {p: [m.best_val_loss for m in ms] for p, ms in holdout_models.items()},
        "tta": bool(f["tta"]),
        "brain_mask_mm": brain_mask_mm,
        "bias_correct": bias_correct,
        "threshold": float(f["threshold"]),
        "threshold_rule": "lesion where probability >= threshold",
        "min_size": int(f["min_size"]),
        "connectivity": int(f["connectivity"]),
        "methods": methods,
        "qc_method": f["qc_method"],
        "weights": weights,
        "weight_source": weight_source,
        "oof": bool(f["oof"]),
        "oof_skipped_folds": {str(k): v for k, v in sorted(skipped_folds.items())},
        "postprocessing": (postprocessing or {}).get("inference"),
    }
    save_json(info, out / "fusion.json")
    extra = {"selected_folds": used, "weights": weights, "weight_source": weight_source,
             "oof_skipped_folds": sorted(skipped_folds), "postprocessing": postprocessing}
    return _finish(out, rows, errors, methods, extra, skipped, rec=rec)


def evaluate_only(cfg: Mapping[str, Any], run: Mapping[str, Any], pred_dir: str | Path,
                  rec: record.StageRun | None = None) -> dict[str, Any]:
    """Score existing masks in ``pred_dir`` against the ground truth of subjects.csv.

    Writes the same files as :func:`run` (subject_metrics.csv, summary.csv, errors.csv, figures, qc/)
    under ``<work>/08_fusion/evaluate_<name of pred_dir>/``.

    Subjects are split.csv's hold-out (plus train with ``oof``), or all of subjects.csv (set "all") if
    there is no split.csv. A missing, corrupt, non-binary or wrong-grid prediction is an error row for
    that subject and method.
    """
    f = settings(cfg)
    work, data_root = Path(run["work_dir"]), Path(run["data_root"])
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: prediction directory not found")
    if not data_root.is_dir():
        raise StageInputError(f"{data_root}: data root not found (--data-root: the folder that contains Training/)")
    # A sub-folder, so scoring other masks never overwrites the stage's own fusion results.
    out = stage_dir(work, "fusion", create=True) / f"evaluate_{pred_dir.resolve().name}"
    subjects = load_subjects(work, data_root, oof=bool(f["oof"]), need_split=False)
    preds = find_predictions(pred_dir, [s.subject for s in subjects])
    found = {m for d in preds.values() for m in d}
    known = [m for m in [*ALL_METHODS, *(x + CLEAN_SUFFIX for x in FUSED_METHODS), SELECTED] if m in found]
    methods = known + sorted(found - set(known))
    if not methods:
        log.warning("%s: no <subject>*.nii.gz prediction for any of %d subjects", pred_dir, len(subjects))
        methods = ["prediction"]
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for s in progress(subjects, desc="08 evaluate", unit="subject"):
        try:
            t1, truth, img = load_truth(s)
        except InputError as exc:
            record_failure(s, exc, methods, rows, errors)
            continue
        s.lesion_voxels = float(truth.sum())
        spacing = voxel_spacing(img.affine)
        masks, results = {}, {}
        for m in methods:
            path = preds[s.subject].get(m)
            try:
                if path is None:
                    raise InputError(f"{pred_dir}/{s.subject}_{m}.nii.gz: prediction not found")
                pred, pred_img = read_mask(path)
                check_same_grid(img, pred_img, s.mask_path, path)
            except InputError as exc:
                record_failure(s, exc, [m], rows, errors)
                continue
            masks[m] = pred
            results[m] = evaluate(pred, truth, spacing=spacing, connectivity=int(f["connectivity"]))
            rows.append(subject_row(s, m, results[m]))
        if f["qc"] and masks:
            qc_subject(out, s, t1, truth, masks, results, spacing, f["qc_method"])
    save_json({"evaluate_only": str(pred_dir), "methods": methods, "connectivity": int(f["connectivity"])},
              out / "fusion.json")
    return _finish(out, rows, errors, methods, {"methods": methods}, rec=rec)


def main(argv: Sequence[str] | None = None) -> int:
    """``python 08_fusion/fuse.py``: argparse -> :func:`run`."""
    parser = stage_parser(
        description="Stage 08 — fuse the three plane models into 3D masks and score every hold-out subject "
        "(3D Dice, IoU, precision, recall, HD95, lesion-wise F1, volume and lesion-count differences).",
        data_root=True,
    )
    parser.add_argument("--model", help="model name under 07_train/ (default raxnet)")
    parser.add_argument("--ensemble", action="store_true", default=None,
                        help="average all folds per plane instead of the best inner-validation fold")
    parser.add_argument("--tta", action="store_true", default=None, help="left-right flip test-time augmentation")
    parser.add_argument("--threshold", type=float, help="probability threshold (default 0.5)")
    parser.add_argument("--min-size", type=int, help="add <fused>_clean variants without components < N voxels")
    parser.add_argument("--connectivity", type=int, choices=(6, 18, 26),
                        help=f"3D connectivity of a lesion (default {LESION_CONNECTIVITY})")
    parser.add_argument("--methods", help=f"comma-separated subset of {','.join(ALL_METHODS)}")
    parser.add_argument("--batch-size", type=int, help="slices per prediction batch")
    parser.add_argument("--oof", action="store_true", default=None,
                        help="also fuse the train subjects out-of-fold (fold_<k> models for fold k)")
    parser.add_argument("--save-probabilities", action="store_true", default=None,
                        help="write probabilities/<subject>_<plane>.nii.gz (float32)")
    parser.add_argument("--no-qc", dest="qc", action="store_false", default=None, help="skip the QC overlays")
    parser.add_argument("--evaluate-only", metavar="PRED_DIR",
                        help="score existing <subject>_<method>.nii.gz masks instead of predicting")
    args = parser.parse_args(argv)
    cfg, run_cfg = resolve(args)
    cfg = with_flags(cfg, "fusion", model=args.model, ensemble=args.ensemble, tta=args.tta, threshold=args.threshold,
                     min_size=args.min_size, connectivity=args.connectivity, batch_size=args.batch_size,
                     oof=args.oof, save_probabilities=args.save_probabilities, qc=args.qc,
                     evaluate_only=args.evaluate_only,
                     methods=[m.strip() for m in args.methods.split(",")] if args.methods else None)
    result = run(cfg, run_cfg)
    if result.get("n_failed"):
        print(f"{result['n_failed']} subject(s) failed, listed in {stage_dir(run_cfg['work_dir'], 'fusion')}"
              "/errors.csv (exit code 1)")
        return EXIT_SOME_FAILED
    return 0
