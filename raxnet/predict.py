"""``raxnet predict``: lesion masks for T1w scans in MNI152NLin2009aSym space, with shipped weights.

For each input scan: validate it, bring it to the grid the weights were trained on (resampling an image
that is in MNI space on another grid, refusing one that is not), normalise it exactly as in training,
predict every slice with each plane model (:func:`raxnet.inference.predict_probabilities`, batched, one
model load per run), turn the three probability volumes into a mask with the weight set's inference
decisions (:func:`raxnet.postprocess.postprocess`: fusion method, threshold ``p >= t``, minimum lesion
size in mm³, connectivity; see :mod:`raxnet.weights` — flags override them), bring the mask back to the
input grid, and write the mask (uint8, the input's affine and header), optional probability map, a
per-lesion CSV (lesions with the same connectivity), a one-row summary CSV and a QC overlay PNG.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from raxnet.cli_common import add_verbose
from raxnet.errors import EXIT_BAD_INPUT, EXIT_SOME_FAILED, ConfigError, InputError, OutputError, RaxnetError
from raxnet.io import load_nifti, make_dirs, read_t1, save_csv, save_nifti, voxel_spacing
from raxnet.log import get_logger, progress, setup_console, stage_log
from raxnet.planes import PLANES
from raxnet.postprocess import ALL_METHODS, postprocess
from raxnet.uncertainty import CONFIDENCE_COLUMNS, lesion_confidence, plane_spread
from raxnet.weights import INFERENCE_KEYS, check_inference, default_weights_dir, plane_files, read_manifest

log = get_logger(__name__)

#: ``[predict]``: how to run. What to decide (fusion, threshold, minimum lesion size, connectivity, TTA)
#: comes from the weight set's ``weights.json`` (``inference``); command-line flags override it.
DEFAULTS: dict[str, Any] = {
    "weights": "",  # weight-set folder; "" = $RAXNET_WEIGHTS or weights/demo
    "batch_size": 32,
    "save_probabilities": False,
    "save_uncertainty": False,  # write <name>_desc-uncertainty.nii.gz and <name>_uncertainty.png
    "qc": True,  # write <name>_qc.png
    "brain_mask_mm": "",  # "" = the weight set's brain-mask step; a dilation in mm, or "off", overrides it
    "register": False,  # native-space scans: register to MNI152NLin2009aSym (ANTs), segment there, map back
    "registration": "affine",  # with register: "affine" (rigid + affine) or "syn" (+ lesion-masked SyN)
    "bias_correct": "",  # "" = the weight set's N4 bias-correction step; true / false overrides it
}

#: Columns of the batch table ``summary.csv`` (one row per input scan, failed ones included).
BATCH_COLUMNS = ["name", "input", "status", "error", "lesion_voxels", "lesion_volume_mm3", "n_lesions",
                 "lowest_plane_agreement", "seconds", "resampled", "mask"]
#: Largest value of the plane spread (standard deviation of three probabilities: 0, 0 and 1).
MAX_SPREAD = float(np.std([0.0, 0.0, 1.0]))
_NIFTI = re.compile(r"\.nii(\.gz)?$")
#: Fraction of the template brain's bounding box an MNI-space scan's field of view must cover.
MIN_FOV_COVERAGE = 0.9
#: Voxels of the 1 mm MNI152 (ATLAS) grid, 197 x 233 x 189.
MNI_1MM_VOXELS = 197 * 233 * 189
#: A scan with more voxels than this many 1 mm MNI volumes is refused before its data is read: memory grows
#: with the input grid (several float32 copies of it are held), and an MNI-space T1w needs no finer grid.
MAX_MNI_VOLUMES = 4


def output_stem(path: str | Path) -> str:
    """BIDS-style stem: ``sub-01_ses-1_space-X_T1w.nii.gz`` -> ``sub-01_ses-1_space-X``."""
    name = _NIFTI.sub("", Path(path).name)
    return re.sub(r"_T1w$", "", name)


def output_names(inputs: Sequence[Path], root: str | Path | None = None) -> list[str]:
    """Output name of each input (outputs are ``<out>/<name>_desc-lesion_mask.nii.gz``, ...): its
    :func:`output_stem`, under the input's folder relative to ``root`` (the ``--input`` folder), so scans
    with the same file name in different folders never overwrite each other. Two inputs that would still
    write the same outputs (``x_T1w.nii`` beside ``x_T1w.nii.gz``) are refused."""
    names = []
    for path in inputs:
        name = output_stem(path)
        if root is not None:
            parent = Path(path).parent.relative_to(root).as_posix()
            name = name if parent == "." else f"{parent}/{name}"
        names.append(name)
    seen: dict[str, Path] = {}
    for path, name in zip(inputs, names):
        if name in seen:
            raise InputError(f"{path}: would write the same outputs ({name}_*) as {seen[name]}; rename one of them")
        seen[name] = path
    return names


def check_size(path: str | Path) -> None:
    """Refuse, from its header alone, a scan larger than :data:`MAX_MNI_VOLUMES` 1 mm MNI volumes."""
    img = load_nifti(path)
    voxels = int(np.prod(img.shape[:3], dtype=np.int64))
    if voxels > MAX_MNI_VOLUMES * MNI_1MM_VOXELS:
        shape = "x".join(str(int(s)) for s in img.shape[:3])
        raise InputError(
            f"{path}: {shape} = {voxels / 1e6:.0f} M voxels, {voxels / MNI_1MM_VOXELS:.0f} times a 1 mm MNI152 "
            f"volume (at most {MAX_MNI_VOLUMES} times is read); resample it to 1 mm MNI152NLin2009aSym first"
        )


def find_inputs(path: str | Path) -> list[Path]:
    """One NIfTI file, or every T1w-looking NIfTI under a folder (masks and our own outputs skipped)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: input not found")
    skip = re.compile(r"(_mask|_label-|_desc-lesion|_probability|_dseg|_desc-uncertainty|_xfm)", re.IGNORECASE)
    files = sorted(p for p in path.rglob("*") if p.is_file() and _NIFTI.search(p.name) and not skip.search(p.name))
    if not files:
        raise InputError(f"{path}: no .nii or .nii.gz scans found in this folder")
    return files


def _fov_coverage(img_affine: np.ndarray, img_shape: tuple[int, ...], ref_affine: np.ndarray, ref_shape) -> float:
    """Fraction of the reference grid's bounding box (in mm) inside the image's field of view."""
    def box(affine, shape):
        corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
        mm = corners @ affine.T
        return mm[:, :3].min(0), mm[:, :3].max(0)

    (a0, a1), (b0, b1) = box(img_affine, img_shape), box(ref_affine, ref_shape)
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None)
    return float(np.prod(inter) / np.prod(b1 - b0))


def _is_oblique(affine: np.ndarray) -> bool:
    rot = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool((np.abs(rot).max(axis=0) < 0.999).any())


def to_model_grid(data: np.ndarray, img: nib.Nifti1Image, manifest: dict[str, Any], path: Path) -> tuple[np.ndarray, bool]:
    """The image on the weights' grid: as is, or resampled when it is in MNI space on another grid."""
    shape = tuple(manifest["grid_shape"])
    affine = np.asarray(manifest["affine"], dtype=float)
    if data.shape == shape and np.allclose(img.affine, affine, atol=1e-3):
        return data, False
    if _is_oblique(img.affine):
        raise InputError(f"{path}: oblique affine; the scan is not in MNI152NLin2009aSym space (register it first)")
    coverage = _fov_coverage(img.affine, data.shape, affine, shape)
    if coverage < MIN_FOV_COVERAGE:
        raise InputError(
            f"{path}: not in MNI152NLin2009aSym space (its field of view covers {coverage:.0%} of the template's); "
            "register the scan to MNI152NLin2009aSym first"
        )
    from nilearn.image import resample_img

    src = nib.Nifti1Image(data.astype(np.float32), img.affine)
    out = resample_img(src, target_affine=affine, target_shape=shape, interpolation="linear",
                       force_resample=True, copy_header=True)
    return np.asarray(out.dataobj, dtype=np.float32), True


def back_to_input_grid(mask: np.ndarray, manifest: dict[str, Any], img: nib.Nifti1Image, interpolation: str) -> np.ndarray:
    """Resample a volume on the weights' grid back onto the input image's grid."""
    from nilearn.image import resample_img

    src = nib.Nifti1Image(mask.astype(np.float32), np.asarray(manifest["affine"], dtype=float))
    out = resample_img(src, target_affine=img.affine, target_shape=img.shape[:3], interpolation=interpolation,
                       force_resample=True, copy_header=True)
    return np.asarray(out.dataobj, dtype=np.float32)


class Predictor:
    """The plane models of a weight set (one per plane, or a fold ensemble; loaded once) and its inference
    decisions.

    ``overrides`` (keys of :data:`raxnet.weights.INFERENCE_KEYS`; None values ignored) replace the
    manifest's decisions; the result is :attr:`settings`.
    """

    def __init__(self, weights_dir: str | Path | None = None, batch_size: int = 32,
                 overrides: dict[str, Any] | None = None) -> None:
        from raxnet.inference import ModelCache

        self.weights_dir = Path(weights_dir) if weights_dir else default_weights_dir()
        self.manifest = read_manifest(self.weights_dir)
        given = {k: v for k, v in (overrides or {}).items() if v is not None and v != ""}
        unknown = sorted(set(given) - set(INFERENCE_KEYS))
        if unknown:
            raise ValueError(f"unknown inference setting(s) {', '.join(unknown)}")
        if given.get("brain_mask_mm") == "off":
            given["brain_mask_mm"] = None
        self.settings = {**self.manifest["inference"], **given}
        check_inference(self.settings, "predict")
        self.batch_size = batch_size
        self._cache = ModelCache()

    @property
    def model_files(self) -> dict[str, list[Path]]:
        """Per plane, its model file(s): one, or one per fold of a fold ensemble (probabilities averaged)."""
        return {p: [self.weights_dir / f for f in plane_files(self.manifest, p)] for p in PLANES}

    @property
    def models(self) -> dict[str, list[Any]]:
        """The plane models, loaded on first use (a bad input is refused before paying for it)."""
        return {p: [self._cache.get(path) for path in paths] for p, paths in self.model_files.items()}

    def probabilities(self, volume: np.ndarray, source: str = "volume") -> dict[str, np.ndarray]:
        """Per-plane probability volumes for a volume already on the weights' grid (not yet normalised)."""
        from raxnet.inference import predict_probabilities

        return predict_probabilities(volume, self.model_files, cache=self._cache,
                                     batch_size=self.batch_size, tta=bool(self.settings["tta"]), source=source,
                                     affine=np.asarray(self.manifest["affine"], dtype=float),
                                     brain_mask_mm=self.settings["brain_mask_mm"],
                                     bias_correct=self.settings["bias_correct"])

    def on_scan_grid(self, probs: dict[str, np.ndarray], img: nib.Nifti1Image,
                     ) -> tuple[dict[str, np.ndarray], tuple[float, float, float]]:
        """Per-plane probabilities on the weights' grid -> on the scan's grid (linear), and its spacing.

        As nnU-Net does, the probabilities (not a mask) go back and are thresholded there (:meth:`mask` with
        that spacing): a 2 mm mask taken back by nearest neighbour is blocky -- on 1 mm scans it caps the
        Dice of a perfect 2 mm prediction at ~0.82 (0.68-0.77 for lesions under 1 mL), thresholding the
        resampled probabilities at ~0.89.
        """
        return ({p: back_to_input_grid(v, self.manifest, img, "linear") for p, v in probs.items()},
                voxel_spacing(img.affine))

    def scan_probabilities(self, on_grid: np.ndarray, resampled: bool, img: nib.Nifti1Image, source: str,
                           ) -> tuple[dict[str, np.ndarray], tuple[float, float, float] | None]:
        """Per-plane probabilities of a scan that :func:`to_model_grid` took to the weights' grid, on the scan's
        own grid when it was resampled (:meth:`on_scan_grid`; with the scan's spacing), else as they are (spacing
        None: the weights' grid). What :meth:`mask` is then given."""
        probs = self.probabilities(on_grid, source=source)
        return self.on_scan_grid(probs, img) if resampled else (probs, None)

    def mask(self, probs: dict[str, np.ndarray], spacing: Sequence[float] | None = None,
             fusion: str | None = None) -> np.ndarray:
        """uint8 mask from the plane probabilities, with :attr:`settings`.

        ``spacing`` (mm) is the probabilities' grid: the weights' grid by default; pass the scan's own when
        the probabilities were resampled onto it (minimum lesion size in mm³). ``fusion`` overrides the
        setting (e.g. one plane alone).
        """
        s = self.settings
        return postprocess(probs, fusion=fusion or s["fusion"], threshold=float(s["threshold"]),
                           min_lesion_mm3=float(s["min_lesion_mm3"]), min_peak=float(s["min_peak"]),
                           large_mm3=float(s["large_mm3"]), large_threshold=float(s["large_threshold"]),
                           large_fragment_mm3=float(s["large_fragment_mm3"]),
                           spacing=self.manifest["spacing_mm"] if spacing is None else spacing,
                           connectivity=int(s["connectivity"]), weights=s["weights"] or None)


def predict_file(predictor: Predictor, path: Path, out_dir: Path, opts: dict[str, Any],
                 name: str | None = None) -> dict[str, Any]:
    """Segment one scan and write its outputs as ``<out_dir>/<name>_*`` (default name: its
    :func:`output_stem`); returns the summary row."""
    from raxnet.lesions import component_table

    start = time.perf_counter()
    register = bool(opts.get("register"))  # callers that predate --register pass no such key
    check_size(path)
    data, img = read_t1(path)
    if register:
        from raxnet import registration

        registration.check_registrable(data, img, path)
    else:
        on_grid, resampled = to_model_grid(data, img, predictor.manifest, path)
    loading = time.perf_counter()
    predictor.models  # noqa: B018  (loads the models once per run; not counted in the per-volume time)
    start += time.perf_counter() - loading
    reg = None
    if register:  # segmented in MNI space; every result goes back through the inverse transform
        grid_affine = np.asarray(predictor.manifest["affine"], dtype=float)
        reg, probs, mask = registration.register_and_segment(
            data, img, path, tuple(predictor.manifest["grid_shape"]), grid_affine,
            lambda v: (p := predictor.probabilities(v, source=str(path)), predictor.mask(p)),
            registration.Settings(transform=opts["registration"]))
        resampled = True
        # the probabilities go back through the inverse transform and are thresholded on the scan's grid
        # (as in Predictor.on_scan_grid)
        probs = {p: reg.to_native(v, affine=grid_affine, interpolation="linear") for p, v in probs.items()}
        mask = predictor.mask(probs, spacing=voxel_spacing(img.affine))
    else:
        probs, spacing = predictor.scan_probabilities(on_grid, resampled, img, str(path))
        mask = predictor.mask(probs, spacing=spacing)
    stem = name or output_stem(path)
    make_dirs((out_dir / stem).parent)
    mask_path = save_nifti(mask, img, out_dir / f"{stem}_desc-lesion_mask.nii.gz", dtype=np.uint8)
    if opts["save_probabilities"]:
        # The mean probability map is only built (and resampled back) when it is written.
        prob = np.mean([probs[p] for p in PLANES], axis=0).astype(np.float32)
        save_nifti(prob, img, out_dir / f"{stem}_desc-lesion_probability.nii.gz", dtype=np.float32)
    connectivity = int(predictor.settings["connectivity"])
    threshold = float(predictor.settings["threshold"])
    # How sure each lesion is: the three planes as a small ensemble (raxnet.uncertainty), their
    # probabilities now on the mask's grid.
    confidence = lesion_confidence(mask, probs, threshold, connectivity=connectivity)
    if reg is not None:  # volumes in native and MNI mm3
        lesions = registration.lesion_table(mask, reg, connectivity)
    else:
        lesions = component_table(mask, img.affine, connectivity=connectivity)
    if len(lesions):
        lesions = lesions.merge(confidence, on="label", how="left")
    else:
        lesions = lesions.reindex(columns=list(lesions.columns) + CONFIDENCE_COLUMNS[1:])
    save_csv(lesions, out_dir / f"{stem}_lesions.csv")
    spread = None
    if opts.get("save_uncertainty"):
        spread = plane_spread(probs)
        save_nifti(spread, img, out_dir / f"{stem}_desc-uncertainty.nii.gz", dtype=np.float32)
    voxel_mm3 = float(abs(np.linalg.det(img.affine[:3, :3])))
    extra = registration.write_outputs(reg, data, lesions, out_dir, stem, opts["qc"]) if reg is not None else {}
    seconds = time.perf_counter() - start
    summary = {
        "input": str(path),
        "mask": str(mask_path),
        "lesion_voxels": int(mask.sum()),
        "lesion_volume_mm3": round(float(mask.sum()) * voxel_mm3, 3),
        "n_lesions": int(len(lesions)),
        "lowest_plane_agreement": float(confidence["plane_agreement"].min()) if len(confidence) else np.nan,
        "resampled": resampled,
        **{k: predictor.settings[k] for k in ("fusion", "threshold", "min_lesion_mm3", "min_peak", "large_mm3",
                                              "large_threshold", "large_fragment_mm3", "connectivity", "tta",
                                              "brain_mask_mm", "bias_correct")},
        **extra,
        "seconds": round(seconds, 2),
    }
    save_csv(pd.DataFrame([summary]), out_dir / f"{stem}_summary.csv")
    if opts["qc"]:
        from raxnet.qc import qc_overlay

        # affine: the views in RAS orientation whatever the scan's grid (and the spacing from it)
        qc_overlay(data, mask, out_dir / f"{stem}_qc.png", title=f"{stem}: {int(mask.sum())} lesion voxels",
                   affine=img.affine)
        if spread is not None:
            qc_overlay(data, mask, out_dir / f"{stem}_uncertainty.png", affine=img.affine, heat=spread,
                       heat_max=MAX_SPREAD, heat_label="plane disagreement (SD of the 3 plane probabilities)",
                       title=f"{stem}: where the three plane models disagree")
    log.info("%s: %d lesion voxels in %d components, %.1f s", path.name, mask.sum(), len(lesions), seconds)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raxnet predict",
        description=(
            "Segment chronic stroke lesions in T1w scans registered to MNI152NLin2009aSym (the ATLAS v2.0 space).\n"
            "Writes per scan: <name>_desc-lesion_mask.nii.gz (uint8, the input's affine and header),\n"
            "<name>_lesions.csv (one row per lesion, with its mean probability and plane agreement),\n"
            "<name>_summary.csv and <name>_qc.png; for the whole run summary.csv (one row per input scan,\n"
            "failed ones included), report.html (the table and every scan's overlay) and log.txt.\n"
            "Outputs of scans in sub-folders of --input go to the same sub-folders of --output.\n"
            "Exit codes: 0 all scans done; 1 some scans failed (listed at the end); 2 nothing done / bad input;\n"
            "3 an output could not be written (full disk, read-only folder): the batch stops."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="a T1w NIfTI (.nii/.nii.gz) or a folder of them (searched recursively)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--weights", help="weight-set folder (default: $RAXNET_WEIGHTS or the shipped weights/demo)")
    parser.add_argument("--fusion", choices=[m for m in ALL_METHODS if m != "weighted"],
                        help="how the three planes are combined (default: the weight set's)")
    parser.add_argument("--threshold", type=float,
                        help="lesion where probability >= this (default: the weight set's)")
    parser.add_argument("--min-lesion-mm3", type=float,
                        help="remove lesions smaller than this many mm³, 0 keeps all (default: the weight set's)")
    parser.add_argument("--min-peak", type=float,
                        help="remove lesions whose highest probability is below this, 0 keeps all "
                             "(default: the weight set's)")
    parser.add_argument("--large-mm3", type=float,
                        help="redraw lesions of at least this many mm³ at --large-threshold, 0 = never "
                             "(default: the weight set's)")
    parser.add_argument("--large-threshold", type=float,
                        help="probability a large lesion is redrawn at (default: the weight set's)")
    parser.add_argument("--large-fragment-mm3", type=float,
                        help="drop pieces of a redrawn lesion smaller than this many mm³ (default: the weight set's)")
    parser.add_argument("--connectivity", type=int, choices=(6, 18, 26),
                        help="3D connectivity of a lesion, for clean-up and lesions.csv (default: the weight set's)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="left-right flip test-time augmentation (default: the weight set's)")
    mask = parser.add_mutually_exclusive_group()
    mask.add_argument("--brain-mask-mm", type=float,
                      help="zero everything farther than this from the MNI152 brain mask before normalising "
                           "(default: the weight set's, i.e. what its models were trained with)")
    mask.add_argument("--no-brain-mask", dest="brain_mask_mm", action="store_const", const="off",
                      help="no brain-mask step, whatever the weight set says")
    parser.add_argument("--save-probabilities", action="store_true", default=None, help="also write the fused probability map")
    parser.add_argument("--save-uncertainty", action="store_true", default=None,
                        help="also write <name>_desc-uncertainty.nii.gz (where the three plane models disagree: the "
                        "standard deviation of their probabilities, 0-0.47) and <name>_uncertainty.png")
    parser.add_argument("--batch-size", type=int, help="slices per prediction batch (default 32)")
    parser.add_argument("--no-qc", dest="qc", action="store_false", default=None, help="skip the QC overlay PNG(s)")
    parser.add_argument("--register", action=argparse.BooleanOptionalAction, default=None,
                        help="the scans are in their native space: register each to MNI152NLin2009aSym (ANTs), "
                             "segment there and map the results back onto the scan's own grid (default off)")
    parser.add_argument("--registration", choices=("affine", "syn"),
                        help="with --register: rigid + affine (default), or + a lesion-masked SyN stage")
    parser.add_argument("--bias-correct", action=argparse.BooleanOptionalAction, default=None,
                        help="ANTs N4 bias-field correction of each scan after the brain mask, on the weights' grid "
                             "(default: the weight set's, i.e. what its models were trained with; a few seconds per scan)")
    parser.add_argument("--config", help="TOML configuration file; its [predict] section sets the defaults")
    add_verbose(parser)
    return parser


def predict_batch(predictor: Predictor, inputs: Sequence[Path], out_dir: Path, opts: dict[str, Any],
                  root: str | Path | None = None) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Segment every input (going on past failures), then write ``summary.csv`` (one row per input,
    failed ones included: :data:`BATCH_COLUMNS`) and ``report.html`` in ``out_dir``; everything logged is
    appended to ``out_dir/log.txt``. Outputs mirror each input's folder relative to ``root``
    (:func:`output_names`). A single input that fails raises (nothing else to report); an output that
    cannot be written (:class:`OutputError`, full disk...) stops the batch."""
    from raxnet.report import PREDICT_SUMMARY, write_predict_report

    names = output_names(inputs, root)
    done, failed, rows = [], [], []
    with stage_log(out_dir, "raxnet predict"):
        for path, name in progress(list(zip(inputs, names)), desc="predict", unit="scan",
                                   disable=True if len(inputs) < 2 else None):
            row = {"name": name, "input": str(path)}
            try:
                result = predict_file(predictor, path, out_dir, opts, name=name)
            except OutputError:
                raise  # the machine, not this scan: every later scan would fail the same way
            except RaxnetError as exc:
                if len(inputs) == 1:
                    raise
                log.error("%s", exc)
                failed.append((path, str(exc)))
                rows.append({**row, "status": "failed", "error": str(exc)})
                continue
            done.append(result)
            rows.append({**row, "status": "ok", "error": "", **result})
        table = pd.DataFrame(rows).reindex(columns=BATCH_COLUMNS)
        table = table.astype({"lesion_voxels": "Int64", "n_lesions": "Int64"})  # counts stay integers beside failures
        save_csv(table, out_dir / PREDICT_SUMMARY)
        report = write_predict_report(out_dir)
        log.info("%d scan(s) segmented, %d failed: %s, %s", len(done), len(failed), out_dir / PREDICT_SUMMARY, report)
    return done, failed


def _env_flag(name: str) -> bool | None:
    """``1/true/yes/on`` -> True, ``0/false/no/off`` -> False, unset or empty -> None (Docker switches)."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={os.environ[name]!r}: expected 1 or 0")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``raxnet predict`` (``RAXNET_REGISTER`` / ``RAXNET_REGISTRATION`` in the environment
    set ``--register`` / ``--registration`` when the flags are not given, as ``docker compose`` does)."""
    from raxnet.config import load_config, override, section, validate

    args = build_parser().parse_args(argv)
    setup_console(args.verbose)
    cfg = load_config(args.config)
    validate(cfg)
    opts = section(cfg, "predict", DEFAULTS)
    override(opts, weights=args.weights, save_probabilities=args.save_probabilities, batch_size=args.batch_size,
             qc=args.qc, save_uncertainty=args.save_uncertainty, brain_mask_mm=args.brain_mask_mm,
             register=_env_flag("RAXNET_REGISTER"),
             bias_correct=_env_flag("RAXNET_BIAS_CORRECT"), registration=os.environ.get("RAXNET_REGISTRATION") or None)
    override(opts, register=args.register, registration=args.registration, bias_correct=args.bias_correct)
    if opts["registration"] not in ("affine", "syn"):
        raise ConfigError(f"[predict] registration must be affine or syn, got {opts['registration']!r}")
    inputs = find_inputs(args.input)
    overrides = dict(fusion=args.fusion, threshold=args.threshold, min_lesion_mm3=args.min_lesion_mm3,
                     min_peak=args.min_peak, large_mm3=args.large_mm3, large_threshold=args.large_threshold,
                     large_fragment_mm3=args.large_fragment_mm3, connectivity=args.connectivity, tta=args.tta,
                     brain_mask_mm=opts["brain_mask_mm"], bias_correct=opts["bias_correct"])
    predictor = Predictor(opts["weights"] or None, batch_size=opts["batch_size"], overrides=overrides)
    out_dir = Path(args.output)
    root = Path(args.input) if Path(args.input).is_dir() else None
    done, failed = predict_batch(predictor, inputs, out_dir, opts, root=root)
    if done:
        print(f"{len(done)} scan(s) segmented into {out_dir}/ "
              f"({np.mean([d['seconds'] for d in done]):.1f} s per scan)")
    if failed:
        print(f"{len(failed)} scan(s) failed:")
        for path, msg in failed:
            print(f"  {msg}" if str(path) in msg else f"  {path}: {msg}")
        return EXIT_BAD_INPUT if not done else EXIT_SOME_FAILED
    return 0
