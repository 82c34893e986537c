#!/usr/bin/env python
"""Stage 04 — leakage-free, stratified k-fold cross-validation of the train subjects (see --help)."""
from raxnet.cli_common import run_cli
from raxnet.folds import main

if __name__ == "__main__":
    run_cli(main)
