#!/usr/bin/env python
"""Stage 08 — three-plane fusion into 3D masks and evaluation on every hold-out subject (see --help)."""
from raxnet.cli_common import run_cli
from raxnet.fusion import main

if __name__ == "__main__":
    run_cli(main)
