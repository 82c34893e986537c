"""What every stage's ``run(cfg, run, ...)`` is wrapped in: its log file and the run report.

Decorate a stage's ``run`` with ``@stage_run("<stage key>")`` (keys of :data:`raxnet.config.STAGE_DIRS`):
while it runs, everything raxnet logs is also appended to ``<work>/<stage folder>/log.txt``
(:func:`raxnet.log.stage_log`; a stage that fails before writing any output leaves no folder), and when it
succeeds ``<work>/report.html`` is written (stage 08) or refreshed (any other stage, if the report exists).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, TypeVar

from raxnet.config import STAGE_DIRS, stage_dir
from raxnet.log import get_logger, stage_log

log = get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
#: The stage that writes the run report; every other stage only refreshes an existing one.
REPORT_STAGE = "fusion"


def update_report(work: Path, key: str) -> Path | None:
    """Write (stage 08) or refresh (other stages, if it exists) ``<work>/report.html``.

    A report that cannot be built is logged with its traceback but does not fail the stage whose
    results are already on disk (``raxnet report`` rebuilds it).
    """
    from raxnet.report import REPORT_NAME, write_report

    if key != REPORT_STAGE and not (work / REPORT_NAME).is_file():
        return None
    try:
        return write_report(work)
    except Exception:  # noqa: BLE001 - the stage's own outputs are complete; see the docstring
        log.exception("run report not updated")
        return None


def stage_run(key: str) -> Callable[[F], F]:
    """Decorator for a stage's ``run(cfg, run, *args, **kwargs)``: log file + run report (see module doc)."""
    if key not in STAGE_DIRS:
        raise KeyError(f"unknown stage {key!r}")

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(cfg: Any, run: Any, *args: Any, **kwargs: Any) -> Any:
            work = Path(run["work_dir"])
            with stage_log(stage_dir(work, key), STAGE_DIRS[key]):
                result = fn(cfg, run, *args, **kwargs)
                update_report(work, key)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate
