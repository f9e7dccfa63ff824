"""Mutation score of the core modules: how many small injected bugs the tests that cover each module catch.

    .venv/bin/python -m bench.bench_mutation [--quick] [--sample N] [--modules nmea,outbox] [--seed S]

Cosmic Ray (PyPI: cosmic-ray) makes the mutants: one operator at one place each (a `<` that becomes `<=`, a
number that changes, an `and` that becomes `or`, ...). Each module is mutated in its own copy of the checkout
(Cosmic Ray edits files in place), and each mutant runs the module's own test files with `pytest -x`: a test
that fails kills it. Mutants no test can see by construction are left out before sampling: those inside type
annotations (the modules use `from __future__ import annotations`, so annotations are never evaluated) and
inside logging calls (they change only a log line's text). A fixed-seed random sample of the rest is run, so
a full run stays within the hour on two cores; the survivors of each module are
listed (file:line, operator, the mutated line) for a reader to judge: a survivor is a missing test or an
equivalent mutant. Survivors judged equivalent (no test, and no user, can tell them from the original: a
timing or CPU-only change, a flag the code already treats alike) are listed with the reason in
bench/mutation_equivalents.toml, matched by the original and mutated line's text (line numbers move); they are
printed apart and left out of the score, killed / (run - equivalent). Modules whose tests need PostGIS or
Mosquitto use the project-local services (scripts/services.py, ROADMON_* ports as for the tests). Exit 1 when a
module scores under TARGET.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from bench.common import description

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
TARGET = 0.80
EQUIVALENTS = ROOT / "bench" / "mutation_equivalents.toml"


@dataclass(frozen=True)
class Module:
    name: str
    path: str
    tests: tuple[str, ...]
    services: bool = False


MODULES = (
    Module("nmea", "edge_agent/gnss/nmea.py", ("tests/test_nmea.py", "tests/test_epochs.py")),
    Module("epochs", "edge_agent/gnss/epochs.py", ("tests/test_epochs.py", "tests/test_gnss_golden.py")),
    Module("kalman", "edge_agent/gnss/kalman.py", ("tests/test_kalman.py",)),
    Module("tracker", "edge_agent/perception/tracker.py",
           ("tests/test_tracker.py", "tests/test_tracker_classes.py", "tests/test_class_thresholds.py",
            "tests/test_events.py")),
    Module("geolocate", "edge_agent/perception/geolocate.py",
           ("tests/test_geolocate.py", "tests/test_events.py", "tests/test_tracker.py")),
    Module("events", "edge_agent/perception/events.py", ("tests/test_events.py", "tests/test_pipeline.py")),
    Module("outbox", "edge_agent/link/outbox.py",
           ("tests/test_outbox.py", "tests/test_outbox_disk.py", "tests/test_queue_cli.py")),
    Module("uplink", "edge_agent/link/uplink.py", ("tests/test_uplink_server.py", "tests/test_uplink.py"), True),
    Module("validate", "fleet_server/validate.py",
           ("tests/test_server_validate.py", "tests/test_server_ingest.py"), True),
    Module("ingest", "fleet_server/ingest.py",
           ("tests/test_ingest_queues.py", "tests/test_server_ingest.py", "tests/test_server_resilience.py"), True),
    Module("store", "fleet_server/store.py",
           ("tests/test_server_store.py", "tests/test_server_aggregate.py", "tests/test_server_ingest.py",
            "tests/test_server_scale.py"), True),
    Module("aggregate", "fleet_server/aggregate.py",
           ("tests/test_server_aggregate.py", "tests/test_server_cracks.py", "tests/test_server_scale.py"), True),
)


@dataclass
class Score:
    module: Module
    candidates: int = 0
    left_out: int = 0
    run: int = 0
    killed: int = 0
    survivors: list[str] | None = None
    equivalent: list[str] | None = None
    baseline_s: float = 0.0
    error: str | None = None

    @property
    def ratio(self) -> float:
        judged = self.run - len(self.equivalent or [])
        return self.killed / judged if judged else 0.0


def unseeable_lines(source: str) -> set[int]:
    """Lines inside annotations or logging calls: mutants there cannot change what a test observes."""
    lines: set[int] = set()

    def cover(node: ast.AST | None) -> None:
        if node is not None:
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.arg):
            cover(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            cover(node.returns)
        elif isinstance(node, ast.AnnAssign):
            cover(node.annotation)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id in ("log", "logger", "logging"):
            cover(node)
    return lines


def copy_checkout(dest: Path) -> Path:
    """The working tree's files (committed or not, ignored ones left out) under DEST/checkout, with the
    shared data folder beside it as the tests expect (../shared)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    repo = dest / "checkout"
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    if (ROOT.parent / "shared").exists():
        (dest / "shared").symlink_to(ROOT.parent / "shared")
    return repo


def test_command(module: Module) -> list[str]:
    return [str(PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", *module.tests]


def write_config(repo: Path, module: Module, timeout_s: float) -> Path:
    config = repo / "mutation.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module.path}"\n'
        f"timeout = {timeout_s:.0f}\n"
        "excluded-modules = []\n"
        f'test-command = "{" ".join(test_command(module))}"\n'
        '\n[cosmic-ray.distributor]\nname = "local"\n')
    return config


def cosmic_ray(*args: str, cwd: Path) -> None:
    subprocess.run([str(ROOT / ".venv" / "bin" / "cosmic-ray"), *args], cwd=cwd, check=True, capture_output=True)


def keep_sample(session: Path, source: str, sample: int, seed: int, score: Score) -> None:
    """Mark every work item but a seeded sample of the seeable ones as skipped (Cosmic Ray then leaves them)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    hidden = unseeable_lines(source)
    with use_db(str(session), WorkDB.Mode.open) as db:
        items = list(db.pending_work_items)
        # In source order: Cosmic Ray hands work items out keyed by random ids, so the seed alone would not
        # fix the sample; sorted, the same source and seed always run the same mutants.
        seeable = sorted((i for i in items if all(m.start_pos[0] not in hidden for m in i.mutations)),
                         key=lambda i: [(m.start_pos, m.end_pos, m.operator_name, m.occurrence) for m in i.mutations])
        score.candidates, score.left_out = len(seeable), len(items) - len(seeable)
        chosen = {i.job_id for i in random.Random(seed).sample(seeable, min(sample, len(seeable)))}
        skipped = [i.job_id for i in items if i.job_id not in chosen]
        if skipped:
            db.set_multiple_results(skipped, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))


def known_equivalents(module: str) -> dict[tuple[str, str, str], str]:
    """(line before, original line, mutated line) -> why, for MODULE's judged equivalent mutants; the line
    before is "" unless the entry names it (`after`, for lines as short as `break`)."""
    entries = tomllib.loads(EQUIVALENTS.read_text())["equivalent"] if EQUIVALENTS.exists() else []
    return {(_squash(e.get("after", "")), _squash(e["line"]), _squash(e["becomes"])): e["why"]
            for e in entries if e["module"] == module}


def _squash(code: str) -> str:
    return "".join(code.split())  # Cosmic Ray's unparsing moves spaces ("qos= 2")


def collect(session: Path, source_lines: list[str], score: Score) -> None:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    equivalents = known_equivalents(score.module.name)
    score.survivors, score.equivalent = [], []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            score.run += 1
            if result.test_outcome == TestOutcome.SURVIVED:
                mutation = item.mutations[0]
                line = mutation.start_pos[0]
                changed = next((d[1:].strip() for d in (result.diff or "").splitlines()
                                if d.startswith("+") and not d.startswith("+++")), "?")
                original = source_lines[line - 1].strip()
                text = f"{score.module.path}:{line} {mutation.operator_name.removeprefix('core/')}: " \
                       f"{original}  ->  {changed}"
                before = source_lines[line - 2].strip() if line > 1 else ""
                why = (equivalents.get(("", _squash(original), _squash(changed)))
                       or equivalents.get((_squash(before), _squash(original), _squash(changed))))
                if why:
                    score.equivalent.append(f"{text}  ({why})")
                else:
                    score.survivors.append(text)
            else:
                score.killed += 1  # failed tests, a timeout (an endless loop) or an import error


def measure(module: Module, sample: int, seed: int, work: Path) -> Score:
    score = Score(module)
    repo = copy_checkout(work / module.name)
    env = dict(os.environ)
    t0 = time.monotonic()
    base = subprocess.run(test_command(module), cwd=repo, env=env, capture_output=True, text=True)
    if base.returncode != 0:  # once more: Debian's Mosquitto 2.0.11 segfaults now and then (tests/conftest.py)
        t0 = time.monotonic()
        base = subprocess.run(test_command(module), cwd=repo, env=env, capture_output=True, text=True)
    score.baseline_s = time.monotonic() - t0
    if base.returncode != 0:
        score.error = "tests fail without any mutation:\n" + base.stdout[-1500:]
        return score
    config = write_config(repo, module, timeout_s=max(60.0, 4 * score.baseline_s))
    session = repo / "mutation.sqlite"
    cosmic_ray("init", str(config), str(session), cwd=repo)
    source = (repo / module.path).read_text()
    keep_sample(session, source, sample, seed, score)
    cosmic_ray("exec", str(config), str(session), cwd=repo)
    collect(session, source.splitlines(), score)
    return score


def main() -> int:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--quick", action="store_true", help="10 mutants per module")
    parser.add_argument("--sample", type=int, default=40, help="mutants run per module (default 40)")
    parser.add_argument("--modules", default="", help="comma-separated names (default: all core modules)")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    sample = 10 if args.quick else args.sample
    wanted = {m.strip() for m in args.modules.split(",") if m.strip()}
    unknown = wanted - {m.name for m in MODULES}
    if unknown:
        parser.error(f"unknown modules {sorted(unknown)}; known: {', '.join(m.name for m in MODULES)}")
    modules = [m for m in MODULES if not wanted or m.name in wanted]
    if any(m.services for m in modules):
        from scripts import services

        services.up()
    scores = []
    with tempfile.TemporaryDirectory(prefix="roadmon-mutation-") as tmp:
        for module in modules:
            t0 = time.monotonic()
            score = measure(module, sample, args.seed, Path(tmp))
            scores.append(score)
            if score.error:
                print(f"{module.name:10s} ERROR {score.error}", flush=True)
                continue
            print(f"{module.name:10s} {score.ratio:6.1%} killed ({score.killed}/{score.run} sampled of "
                  f"{score.candidates}, {len(score.equivalent or [])} of them equivalent; {score.left_out} in "
                  f"annotations/logging left out) tests {score.baseline_s:.0f} s, {time.monotonic() - t0:.0f} s",
                  flush=True)
            for survivor in score.survivors or []:
                print(f"    survived    {survivor}", flush=True)
            for same in score.equivalent or []:
                print(f"    equivalent  {same}", flush=True)
    low = [s.module.name for s in scores if s.error or s.ratio < TARGET]
    print(f"\nmutation score per module, target {TARGET:.0%}: "
          + ", ".join(f"{s.module.name} {'ERR' if s.error else f'{s.ratio:.0%}'}" for s in scores))
    if low:
        print(f"under target: {', '.join(low)}")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
