"""pytest plugin for the mutation runs only (``run_mutation.py`` puts this folder on ``PYTHONPATH`` and passes
``-p mutmut_speedups``); it changes how fast a mutant's tests run, never what they check.

1. ``gc.freeze()`` once the tests are collected. In a fork-server run (the TensorFlow modules) the fork server
   imports TensorFlow/Keras and the test modules once (mutmut's default ``forkserver_warmup = collect``: a
   ``pytest --collect-only`` of the module's test files, no TensorFlow op run) and forks a child per mutant.
   Without a freeze every child's garbage collections walk that whole heap (millions of objects): pytest alone
   runs ``gc.collect()`` five times at the end of each session (its unraisable-exception check), which took
   about 0.9 s of a 1.0 s child that ran a single 0.05 s test. Frozen objects are skipped by the collector
   (and their pages stay shared with the fork server); objects created later are collected as usual.
2. In a mutant's run (``MUTANT_UNDER_TEST`` names a mutant), the fastest tests first: with ``-x`` a killed
   mutant stops at its first failing test. mutmut's fork runner sorts a mutant's tests by the durations of its
   stats run, which count only the test call, not its fixtures' setup (a test that reads a freshly computed
   fold assignment looks as fast as a by-hand check); its fork server does not sort them at all. This plugin
   times setup + call + teardown of each test during the stats run (``mutmut-speedups-durations.json``) and
   sorts by that (falling back to mutmut's ``mutmut-stats.json``).
"""

from __future__ import annotations

import gc
import json
import math
import os
from pathlib import Path


DURATIONS = Path("mutmut-speedups-durations.json")  # the working directory of mutmut's test runs is mutants/
_timed: dict[str, float] = {}


def pytest_runtest_logreport(report) -> None:
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        _timed[report.nodeid] = _timed.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session) -> None:
    if os.environ.get("MUTANT_UNDER_TEST") == "stats" and _timed:
        known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}  # stats of new tests only: merge
        DURATIONS.write_text(json.dumps({**known, **_timed}, indent=0))


def pytest_collection_modifyitems(session, config, items) -> None:
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    if DURATIONS.exists():
        durations = json.loads(DURATIONS.read_text())
    elif Path("mutmut-stats.json").exists():
        durations = json.loads(Path("mutmut-stats.json").read_text()).get("duration_by_test", {})
    else:
        return
    items.sort(key=lambda item: durations.get(item.nodeid, math.inf))  # stable: ties keep their order


def pytest_collection_finish(session) -> None:
    gc.freeze()
