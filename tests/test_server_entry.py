"""The `fleet-server` console script in an agent-only install (`pip install road-monitor[edge]`): pip installs
it there too, and without the server's libraries it must say what to install, in one line."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import textwrap

import pytest

from fleet_server.entry import MISSING_EXTRA, SERVER_EXTRA_MODULES

# Runs the console script's function with the named modules made unimportable, as in a venv without them.
WITHOUT = textwrap.dedent("""
    import importlib.abc, sys
    class Missing(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, Missing())
    sys.argv = ["fleet-server", *{args!r}]
    from fleet_server.entry import main
    main()
""")


def run_without(blocked: set[str], *args: str) -> subprocess.CompletedProcess[str]:
    code = WITHOUT.format(blocked=blocked, args=list(args))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [("device", "ls"), ("--help",), ()])
def test_without_the_server_extra_it_says_what_to_install(args: tuple[str, ...]) -> None:
    done = run_without({"psycopg", "psycopg_pool", "fastapi"}, *args)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [f"{MISSING_EXTRA} (missing module 'psycopg')"]


def test_a_module_missing_for_another_reason_is_not_blamed_on_the_extra() -> None:
    done = run_without({"rich"}, "device", "ls")
    assert done.returncode == 1 and "ModuleNotFoundError" in done.stderr and MISSING_EXTRA not in done.stderr


def test_the_console_script_goes_through_the_check() -> None:
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.name == "fleet-server"}
    assert scripts == {"fleet-server": "fleet_server.entry:main"}


def test_every_module_of_the_server_extra_is_known() -> None:
    """A library added to the server extra must be listed, or its absence would show a traceback again."""
    by_dist: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            by_dist.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    extra = [re.split(r"[<>=\[;! ]", req, maxsplit=1)[0].lower().replace("_", "-")
             for req in importlib.metadata.requires("road-monitor") or [] if 'extra == "server"' in req]
    assert extra, "the server extra's requirements"
    for dist in extra:
        modules = {m for m in by_dist.get(dist, set()) if not m.startswith("_")}
        assert modules and modules <= SERVER_EXTRA_MODULES, (dist, modules)
