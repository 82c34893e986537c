"""Shared command-line plumbing for the stage scripts (argparse -> one library call)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Sequence

from raxnet.config import RUN_DEFAULTS, load_config, override, section
from raxnet.errors import RaxnetError
from raxnet.log import setup_console


#: Program name for usage lines when a stage runs as ``raxnet <command>`` (set by :mod:`raxnet.cli`); ``None``
#: = argparse's default, the script's file name.
PROG: str | None = None


def stage_parser(description: str, *, data_root: bool = False, prog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with the options every stage accepts.

    ``--config`` names a TOML file (see ``configs/``); ``--work-dir``, ``--data-root``, ``--seed`` and
    ``--jobs`` override its ``[run]`` section.
    """
    parser = argparse.ArgumentParser(
        prog=prog or PROG, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="TOML configuration file (default: built-in defaults)")
    parser.add_argument("--work-dir", help="work directory; each stage writes <work-dir>/<stage folder>/ "
                        f"(default: the config's [run] work_dir, else {RUN_DEFAULTS['work_dir']})")
    if data_root:
        parser.add_argument("--data-root", help="ATLAS root: the folder that contains Training/ "
                            f"(default: the config's [run] data_root, else {RUN_DEFAULTS['data_root']})")
    parser.add_argument("--seed", type=int, help="random seed (same seed + input = identical outputs)")
    parser.add_argument("--jobs", type=int, help="parallel worker processes (default from config, 1)")
    add_verbose(parser)
    return parser


def add_verbose(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose``: debug messages and TensorFlow's start-up and tracing output (hidden by default)."""
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show debug messages and TensorFlow's own start-up/warning output")


def resolve(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Set up the console (``-v``), load ``--config`` and apply the common flags: returns ``(cfg, run)``."""
    setup_console(bool(getattr(args, "verbose", False)))
    cfg = load_config(args.config)
    run = section(cfg, "run", RUN_DEFAULTS)
    override(
        run,
        work_dir=getattr(args, "work_dir", None),
        data_root=getattr(args, "data_root", None),
        seed=getattr(args, "seed", None),
        jobs=getattr(args, "jobs", None),
    )
    if run["jobs"] is not None and run["jobs"] < 1:
        run["jobs"] = max(1, os.cpu_count() or 1)
    return cfg, run


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a CLI ``main``; a :class:`RaxnetError` becomes one ``error:`` line and exit code 2."""
    try:
        code = main(argv)
    except RaxnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
