#!/usr/bin/env python
"""Stage 07 — train one model per plane and outer validation fold, evaluate it on the fold (see --help)."""
from raxnet.cli_common import run_cli
from raxnet.training import main

if __name__ == "__main__":
    run_cli(main)
