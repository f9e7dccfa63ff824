"""The `fleet-server` console script. pip installs it with every install of road-monitor, also an agent-only
`pip install road-monitor[edge]` that lacks the server's libraries: there it says so in one line instead of a
ModuleNotFoundError traceback."""

from __future__ import annotations

import sys

# The top-level modules of the `server` extra's distributions (pyproject.toml); tests/test_server_entry.py
# checks that every one of them is listed.
SERVER_EXTRA_MODULES = frozenset({
    "fastapi", "starlette", "uvicorn", "psycopg", "psycopg_binary", "psycopg_pool", "paho", "tenacity",
    "prometheus_client", "argon2", "jsonschema_rs", "onnx", "PIL", "fastapi_swagger",
})
MISSING_EXTRA = "fleet-server needs the server extra: pip install road-monitor[server]"


def main() -> None:
    try:
        from fleet_server.cli import main as cli_main

        cli_main()
    except ModuleNotFoundError as exc:
        # Some commands import their libraries only when they run (uvicorn for `serve`), hence around both.
        if (exc.name or "").split(".")[0] not in SERVER_EXTRA_MODULES:
            raise
        sys.exit(f"{MISSING_EXTRA} (missing module {exc.name!r})")
