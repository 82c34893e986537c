#!/usr/bin/env python
"""Stage 02 — seeded, stratified 80/20 train / hold-out split of the subjects (see --help)."""
from raxnet.cli_common import run_cli
from raxnet.splitting import main

if __name__ == "__main__":
    run_cli(main)
