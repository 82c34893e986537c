"""The ``raxnet`` command: one sub-command per task (the numbered stage scripts call the same code).

    raxnet demo            generate the synthetic ATLAS and run every stage (what `make demo` runs)
    raxnet predict         segment your own MNI-space T1w scans with a weight set
    raxnet export-weights  package the best fold per plane of a training run as a weight set
    raxnet report          (re)build <work-dir>/report.html, the one-page report of a run
    raxnet synth | dataset | split | convert | folds | arrays | model | train | fuse
                           the stages 01-08, same options as the scripts in 01_dataset/ ... 08_fusion/
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from raxnet import cli_common
from raxnet.cli_common import run_cli

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("raxnet.pipeline", "synthetic ATLAS -> stages 01-08 -> predict, with a final summary"),
    "predict": ("raxnet.predict", "segment T1w scans in MNI152NLin2009aSym space"),
    "export-weights": ("raxnet.weights_cli", "package trained plane models as a weight set"),
    "report": ("raxnet.report", "(re)build <work-dir>/report.html from the stages' outputs"),
    "synth": ("raxnet.synthetic", "01: write an ATLAS-shaped synthetic dataset"),
    "dataset": ("raxnet.dataset_info", "01: lesion information, slice tables, figures"),
    "split": ("raxnet.splitting", "02: stratified train / hold-out split"),
    "convert": ("raxnet.slices", "03: 3D volumes -> memory-mapped 2D slice stacks per plane"),
    "folds": ("raxnet.folds", "04: leakage-free stratified k-fold per subject"),
    "arrays": ("raxnet.batches", "05: balanced training batches for a plane and fold"),
    "model": ("raxnet.model_report", "06: build the models, parameters and FLOPs"),
    "train": ("raxnet.training", "07: train per plane and fold"),
    "fuse": ("raxnet.fusion", "08: three-plane fusion and 3D evaluation"),
}


def _usage() -> str:
    lines = ["usage: raxnet <command> [options]   (raxnet <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<15} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch to the sub-command's ``main``; errors print one line and exit non-zero."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        sys.exit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[name][0])
    cli_common.PROG = f"raxnet {name}"  # usage lines name the command the user typed
    run_cli(module.main, rest)
