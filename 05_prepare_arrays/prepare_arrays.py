#!/usr/bin/env python
"""Stage 05 — balanced streaming training batches for one plane and validation fold (see --help)."""
from raxnet.cli_common import run_cli
from raxnet.batches import main

if __name__ == "__main__":
    run_cli(main)
