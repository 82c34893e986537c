#!/usr/bin/env python
"""Stage 01 (data) — write an ATLAS v2.0-shaped synthetic dataset: the project's default data (see --help)."""
from raxnet.cli_common import run_cli
from raxnet.synthetic import main

if __name__ == "__main__":
    run_cli(main)
