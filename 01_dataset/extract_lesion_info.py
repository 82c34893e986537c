#!/usr/bin/env python
"""Stage 01 — lesion statistics, per-slice counts and figures of the labelled ATLAS subjects (see --help)."""
from raxnet.cli_common import run_cli
from raxnet.dataset_info import main

if __name__ == "__main__":
    run_cli(main)
