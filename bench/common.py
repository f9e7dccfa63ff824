"""What the benchmarks share: their --help text, the progress of a long run, and the verdict on their targets.

Not a benchmark itself (bench.run_all runs bench_*.py only).
"""

from __future__ import annotations

import tomllib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def description(doc: str | None) -> str:
    """A bench's --help description: its docstring's first paragraph, whole (the first line of a docstring often
    stops mid-sentence)."""
    return " ".join((doc or "").strip().split("\n\n", 1)[0].split())


def parse_settings(items: list[str]) -> dict[str, dict[str, object]]:
    """SECTION.KEY=VALUE (VALUE in TOML: 0.005, true, "text") -> {section: {key: value}}; the config
    validation of the process given them names a misspelt key when it starts."""
    out: dict[str, dict[str, object]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not (sep and dot and section and key):
            raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. aggregate.repair_chance=0.005")
        out.setdefault(section, {})[key] = tomllib.loads(f"v = {value.strip()}")["v"]
    return out


def verdict(misses: list[str]) -> int:
    """The exit status of a bench with targets: 0 when MISSES is empty; else one line naming every missed target
    ("MISS: ..."), and 1."""
    if misses:
        print(f"MISS: {'; '.join(misses)}", flush=True)
        return 1
    return 0


class Steps:
    """The progress of a long bench over TOTAL steps: on a terminal a rich progress bar (gone once done, as
    bench_steady's and the fleet simulator's), elsewhere (a pipe, a log file) one flushed line as each step starts,
    so that a log shows how far the run got.

        with Steps("seeds", 6) as steps:
            steps.step("seed 1: sim drive")
            ...

    AUTO_REFRESH=False redraws the bar only at each step: no refresh thread runs in the process meanwhile (for
    benches that time the process's own CPU).
    """

    def __init__(self, title: str, total: int, auto_refresh: bool = True) -> None:
        self.title, self.total, self.done = title, total, 0
        console = Console()
        self.bar = None
        if console.is_terminal:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=console, transient=True, auto_refresh=auto_refresh)
            self.task = self.bar.add_task(title, total=total)

    def __enter__(self) -> Steps:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def step(self, label: str) -> None:
        """Step LABEL begins (the one before it has ended)."""
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, description=f"{self.title}: {label}", refresh=True)
        else:
            print(f"[{self.done + 1}/{self.total}] {self.title}: {label}", flush=True)
        self.done += 1
