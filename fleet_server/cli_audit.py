"""The server commands that change who may send and what is kept (devices, tokens, commands and models sent to
boxes) leave a row in the API's audit log, so that "who erased this device, who issued that token, and when" has
an answer in one place (`GET /api/v1/audit`, docs/privacy.md).

A row: who = the operating-system user (and the one who ran sudo), role `cli`, method `CLI`, path = the command
as parsed (a payload's values and a URL's password left out, control characters escaped), status = the exit code
(0 done), client = the host's name. A database that refuses the row costs a warning, not the command's outcome.
"""

from __future__ import annotations

import functools
import getpass
import inspect
import json
import os
import re
import shlex
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ParamSpec
from urllib.parse import urlsplit, urlunsplit

import psycopg
import typer
from typer.models import OptionInfo

from fleet_server import audit
from fleet_server.cli_common import err, state
from fleet_server.db import connect

P = ParamSpec("P")


def audited(command: Callable[P, None]) -> Callable[P, None]:
    """COMMAND (a function named for its words, `device_erase`), writing its audit row once it has ended (done,
    refused or failed)."""
    words = command.__name__.split("_")

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        line = command_line(words, command, kwargs)
        code: int | None = 1  # an exception on its way out: the command failed
        try:
            command(*args, **kwargs)
            code = 0
        except typer.Exit as exc:
            code = exc.exit_code
            raise
        except KeyboardInterrupt:
            code = 130  # what a shell reports for Ctrl-C
            raise
        except psycopg.OperationalError:
            code = None  # no database: no change, and no row either (asking again would double the wait)
            raise
        finally:
            if code is not None:
                record(line, code)

    return run


def command_line(words: list[str], command: Callable[..., None], values: dict[str, Any]) -> str:
    """The command as parsed, e.g. `device erase veh-042 --yes`: WORDS, its arguments, and its options not left
    at their default (the root's config file option is not repeated)."""
    words = list(words)
    for name, param in inspect.signature(command).parameters.items():
        value, declared = values.get(name), param.default
        shown = _SHOWN.get(name, str)
        if not isinstance(declared, OptionInfo):  # an argument, with or without typer.Argument(...)
            words.append(shown(value))
        elif value not in (None, False, declared.default) and value != []:
            flag = next((d for d in declared.param_decls or () if d.startswith("--")), f"--{name.replace('_', '-')}")
            many = value if isinstance(value, list) else [value]
            words += [flag] if value is True else [f"{flag}={shown(v)}" for v in many]
    # Control characters as escapes: a name with ESC sequences would run in the terminal of whoever reads the log.
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", shlex.join(words))


def _payload_keys(payload: object) -> str:
    """A command's JSON payload with its values left out: a config-reload may carry a password."""
    try:
        parsed = json.loads(str(payload))
    except ValueError:
        return "(not JSON)"
    if not isinstance(parsed, dict):
        return "(not an object)"
    return json.dumps(dict.fromkeys(parsed, "…"), ensure_ascii=False)


def _without_userinfo(url: object) -> str:
    parts = urlsplit(str(url))
    if parts.username is None and parts.password is None:
        return str(url)
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


# What a command line may carry that the audit log must not keep: a payload's values, a URL's user and password.
_SHOWN: dict[str, Callable[[Any], str]] = {"payload": _payload_keys, "url_base": _without_userinfo}
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def record(line: str, exit_code: int) -> None:
    """Write the audit row of the command LINE that ended with EXIT_CODE."""
    if state.cfg is None:
        return
    row = audit.Entry(datetime.now(UTC), None, operator(), "cli", "CLI", line[:500], exit_code, socket.gethostname())
    try:
        with connect(state.cfg.database) as conn:
            audit.write(conn, [row])
    except psycopg.Error as exc:
        err.print(f"warning: the audit log did not take this command: {str(exc).strip().splitlines()[0]}",
                  markup=False, highlight=False)


def operator() -> str:
    """The user running the command; under sudo, who ran sudo as well (root alone says nothing)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid without a passwd entry
        user = f"uid {os.getuid()}"
    sudo_user = os.environ.get("SUDO_USER")
    return f"{sudo_user} as {user}" if sudo_user and sudo_user != user else user
