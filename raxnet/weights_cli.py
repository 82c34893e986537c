"""``raxnet export-weights``: package a training run's best fold per plane as a weight set."""

from __future__ import annotations

import argparse
from typing import Sequence

from raxnet.weights import export_weights, plane_folds, read_manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="raxnet export-weights",
        description="Copy <work-dir>/07_train/<model>/<plane>/fold_<k>/model.keras of the fold with the lowest "
        "inner-validation loss per plane (or, with --ensemble, of every fold) into OUT, with a weights.json manifest that `raxnet predict --weights OUT` reads. "
        "Its inference decisions (fusion, threshold, minimum lesion size and peak, connectivity, TTA) are those stage 08 chose "
        "on out-of-fold validation data (<work-dir>/08_fusion/postprocessing.json), else the defaults.",
    )
    parser.add_argument("--work-dir", required=True, help="work directory of a training run (stages 01 and 07)")
    parser.add_argument("--out", required=True, help="weight-set folder to write")
    parser.add_argument("--model", default="raxnet", help="model name under 07_train/ (default raxnet)")
    parser.add_argument("--note", default="", help="free text stored in the manifest (provenance)")
    parser.add_argument("--ensemble", action=argparse.BooleanOptionalAction, default=None,
                        help="every fold's model per plane (<plane>_fold<k>.keras; predict averages them) instead of "
                             "the fold with the lowest inner-validation loss (default: as stage 08 evaluated the "
                             "hold-out, its [fusion] ensemble)")
    args = parser.parse_args(argv)
    out = export_weights(args.work_dir, args.out, model=args.model, note=args.note, ensemble=args.ensemble)
    manifest = read_manifest(out)
    decisions = ", ".join(f"{k} {v}" for k, v in manifest["inference"].items() if k != "weights")
    folds = {p: plane_folds(e) for p, e in manifest["planes"].items()}
    print(f"weight set written to {out}/\nmodels: " + ", ".join(f"{p} fold {'+'.join(map(str, f))}" for p, f in folds.items())
          + f"\ninference: {decisions} (from {manifest['inference_source']['from']})")
    return 0
