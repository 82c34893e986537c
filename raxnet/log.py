"""Logging shared by every stage: the console, each stage's ``log.txt`` and progress bars.

* :func:`get_logger` — a logger under the ``raxnet`` namespace (console: stderr, INFO).
* :func:`setup_console` — what a command-line run shows: called once per CLI run (``resolve``) before
  TensorFlow is imported. By default TensorFlow's start-up banners (oneDNN, absl), its C++ INFO/WARNING
  lines and its Python warnings (``tf.function`` retracing) are hidden; ``-v`` shows them all and turns on
  raxnet's DEBUG messages.
* :func:`stage_log` — while a stage runs, everything raxnet logs is also appended to
  ``<stage folder>/log.txt`` (timestamps, no progress bars, no terminal escape codes); a stage that fails
  before writing any output leaves no folder behind.
* :func:`progress` — tqdm with the project's default: bars only on a terminal (a redirected console gets the
  log lines, not carriage returns and cursor movements).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.abc
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_NAME = "log.txt"
#: CSI/OSC escape sequences and carriage returns: never written to a log file.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\r")


def get_logger(name: str) -> logging.Logger:
    """Return a logger under the ``raxnet`` namespace, configured once to stderr."""
    root = logging.getLogger("raxnet")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(name if name.startswith("raxnet") else f"raxnet.{name}")


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, shown only when stderr is a terminal (unless ``disable`` is given)."""
    kwargs.setdefault("disable", None)  # tqdm: None = off on a non-TTY
    return tqdm(iterable, **kwargs)


# ------------------------------------------------------------------------------------------ console


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's import with file descriptor 2 captured.

    TensorFlow's C++ runtime prints banners (``oneDNN custom operations are on``, ``All log messages before
    absl::InitializeLog()``) to fd 2 before its logging is configured, so TF_CPP_MIN_LOG_LEVEL cannot hide
    them. What was captured is dropped when the import succeeds and printed when it fails.
    """

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                self._inner.exec_module(module)
            except BaseException:
                os.dup2(saved, 2)
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))
                raise
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        module.__loader__ = self._inner  # transparent afterwards
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Meta-path hook: the first ``import tensorflow`` (also via keras) goes through :class:`_QuietLoader`."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "tensorflow":
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowFinder)]
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec.loader)
        return spec


def setup_console(verbose: bool = False) -> None:
    """Configure the console of a command-line run (call before TensorFlow is imported).

    Default: raxnet INFO messages; TensorFlow's start-up banners, C++ INFO/WARNING lines
    (``TF_CPP_MIN_LOG_LEVEL=2`` unless already set) and Python-level warnings (``tf.function`` retracing,
    absl) hidden. ``verbose``: raxnet DEBUG messages and everything TensorFlow prints.
    """
    get_logger("raxnet").setLevel(logging.DEBUG if verbose else logging.INFO)
    level = logging.NOTSET if verbose else logging.ERROR
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(level)
    if verbose:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowFinder)]
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


# ------------------------------------------------------------------------------------------ log files


class _PlainFormatter(logging.Formatter):
    """Timestamped lines without terminal escape codes or carriage returns."""

    def format(self, record: logging.LogRecord) -> str:
        return _ESCAPES.sub("", super().format(record))


def command_line() -> str:
    """The command as typed: ``raxnet split --work-dir W`` (not ``.../raxnet/__main__.py split ...``)."""
    head = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if head in ("__main__.py", "raxnet"):
        head = "raxnet"
    return " ".join([head, *sys.argv[1:]])


def _has_outputs(folder: Path) -> bool:
    # record.json is the stage's "running" mark (raxnet.record), not an output
    return any(p.is_file() and p.name not in (LOG_NAME, "record.json") for p in folder.rglob("*"))


@contextlib.contextmanager
def stage_log(folder: str | Path, title: str) -> Iterator[Path]:
    """Append everything raxnet logs inside the block to ``folder/log.txt``.

    The run starts with a header line (time, ``title``, command line) and ends with ``finished`` or
    ``failed: <error>`` (the failure goes to the file only: the console gets run_cli's ``error:`` line).
    If ``folder`` did not exist and the block fails before writing any output, the folder is removed, so a
    failed stage leaves no empty folder behind.
    """
    folder = Path(folder)
    existed = folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOG_NAME
    root = get_logger("raxnet")
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(_PlainFormatter(_FORMAT, "%Y-%m-%d %H:%M:%S"))

    def _file_only(level: int, msg: str, *args: Any) -> None:
        handler.handle(root.makeRecord(root.name, level, __file__, 0, msg, args, None))

    when = datetime.datetime.now().isoformat(timespec="seconds")
    _file_only(logging.INFO, "=== %s started %s: %s", title, when, command_line())
    root.addHandler(handler)
    try:
        yield path
    except BaseException as exc:
        root.removeHandler(handler)
        _file_only(logging.ERROR, "=== %s failed: %s", title, str(exc) or type(exc).__name__)
        handler.close()
        if not existed and not _has_outputs(folder):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    root.removeHandler(handler)
    _file_only(logging.INFO, "=== %s finished", title)
    handler.close()
