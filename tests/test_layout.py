"""The layout's import rules, read from the code itself: the server never imports the agent, the shared
packages import neither half, and each agent subsystem imports only what its package docstring allows."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("edge_agent", "fleet_server", "fleet_sim", "calibration", "roadmon_contract", "models", "scripts", "bench",
        "tests")

# Per agent subsystem: the edge_agent packages and other project packages it may import (besides itself).
AGENT_RULES = {
    "config": {"roadmon_contract"},
    "gnss": {"edge_agent.config", "edge_agent.health", "roadmon_contract"},
    "camera": {"edge_agent.config", "edge_agent.health"},
    "detect": {"edge_agent.config", "edge_agent.health", "edge_agent.durable", "roadmon_contract"},
    "perception": {"edge_agent.config", "edge_agent.health", "edge_agent.gnss", "calibration", "roadmon_contract"},
    "link": {"edge_agent", "edge_agent.__version__", "edge_agent.config", "edge_agent.health", "edge_agent.durable",
             "roadmon_contract"},
}
NEVER_FROM = {  # subsystems that only the top of the agent (commands, doctor, the CLI) may use
    "runtime": {"lab"},
    "lab": {"runtime", "commands", "doctor"},
}


def imports_of(path: Path) -> set[str]:
    """The project modules PATH imports (absolute imports only: the project has no relative ones)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from edge_agent import config`
    return {n for n in names if n.split(".")[0] in OURS}


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def offenders(package: str, allowed: Callable[[str], bool]) -> list[str]:
    return [f"{p.relative_to(ROOT)} imports {name}" for p in sources(package) for name in sorted(imports_of(p))
            if not allowed(name)]


def test_the_server_imports_nothing_of_the_agent() -> None:
    bad = offenders("fleet_server", lambda n: n.split(".")[0] in ("fleet_server", "roadmon_contract"))
    assert bad == []


@pytest.mark.parametrize("package", ["roadmon_contract", "calibration"])
def test_shared_packages_import_neither_half(package: str) -> None:
    assert offenders(package, lambda n: n.split(".")[0] == package) == []


@pytest.mark.parametrize("sub", sorted(AGENT_RULES))
def test_agent_subsystems_import_only_what_their_docstring_allows(sub: str) -> None:
    allowed = AGENT_RULES[sub] | {f"edge_agent.{sub}"}

    def ok(name: str) -> bool:
        if name in allowed:
            return True
        return any(name.startswith(a + ".") for a in allowed if a != "edge_agent")

    assert offenders(f"edge_agent/{sub}", ok) == []


@pytest.mark.parametrize("sub", sorted(NEVER_FROM))
def test_runtime_and_lab_do_not_lean_on_each_other(sub: str) -> None:
    banned = tuple(f"edge_agent.{b}" for b in NEVER_FROM[sub])
    assert offenders(f"edge_agent/{sub}", lambda n: not n.startswith(banned)) == []


def test_the_agent_packages_say_what_they_may_import() -> None:
    for sub in [*AGENT_RULES, *NEVER_FROM]:
        if sub == "config":
            continue
        doc = ast.get_docstring(ast.parse((ROOT / "edge_agent" / sub / "__init__.py").read_text())) or ""
        assert "May import:" in doc, f"edge_agent/{sub}/__init__.py does not say what it may import"


def test_the_server_image_copies_no_agent_code() -> None:
    copied = re.findall(r"^COPY\s+(?!--)(\S+)", (ROOT / "Dockerfile").read_text(), flags=re.M)
    assert "fleet_server" in copied and "roadmon_contract" in copied
    assert not {"edge_agent", "calibration", "models", "scripts"} & set(copied)


def test_no_code_edits_sys_path() -> None:
    """scripts/, models/, bench/ and tests/ are packages run with `python -m`; none patches the import path."""
    edits = [f"{p.relative_to(ROOT)}:{i}" for package in OURS for p in sources(package)
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"sys\.path(\.insert|\.append|\[:0\]\s*=)", line) and p.name != "test_layout.py"]
    assert edits == []
