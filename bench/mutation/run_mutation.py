#!/usr/bin/env python
"""Mutation-testing benchmark (issue 14): mutmut over the core modules, one module at a time.

For each module a sandbox ``<work>/<label>/<module>/`` gets a copy of ``raxnet/``, the fast test files that
cover that module (``MODULES``), ``weights/`` and ``configs/`` (from the working tree, or from a git
revision with ``--rev``) and a ``setup.cfg`` that tells mutmut to mutate only ``raxnet/<module>.py`` and to
select tests from those files only. mutmut then runs in the sandbox (its ``mutants/`` copy stays there,
under the git-ignored ``work/``) at ``nice -n 19`` with two workers (``--max-children``, default 2: the
2-core machine; niced, so a training run beside it keeps the CPU). The pytest plugin ``mutmut_speedups.py``
(this folder) freezes the imported heap before mutmut forks a mutant's test run and runs the fastest tests
first; ``--plain`` leaves it out.

Writes to ``--out`` (default ``bench/results/mutation_<date>/<label>/``) ``<module>.json`` per module run (a
later run of some modules replaces only theirs), and from all of them:
``summary.csv`` (per module: mutants, killed, survived, timeout, other, judged equivalent, score, seconds),
``summary.md`` (the same as a table), ``survivors.md`` (every surviving mutant with its diff, and the reason
where ``bench/mutation/equivalent.toml`` judges it equivalent).

Score = killed / (mutants - judged-equivalent survivors - mutants no selected test runs). Timeouts count as
killed (the mutant made a test hang, which a user would notice), as mutmut itself counts them.

    make mutation                                 # all modules, working tree
    python bench/mutation/run_mutation.py --modules metrics,planes --label after
    python bench/mutation/run_mutation.py --rev 2bb47c5 --label before
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

#: module of raxnet/ -> the fast test files that cover it (tests/...). Only these run against its mutants.
MODULES: dict[str, list[str]] = {
    "metrics": ["test_metrics.py", "test_components.py"],
    "postprocess": ["test_postprocess.py"],
    "postprocess_selection": ["test_postprocess_selection.py"],
    "planes": ["test_planes.py", "test_inference.py"],
    "intensity": ["test_intensity.py", "test_brainmask.py"],
    "inference": ["test_inference.py"],
    "losses": ["test_losses.py"],
    "splitting": ["test_splitting.py"],
    "folds": ["test_folds.py"],
    "batches": ["test_batches.py"],
    # the fast geometry tests only: tests/test_predict.py runs the shipped networks end to end (about a minute
    # per mutant, hours for the module), so it is not run per mutant
    "predict": ["test_predict_geometry.py"],
}
#: extra pytest arguments per module: the Keras fit test of test_batches.py exercises raxnet.datasets (the
#: PyDataset workers), not raxnet.batches, and would make every mutant pay for a TensorFlow training step.
#: The one-error-line CLI tests check main() (not mutated) and read stderr, where a console handler left from
#: mutmut's in-process stats run by an earlier test writes a logging error; they are left out too.
PYTEST_ARGS: dict[str, list[str]] = {
    "batches": ["-k", "not keras_fit and not one_error_line"],
    "folds": ["-k", "not one_error_line"],
}
#: modules mutated only in part: glob patterns of the mutant names to run (the rest is not mutated).
#: predict: its geometry (field-of-view check, resampling to and from the weights' grid) and predict_file
#: (mask back on the input grid, lesion volume); the CLI, batch loop and registration are left out.
MUTANT_FILTER: dict[str, list[str]] = {
    "predict": ["raxnet.predict.x__fov_coverage__mutmut_*", "raxnet.predict.x__is_oblique__mutmut_*",
                "raxnet.predict.x_to_model_grid__mutmut_*", "raxnet.predict.x_back_to_input_grid__mutmut_*",
                "raxnet.predict.x_predict_file__mutmut_*"],
}
#: How mutmut forks a worker per mutant. Modules whose tests run TensorFlow use a fork server: forking the
#: main process after TensorFlow has run (stats collection) leaves its thread pools dead in the child, so
#: the tests hang and every mutant would "time out".
FORKSERVER = {"planes", "inference", "losses"}
#: functions left out of the mutation (figure styling and the argparse front end: text a user reads, not
#: numbers the pipeline computes; main() only parses flags into the configuration and calls run()).
SKIP_FUNCTIONS: dict[str, list[str]] = {
    "splitting": ["main", "plot_split"],
    "folds": ["main", "plot_balance", "plot_volume_balance", "_bars"],
    "batches": ["main"],
}
SUPPORT = ["conftest.py", "html_checks.py"]
COPY_DIRS = ["raxnet", "weights", "configs"]
COPY_FILES = ["pyproject.toml"]
KILLED = {"killed", "timeout", "caught by type check", "segfault"}


def populate(sandbox: Path, module: str, rev: str | None) -> list[str]:
    """Fill ``sandbox`` with the sources and the module's test files; returns the test paths used."""
    tests = list(MODULES[module])
    if rev:
        names = COPY_DIRS + COPY_FILES + [f"tests/{t}" for t in SUPPORT]
        listed = subprocess.run(
            ["git", "ls-tree", "-r", "--name-only", rev, "tests"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.split()
        tests = [t for t in dict.fromkeys(tests) if f"tests/{t}" in listed]
        names += [f"tests/{t}" for t in tests]
        archive = subprocess.run(["git", "archive", rev, *names], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(sandbox)], input=archive, check=True)
    else:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for d in COPY_DIRS:
            shutil.copytree(ROOT / d, sandbox / d, ignore=ignore)
        for f in COPY_FILES:
            shutil.copy2(ROOT / f, sandbox / f)
        (sandbox / "tests").mkdir()
        tests = [t for t in dict.fromkeys(tests) if (ROOT / "tests" / t).exists()]
        for t in SUPPORT + tests:
            shutil.copy2(ROOT / "tests" / t, sandbox / "tests" / t)
    return [f"tests/{t}" for t in tests]


def write_config(sandbox: Path, module: str, tests: list[str], speedups: bool = True) -> None:
    extra = PYTEST_ARGS.get(module, []) + (["-p", "mutmut_speedups"] if speedups else [])
    lines = [
        "[mutmut]",
        "source_paths = raxnet",
        f"only_mutate = raxnet/{module}.py",
        "also_copy =\n    weights\n    configs",
        "pytest_add_cli_args =\n    -p\n    no:cacheprovider\n    -q\n    -o\n    addopts=\n    -m\n    not slow"
        + "".join(f"\n    {a}" for a in extra),
        "pytest_add_cli_args_test_selection =\n" + "\n".join(f"    {t}" for t in tests),
        "use_git_change_detection = false",
        f"process_isolation = {'forkserver' if module in FORKSERVER else 'fork'}",
        "track_dependencies = false",
        # mutmut's time limits per mutant: wall (estimated test seconds + constant) x multiplier (fork server: half
        # its CPU limit, twice that). The default constant 1 s gives a 15 s wall limit to a mutant whose tests take
        # 0.1 s: on a 2-core machine busy with a training run (mutmut niced to 19) such a child can wait that long
        # for the CPU and would be counted as a timeout (killed). 10 s: >= 150 s wall; a real hang costs that.
        "timeout_constant = 10",
        # the fork server logs each mutant's seconds ("Completed <mutant>: exit=N (1.234s)") to mutants/mutmut-debug.log
        "log_to_file = true",
    ]
    (sandbox / "setup.cfg").write_text("\n".join(lines) + "\n")


def mutmut(sandbox: Path, *args: str, log=None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mutmut")
    # PYTHONPATH: bench/mutation, for the pytest plugin mutmut_speedups (-p mutmut_speedups, see write_config)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
               TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="",
               MPLBACKEND="Agg", OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    cmd = ["nice", "-n", "19", str(exe), *args]
    if log is None:
        return subprocess.run(cmd, cwd=sandbox, env=env, capture_output=True, text=True)
    return subprocess.run(cmd, cwd=sandbox, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def load_equivalent() -> dict[str, str]:
    path = HERE / "equivalent.toml"
    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text())
    return {k: v for k, v in data.get("equivalent", {}).items()}


def run_module(module: str, args, out: Path, equivalent: dict[str, str]) -> dict:
    sandbox = Path(args.work) / args.label / module
    if not args.report_only and not args.rerun_survivors:
        if sandbox.exists():
            shutil.rmtree(sandbox)
        sandbox.mkdir(parents=True)
        tests = populate(sandbox, module, args.rev)
        write_config(sandbox, module, tests, speedups=not args.plain)
        head = subprocess.run(["git", "rev-parse", "--short", args.rev or "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
        started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        start = time.monotonic()
        with open(sandbox.parent / f"log_{module}.txt", "w") as log:
            proc = mutmut(sandbox, "run", "--max-children", str(args.max_children), *mutant_patterns(module, args.mutants),
                          log=log)
        (sandbox / "run.json").write_text(json.dumps({"seconds": time.monotonic() - start, "rc": proc.returncode,
                                                      "tests": tests, "commit": head, "started": started,
                                                      "workers": args.max_children, "speedups": not args.plain}))
    elif args.rerun_survivors:
        rerun_survivors(sandbox, module, args)
    info = json.loads((sandbox / "run.json").read_text())
    seconds, tests = info["seconds"] + info.get("rerun_seconds", 0.0), info["tests"]
    status: dict[str, str] = {}
    for line in mutmut(sandbox, "results", "--all", "true").stdout.splitlines():
        m = re.match(r"\s+(\S+__mutmut_\d+): (.+)$", line)
        if m and _selected(module, m.group(1), args.mutants):
            status[m.group(1)] = m.group(2).strip()
    counts = {"killed": 0, "survived": 0, "timeout": 0, "no tests": 0, "other": 0}
    # A run stopped early leaves mutants "not checked": they are reported (not_run) and left out of the score.
    not_run = sum(1 for st in status.values() if st == "not checked")
    status = {k: v for k, v in status.items() if v != "not checked"}
    survivors = []
    for name, st in sorted(status.items(), key=lambda kv: _natural(kv[0])):
        if st in ("killed", "caught by type check"):
            counts["killed"] += 1
        elif st in ("timeout", "segfault"):
            counts["timeout"] += 1
        elif st == "survived":
            counts["survived"] += 1
            survivors.append(name)
        elif st == "no tests":
            counts["no tests"] += 1
            survivors.append(name)
        else:
            counts["other"] += 1
            survivors.append(name)
    cached = {}
    if args.report_only or args.rerun_survivors:  # diffs of earlier reports of this sandbox (same mutant names)
        for earlier in [out / f"{module}.json", *sorted(ROOT.glob(f"bench/results/mutation_*/{args.label}/{module}.json"))]:
            if earlier.exists():
                cached.update({n: d for n, _, d, _ in json.loads(earlier.read_text())["_survivors"]})
    diffs = {n: cached[n] if n in cached else mutmut(sandbox, "show", n).stdout for n in survivors}
    per_mutant = [t for n, t in mutant_seconds(sandbox).items() if n in status]
    n_equiv = sum(1 for n in survivors if n in equivalent and status[n] == "survived")
    denominator = len(status) - n_equiv
    killed = counts["killed"] + counts["timeout"]
    score = killed / denominator if denominator else float("nan")
    return {
        "module": module, "mutants": len(status), "killed": counts["killed"], "timeout": counts["timeout"],
        "survived": counts["survived"], "no_tests": counts["no tests"], "other": counts["other"],
        "not_run": not_run, "equivalent": n_equiv, "raw_score": round(killed / len(status), 4) if status else float("nan"),
        "score": round(score, 4), "seconds": round(seconds), "mutmut_rc": info["rc"],
        "s_per_mutant": round(sum(per_mutant) / len(per_mutant), 2) if per_mutant else float("nan"),
        "workers": info.get("workers", 1), "speedups": info.get("speedups", False),
        "tests": " ".join(tests), "commit": info.get("commit", ""), "started": info.get("started", ""),
        "rerun_mutants": info.get("rerun_mutants", ""), "rerun_commit": info.get("rerun_commit", ""),
        "_survivors": [(n, status[n], diffs[n], equivalent.get(n)) for n in survivors],
    }


def mutant_seconds(sandbox: Path) -> dict[str, float]:
    """Wall-clock seconds of each mutant's test run, as mutmut recorded them: the fork runner in the ``.meta``
    files (``durations_by_key``), the fork server only in its debug log (``log_to_file``; the meta files get 0)."""
    seconds: dict[str, float] = {}
    for meta in (sandbox / "mutants").rglob("*.meta"):
        seconds.update({k: v for k, v in json.loads(meta.read_text()).get("durations_by_key", {}).items() if v})
    log = sandbox / "mutants" / "mutmut-debug.log"
    if log.exists():
        for m in re.finditer(r"Completed (\S+): exit=-?\d+ \(([\d.]+)s\)", log.read_text()):
            seconds[m.group(1)] = float(m.group(2))
    return seconds


def rerun_survivors(sandbox: Path, module: str, args) -> None:
    """Copy the module's test files from the working tree into an earlier run's sandbox and run only its
    surviving mutants not judged equivalent again (mutmut re-copies ``tests/`` into ``mutants/`` and re-collects its test statistics).

    For tests that were only added to since that run: a mutant killed then is killed by the larger set too.
    """
    if not (sandbox / "run.json").exists():
        raise SystemExit(f"{sandbox}: no earlier run to re-run the survivors of")
    tests = json.loads((sandbox / "run.json").read_text())["tests"]
    for t in SUPPORT + [Path(t).name for t in tests]:
        shutil.copy2(ROOT / "tests" / t, sandbox / "tests" / t)
    equivalent = load_equivalent()  # judged equivalent: no test can kill them, not worth re-running
    names = [m.group(1) for line in mutmut(sandbox, "results", "--all", "true").stdout.splitlines()
             if (m := re.match(r"\s+(\S+__mutmut_\d+): survived$", line)) and _selected(module, m.group(1), args.mutants)
             and m.group(1) not in equivalent]
    start = time.monotonic()
    if names:
        with open(sandbox.parent / f"log_{module}_rerun.txt", "w") as log:
            mutmut(sandbox, "run", "--max-children", str(args.max_children), *names, log=log)
    info = json.loads((sandbox / "run.json").read_text())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    info.update(rerun_seconds=info.get("rerun_seconds", 0.0) + time.monotonic() - start, rerun_mutants=len(names),
                rerun_commit=head.strip(),
                rerun_started=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    (sandbox / "run.json").write_text(json.dumps(info))


def mutant_patterns(module: str, only: list[str] | None = None) -> list[str]:
    """Glob patterns of the mutants to run: ``only`` (``--mutants``, for timing a sample), else MUTANT_FILTER,
    else every function but SKIP_FUNCTIONS (none: all)."""
    if only:
        return [p if p.startswith("raxnet.") else f"raxnet.{module}.{p}" for p in only]
    if module in MUTANT_FILTER:
        return MUTANT_FILTER[module]
    skip = SKIP_FUNCTIONS.get(module)
    if not skip:
        return []
    import ast

    tree = ast.parse((ROOT / "raxnet" / f"{module}.py").read_text())
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in skip:
            names.append(f"raxnet.{module}.x_{node.name}__mutmut_*")
        elif isinstance(node, ast.ClassDef):
            names += [f"raxnet.{module}.x\u01c1{node.name}\u01c1{f.name}__mutmut_*" for f in node.body
                      if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return names


def _selected(module: str, name: str, only: list[str] | None = None) -> bool:
    patterns = mutant_patterns(module, only)
    return not patterns or any(fnmatch.fnmatch(name, p) for p in patterns)


def _natural(name: str):
    head, _, num = name.rpartition("__mutmut_")
    return head, int(num) if num.isdigit() else 0


def write_report(rows: list[dict], out: Path, args, total_seconds: float) -> None:
    cols = ["module", "mutants", "killed", "timeout", "survived", "no_tests", "other", "not_run", "equivalent",
            "raw_score", "score", "seconds", "s_per_mutant", "workers", "speedups", "mutmut_rc", "tests", "commit",
            "started", "rerun_mutants", "rerun_commit"]
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    source = f"git revision {args.rev}" if args.rev else "working tree"
    md = [f"# Mutation testing ({args.label}), {dt.date.today().isoformat()}", "",
          f"mutmut {_version()}, source: {source}, workers per module below, niced; "
          f"mutmut run time summed over the modules {sum(r['seconds'] for r in rows) / 60:.1f} min "
          f"(s = wall-clock seconds of each module's `mutmut run`, 2-core machine shared with other work).", "",
          "score = (killed + timeout) / (mutants - survivors judged equivalent); raw = (killed + timeout) / mutants.",
          "mutants = mutants run; not run = mutants of a run stopped early (partial result, left out).",
          "s/mutant = mean wall-clock seconds of one mutant's test run as mutmut logged it (workers run side by side,"
          " so s is about mutants x s/mutant / workers plus mutmut's own start: mutant generation, stats, clean run).",
          "", "| module | mutants | killed | timeout | survived | no tests | not run | equivalent | raw | score | s "
          "| s/mutant | workers |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['timeout']} | {r['survived']} | "
                  f"{r['no_tests']} | {r.get('not_run', 0)} | {r['equivalent']} | {r['raw_score']:.1%} | "
                  f"{r['score']:.1%} | {r['seconds']} | {r.get('s_per_mutant', float('nan')):.2f} | "
                  f"{r.get('workers', 1)} |")
    (out / "summary.md").write_text("\n".join(md) + "\n")
    sv = [f"# Surviving mutants ({args.label})", ""]
    for r in rows:
        sv.append(f"## {r['module']} ({len(r['_survivors'])} not killed)")
        sv.append("")
        for name, st, diff, reason in r["_survivors"]:
            tag = f"equivalent: {reason}" if reason and st == "survived" else st
            sv.append(f"### `{name}` ({tag})")
            sv.append("```diff")
            sv.append("\n".join(diff.strip().splitlines()[1:]))
            sv.append("```")
        sv.append("")
    (out / "survivors.md").write_text("\n".join(sv) + "\n")


def _version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modules", default=",".join(MODULES), help="comma-separated (default: all)")
    p.add_argument("--rev", default=None, help="take raxnet/ and tests/ from this git revision")
    p.add_argument("--label", default="current")
    p.add_argument("--work", default=str(ROOT / "work" / "mutation"))
    p.add_argument("--out", default=None)
    p.add_argument("--max-children", type=int, default=2,
                   help="mutmut workers per module (default 2: the 2-core development machine)")
    p.add_argument("--plain", action="store_true",
                   help="without the pytest plugin bench/mutation/mutmut_speedups.py (gc.freeze, fastest tests "
                        "first), to time its effect")
    p.add_argument("--mutants", default=None,
                   help="comma-separated glob patterns of mutant names (e.g. 'x_run__mutmut_1?'): run and report only "
                        "these, to time a sample (one module)")
    p.add_argument("--rerun-survivors", action="store_true",
                   help="re-run only the survivors of an earlier run of the same --label against the current test "
                        "files (tests only added to since), then report the whole module")
    p.add_argument("--report-only", action="store_true",
                   help="re-read the results of an earlier run in the work dir (e.g. after editing equivalent.toml)")
    args = p.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    args.mutants = [m.strip() for m in args.mutants.split(",") if m.strip()] if args.mutants else None
    if args.mutants and len(modules) != 1:
        p.error("--mutants needs exactly one module")
    unknown = sorted(set(modules) - set(MODULES))
    if unknown:
        p.error(f"unknown modules: {', '.join(unknown)}")
    out = Path(args.out or ROOT / "bench" / "results" / f"mutation_{dt.date.today().isoformat()}" / args.label)
    out.mkdir(parents=True, exist_ok=True)
    equivalent = load_equivalent()
    rows = []
    start = time.monotonic()
    for module in modules:
        t0 = time.monotonic()
        print(f"[{module}] running mutmut ...", flush=True)
        row = run_module(module, args, out, equivalent)
        (out / f"{module}.json").write_text(json.dumps(row, indent=1))
        rows = [json.loads((out / f"{m}.json").read_text()) for m in MODULES if (out / f"{m}.json").exists()]
        print(f"[{module}] {row['mutants']} mutants, {row['killed'] + row['timeout']} killed, "
              f"{row['survived']} survived, score {row['score']:.1%} ({time.monotonic() - t0:.0f} s)", flush=True)
        write_report(rows, out, args, time.monotonic() - start)
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
