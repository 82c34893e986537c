#!/usr/bin/env python
"""Stage 03 — normalised T1w + mask volumes -> memory-mappable 2D slice stacks per plane (see --help)."""
from raxnet.cli_common import run_cli
from raxnet.slices import main

if __name__ == "__main__":
    run_cli(main)
