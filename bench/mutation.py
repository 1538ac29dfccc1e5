"""Mutation testing as a measure of the suite (not CI): mutmut over the modules whose
behaviour the README promises, each with the fastest tests that cover it.

    .venv/bin/pip install -e '.[mutation]'
    .venv/bin/python bench/mutation.py                  # every target, one after another
    .venv/bin/python bench/mutation.py tokens sqlite    # some targets
    .venv/bin/python bench/mutation.py --report         # the last results, without running

Each target runs in a work directory of its own (`bench/results/mutation/<target>/`: a
copy of src/, tests/ and pyproject.toml with a `[tool.mutmut]` section), so the checkout
is never touched and targets can run side by side. The tests run in mutmut's forked
processes: code that the tests run in a subprocess (`python -m smartgen …`) imports the
unmutated package, so the selections below are the in-process tests. The summary prints
killed / survived per target against the target of 85 % killed, and the survivors' names
(`mutmut show NAME` in the work directory prints a mutant's diff).

mutmut imports the package once and forks a process per mutant, so a function that runs
only at import time (repository.py's `_usage_statement`, which builds the statements)
runs unmutated under every one of its mutants: they "survive" untested. `--fresh PATTERN…`
reruns the survivors (and the mutants no test reached) whose names match one (fnmatch)
each in a new process that picks the mutant before importing anything, with the target's
tests (or `--tests`); those that fail there count as killed in the summary, those that
pass as survived (`fresh.json` in the work directory keeps the verdicts).
With `--new-tests` the checkout's tests/ replace the run's copy first: how the tests
written for a run's survivors are shown to kill them, without a whole new run:

    .venv/bin/python bench/mutation.py sqlite --fresh '*_usage_statement*' \
        --tests 'tests/test_store_contract.py::test_usage_is_summed_by_the_store_per_group[sqlite]'

Two stages, for a target whose full selection starts servers (`generation-control`: its
HTTP tests start Redis, the API and a worker, ~45 s a mutant, hours for the module): such a
target names a fast selection (`fast`: in-process tests on a real store and Redis, no API
or worker), which mutmut runs for every mutant (stage 1); then the survivors are rerun each
in a fresh process (`--fresh '*'`, as above) against the target's full selection (stage 2),
so a mutant that only the HTTP-level tests kill counts as killed. `--fast-only` stops after
stage 1 (stage 2 can follow later: `--fresh '*'`; `--fresh … --tests …` picks other tests).
A target without `fast` runs its full selection under mutmut, as before.

    .venv/bin/python bench/mutation.py generation-control --max-children 1 --fast-only
    .venv/bin/python bench/mutation.py generation-control --fresh '*'     # stage 2
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "results" / "mutation"
TARGET_SCORE = 0.85


@dataclass(frozen=True)
class Target:
    name: str
    files: tuple[str, ...]  # globs under src/, as mutmut's only_mutate takes them
    tests: tuple[str, ...]  # pytest arguments: the test selection
    # A quicker selection for mutmut's run (stage 1); the survivors then meet `tests`,
    # each in a fresh process (stage 2). None: mutmut runs `tests`.
    fast: tuple[str, ...] | None = None

    @property
    def first_stage(self) -> tuple[str, ...]:
        return self.fast if self.fast is not None else self.tests


# The default worker path and one store (the other parametrisations run the same code),
# and no test whose system runs in subprocesses (they import the unmutated package).
IN_PROCESS = (
    "-k",
    "not stock-worker and not sqlite and not postgresql and not real_processes "
    "and not offline_drafts",
)

TARGETS = [
    Target(
        "tokens",
        ("src/smartgen/auth/tokens.py",),
        ("tests/test_tokens.py", "tests/test_token_details.py"),
    ),
    Target(
        "sqlite",
        (
            "src/smartgen/store/sql/repository.py",
            "src/smartgen/store/sql/sqlite.py",
            "src/smartgen/store/sql/sqlite_pool.py",
            "src/smartgen/store/sql/schema.py",
            "src/smartgen/store/sql/url.py",
        ),
        (
            "tests/test_store_contract.py",
            "tests/test_sql_details.py",
            "tests/test_config.py",
            "-k",
            "not mongodb and not postgresql and not stockpool",
        ),
    ),
    # generation/, one module a target (the tests that cover it start real servers: hours
    # on two cores for all of it); `generation` runs them one after another. router.py is
    # not a target: mutmut does not mutate decorated functions, and every route is one.
    Target(
        "generation-service",
        ("src/smartgen/generation/service.py",),
        (
            "tests/test_control_units.py",
            "tests/test_control_details.py",
            "tests/test_service_details.py",
            "tests/test_api.py",
            "tests/test_job_control.py",
            *IN_PROCESS,
        ),
        fast=(
            "tests/test_control_units.py",
            "tests/test_control_details.py",
            "tests/test_service_details.py",
        ),
    ),
    Target(
        "generation-control",
        ("src/smartgen/generation/control.py",),
        (
            "tests/test_control_units.py",
            "tests/test_control_details.py",
            "tests/test_job_control.py",
            *IN_PROCESS,
        ),
        fast=("tests/test_control_units.py", "tests/test_control_details.py"),
    ),
    Target(
        "generation-reconcile",
        ("src/smartgen/generation/reconcile.py",),
        ("tests/test_reconcile.py", "tests/test_batch_runner.py"),
    ),
    # Stage 1: tasks.py one delivery at a time (8 s in all); stage 2: the worker's tests
    # (test_worker.py, test_readme_claims.py: 71 s, the API and a worker in process).
    Target(
        "generation-tasks",
        ("src/smartgen/generation/tasks.py",),
        (
            "tests/test_task_details.py",
            "tests/test_worker.py",
            "tests/test_readme_claims.py",
            *IN_PROCESS,
        ),
        fast=("tests/test_task_details.py",),
    ),
]


GROUPS = {"generation": [t.name for t in TARGETS if t.name.startswith("generation-")]}


def mutmut_config(target: Target) -> str:
    def toml_list(items: tuple[str, ...] | list[str]) -> str:
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f"only_mutate = {toml_list(target.files)}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(target.first_stage)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
        "use_git_change_detection = false\n"
        'also_copy = [".env.example", "README.md", "docs"]\n'
    )


def prepare(target: Target) -> Path:
    work = WORK / target.name
    shutil.rmtree(work / "mutants", ignore_errors=True)  # a fresh run: no stale verdicts
    fresh_file(work).unlink(missing_ok=True)
    for name in ("src", "tests", "docs"):
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.copytree(
            ROOT / name,
            work / name,
            ignore=shutil.ignore_patterns("__pycache__", "node_modules", "*.pyc"),
        )
    for name in (".env.example", "README.md"):  # read by the settings' tests
        shutil.copy(ROOT / name, work / name)
    (work / "pyproject.toml").write_text(
        (ROOT / "pyproject.toml").read_text() + mutmut_config(target)
    )
    return work


def mutmut(work: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [str(binary), *args], cwd=work, env=env, text=True, capture_output=capture, check=False
    )


def results(work: Path) -> dict[str, list[str]]:
    """Mutant names by outcome, as `mutmut results --all true` lists them."""
    out = mutmut(work, "results", "--all", "true", capture=True).stdout
    by_outcome: dict[str, list[str]] = {}
    for line in out.splitlines():
        match = re.match(r"\s*(\S+): (.+)$", line)
        if match:
            by_outcome.setdefault(match.group(2).strip(), []).append(match.group(1))
    return by_outcome


def fresh_file(work: Path) -> Path:
    return work / "fresh.json"


def fresh_verdicts(work: Path) -> dict[str, str]:
    """Survivors rerun in a fresh process (`--fresh`): name → "killed" or "survived"."""
    path = fresh_file(work)
    return json.loads(path.read_text()) if path.exists() else {}


def run_fresh(
    target: Target, work: Path, patterns: list[str], *, new_tests: bool = False
) -> dict[str, str]:
    """Each survivor matching one of `patterns` in a new pytest process whose environment names
    the mutant before the package is imported (mutmut's trampolines read it at each
    call), from the work directory's mutated tree; `new_tests`: with the checkout's tests
    (written since the run) in place of the run's copy."""
    if new_tests:
        shutil.rmtree(work / "mutants" / "tests")
        shutil.copytree(
            ROOT / "tests",
            work / "mutants" / "tests",
            ignore=shutil.ignore_patterns("__pycache__", "node_modules", "*.pyc"),
        )
    verdicts = fresh_verdicts(work)
    by_outcome = results(work)
    # A mutant no test of the run reached ("no tests") meets the selection too: under a
    # fast first stage, the full selection may reach it.
    survivors = by_outcome.get("survived", []) + by_outcome.get("no tests", [])
    env = {**os.environ, "PYTHONPATH": "src", "PYTHONUNBUFFERED": "1"}
    for name in survivors:
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
             "-p", "no:randomly", *target.tests],
            cwd=work / "mutants", env={**env, "MUTANT_UNDER_TEST": name},
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        # pytest: 1 = tests failed (killed); 0 = all passed; anything else is no verdict.
        verdict = {0: "survived", 1: "killed"}.get(run.returncode, f"exit {run.returncode}")
        verdicts[name] = verdict
        print(f"fresh: {name}: {verdict}", flush=True)
        fresh_file(work).write_text(json.dumps(verdicts, indent=2))
    return verdicts


def summary(target: Target, work: Path) -> dict[str, object]:
    by_outcome = results(work)
    fresh = fresh_verdicts(work)
    # A fresh verdict replaces the run's "survived" or "no tests" (it ran tests).
    for outcome in ("survived", "no tests"):
        for name in by_outcome.pop(outcome, []):
            verdict = {"killed": "killed", "survived": "survived"}.get(fresh.get(name, ""))
            by_outcome.setdefault(verdict or outcome, []).append(name)
    killed = len(by_outcome.get("killed", [])) + len(by_outcome.get("timeout", []))
    survived = by_outcome.get("survived", [])
    tested = killed + len(survived)
    score = killed / tested if tested else 0.0
    return {
        "target": target.name,
        "killed": killed,
        "survived": len(survived),
        "not run": sum(len(v) for k, v in by_outcome.items() if k == "not checked"),
        "no tests": len(by_outcome.get("no tests", [])),
        "score": round(score, 4),
        "meets_target": score >= TARGET_SCORE,
        "survivors": survived,
        "other": {k: len(v) for k, v in by_outcome.items() if k not in ("killed", "survived")},
    }


def only_tests(target: Target, tests: list[str]) -> Target:
    """The target with another test selection (`--tests`): a quicker, partial measure."""
    return Target(target.name, target.files, tuple(tests))  # no second stage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=", ".join(t.name for t in TARGETS))
    parser.add_argument("--report", action="store_true", help="print the last results only")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument(
        "--tests", nargs="+", help="run these tests instead of the target's selection"
    )
    parser.add_argument(
        "--fresh",
        nargs="+",
        metavar="PATTERN",
        help="rerun the last run's survivors matching a PATTERN, each in a fresh process",
    )
    parser.add_argument(
        "--fast-only",
        action="store_true",
        help="a target with a fast selection: run it only (stage 1), not the survivors' rerun",
    )
    parser.add_argument(
        "--new-tests",
        action="store_true",
        help="with --fresh: use the checkout's tests/ (tests written since the run)",
    )
    args = parser.parse_args()
    names = [n for a in args.targets for n in GROUPS.get(a, [a])]
    wanted = [t for t in TARGETS if not names or t.name in names]
    if args.tests:
        wanted = [only_tests(t, args.tests) for t in wanted]
    unknown = set(names) - {t.name for t in TARGETS}
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    rows = []
    for target in wanted:
        work = WORK / target.name
        if args.fresh:
            run_fresh(target, work, args.fresh, new_tests=args.new_tests)
        elif not args.report:
            work = prepare(target)
            started = time.monotonic()
            mutmut(work, "run", "--max-children", str(args.max_children))
            print(f"{target.name}: {time.monotonic() - started:.0f} s", flush=True)
            if target.fast is not None and not args.fast_only:
                # Stage 2: what the fast tests left, against the full selection.
                run_fresh(target, work, ["*"])
                print(f"{target.name}, both stages: {time.monotonic() - started:.0f} s")
        if work.exists():
            rows.append(summary(target, work))
    header = f"{'target':<12} {'killed':>7} {'survived':>9} {'score':>7}"
    print(f"\n{header}  (target {TARGET_SCORE:.0%})")
    for row in rows:
        print(
            f"{row['target']:<12} {row['killed']:>7} {row['survived']:>9} "
            f"{float(str(row['score'])):>7.1%}  {'ok' if row['meets_target'] else 'BELOW'}"
        )
        for name in row["survivors"]:  # type: ignore[attr-defined]
            print(f"    survived: {name}")
        if row["other"]:
            print(f"    other outcomes: {row['other']}")
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "summary.json").write_text(json.dumps(rows, indent=2))
    return 0 if all(row["meets_target"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
