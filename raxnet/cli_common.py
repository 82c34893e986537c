"""Shared command-line plumbing for the stage scripts (argparse -> one library call)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Sequence

from raxnet.config import RUN_DEFAULTS, RunSettings, load_config, section, validate
from raxnet.errors import EXIT_IO, RaxnetError
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
    """Set up the console (``-v``), load ``--config`` (the whole file is checked) and apply the common flags:
    returns ``(cfg, run)``."""
    setup_console(bool(getattr(args, "verbose", False)))
    cfg = load_config(args.config)
    validate(cfg)
    given = dict(cfg.get("run") or {})
    for key in ("work_dir", "data_root", "seed", "jobs"):
        if getattr(args, key, None) is not None:
            given[key] = getattr(args, key)
    run = section({"run": given}, "run", RUN_DEFAULTS)
    if run["jobs"] is not None and run["jobs"] < 1:
        run["jobs"] = max(1, os.cpu_count() or 1)
    return cfg, RunSettings(run, set(given))


def _close_progress_bars() -> None:
    """End the progress bars an error interrupted, so the ``error:`` line starts a line of its own."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a CLI ``main``: a :class:`RaxnetError` prints one ``error:`` line per problem and exits with its
    code (2, or 3 for an output that cannot be written); an ``OSError`` (full disk, read-only or missing
    folder) prints one line naming the file and exits 3. Exit codes: :mod:`raxnet.errors`."""
    from raxnet.io import os_error_message

    try:
        code = main(argv)
    except RaxnetError as exc:
        _close_progress_bars()
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        _close_progress_bars()
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        sys.exit(EXIT_IO)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
