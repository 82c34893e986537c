#!/usr/bin/env python
"""Stage 06 — build RAX-Net and its rivals per plane; parameters and FLOPs per slice (see --help)."""
from raxnet.cli_common import run_cli
from raxnet.model_report import main

if __name__ == "__main__":
    run_cli(main)
