"""Bulk device provisioning: `fleet-server device import FILE.csv`.

`device add` reloads the broker once per device (it ran `mosquitto_passwd`, 0.66 s each: 11 minutes for
1,000 vehicles). An import checks every row first, hashes the passwords in-process in Mosquitto's own
PBKDF2-SHA512 format (mqtt_accounts), writes the password file once (a new file renamed over the old one, so
the broker never reads half of it), inserts every device in one transaction and reloads the broker once.

Input: CSV, one device a row: its id (starting with a letter or digit), then optional group names (more cells,
or one cell with `;` between them; none may start like a spreadsheet formula). Blank lines and lines starting
with `#` are ignored; a first row whose first cell is `device_id` or `id` is a header. Ids that already exist
(in the database or in the broker's password file) are an error naming their lines, or are skipped with
`skip_existing`. Any bad row fails the whole import before anything is written.

Output: a CSV of the issued credentials (device_id, groups, mqtt_host, mqtt_port, mqtt_username,
mqtt_password, and http_token when asked for), mode 600, never overwriting an existing file: the sheet a
technician hands to the installer, its text cells neutralised as the API's CSV export does (spreadsheet.py).
Passwords are not kept anywhere else.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from fleet_server import auth, mqtt_accounts, spreadsheet
from fleet_server.config import ServerConfig
from roadmon_contract.ids import NEW_DEVICE_ID_RULE, new_device_id_ok

log = logging.getLogger(__name__)

HEADER_IDS = ("device_id", "id")
OUT_COLUMNS = ("device_id", "groups", "mqtt_host", "mqtt_port", "mqtt_username", "mqtt_password")


class ImportRefused(ValueError):
    """The import was refused; `problems` name each bad line. Nothing was written."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Row:
    line: int
    device_id: str
    groups: tuple[str, ...] = ()


@dataclass
class Imported:
    created: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    out_file: Path | None = None
    broker_reloaded: bool = False
    passwd_file: Path | None = None


def parse_rows(text: str, server_user: str) -> list[Row]:
    """The rows of an import file; ImportRefused naming every bad line (all of them, not just the first)."""
    rows: list[Row] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for line_no, cells in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in cells]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        device_id = cells[0]
        if not rows and not problems and device_id.lower() in HEADER_IDS:
            continue  # a header row
        groups = tuple(g.strip() for cell in cells[1:] for g in cell.split(";") if g.strip())
        if not new_device_id_ok(device_id):
            problems.append(f"line {line_no}: invalid device id {device_id!r} ({NEW_DEVICE_ID_RULE})")
            continue
        if mqtt_accounts.reserved(device_id, server_user):
            problems.append(f"line {line_no}: device id {device_id!r} is reserved for the server")
            continue
        group_problem = _group_problem(groups)
        if group_problem:
            problems.append(f"line {line_no}: {group_problem}")
            continue
        if device_id in first_line:
            problems.append(f"line {line_no}: device id {device_id!r} repeats line {first_line[device_id]}")
            continue
        first_line[device_id] = line_no
        rows.append(Row(line_no, device_id, groups))
    if problems:
        raise ImportRefused(problems)
    if not rows:
        raise ImportRefused(["no devices in the file"])
    return rows


def _group_problem(groups: tuple[str, ...]) -> str | None:
    """Why GROUPS cannot be stored, or None. A group starting like a formula is refused outright, not only
    neutralised in the sheet: the name would reach every later export and screen that shows groups."""
    for g in groups:
        if len(g) > 64 or any(ord(ch) < 32 for ch in g):
            return f"invalid group {g!r} (at most 64 printable characters)"
        if spreadsheet.starts_formula(g):
            return f"invalid group {g!r}: a spreadsheet would run it as a formula (no group starts with =, +, - or @)"
    return None


def _passwd_users(passwd_file: Path | None) -> set[str]:
    if passwd_file is None or not passwd_file.exists():
        return set()
    return {line.split(":", 1)[0] for line in passwd_file.read_text().splitlines() if ":" in line}


def has_login(passwd_file: Path | None, device_id: str) -> bool:
    """Whether the broker's password file holds a login for DEVICE_ID."""
    return device_id in _passwd_users(passwd_file)


def _credentials_csv(rows: list[Row], passwords: dict[str, str], tokens: dict[str, str], cfg: ServerConfig) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(OUT_COLUMNS + (("http_token",) if tokens else ()))
    host, port, _ = cfg.devices.vehicle_address(cfg.mqtt)
    for r in rows:
        cells = [r.device_id, ";".join(r.groups), host, port, r.device_id,
                 passwords[r.device_id]] + ([tokens[r.device_id]] if tokens else [])
        # Installers open this sheet in a spreadsheet: no text cell may run there (a HYPERLINK in one cell can
        # send another cell, the row's password, away). Ids, passwords and tokens never start so; the rest might.
        writer.writerow([spreadsheet.safe_text(c) if isinstance(c, str) else c for c in cells])
    return buf.getvalue()


def _hash_tokens(devices: list[str]) -> dict[str, tuple[str, str, str]]:
    """(token, lookup, argon2 hash) per device. argon2 (~20 ms of CPU each) dominates an import with tokens; it
    releases the GIL, so a thread per core hashes in parallel."""
    def one(device: str) -> tuple[str, str, str]:
        token, lookup = auth.new_token()
        return token, lookup, auth.hash_token(token)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(devices, pool.map(one, devices), strict=True))


def import_devices(conn: psycopg.Connection, cfg: ServerConfig, rows: list[Row], out_file: Path,
                   skip_existing: bool = False, http_tokens: bool = False) -> Imported:
    """Create ROWS' devices: database rows, broker logins (one password-file write, one reload) and the
    credentials file OUT_FILE. ImportRefused (nothing written) for existing ids unless SKIP_EXISTING."""
    files = cfg.broker_files
    if out_file.exists():
        raise ImportRefused([f"{out_file} exists: the credentials file is never overwritten"])
    if not out_file.parent.is_dir():
        raise ImportRefused([f"{out_file.parent} is not a folder"])
    result = Imported(out_file=out_file, passwd_file=files.passwd_file)
    lock = mqtt_accounts.locked(files.passwd_file) if files.passwd_file is not None else _nothing()
    with lock:
        in_db = {r[0] for r in conn.execute("SELECT id FROM devices WHERE id = ANY(%s)",
                                            ([r.device_id for r in rows],))}
        existing = in_db | (_passwd_users(files.passwd_file) & {r.device_id for r in rows})
        if existing and not skip_existing:
            clash = [f"line {r.line}: device {r.device_id!r} " + ("already exists" if r.device_id in in_db else
                     "has a broker login but is not in the database (restored or recreated without the password "
                     "file?)") for r in rows if r.device_id in existing]
            raise ImportRefused(clash[:20] + ([f"... and {len(clash) - 20} more"] if len(clash) > 20 else [])
                               + ["(use --skip-existing to leave existing devices as they are)"])
        result.skipped = [r.device_id for r in rows if r.device_id in existing]
        rows = [r for r in rows if r.device_id not in existing]
        if not rows:
            return result
        passwords = {r.device_id: mqtt_accounts.new_password() for r in rows}
        token_rows = _hash_tokens([r.device_id for r in rows]) if http_tokens else {}
        tokens = {d: t[0] for d, t in token_rows.items()}
        creds_tmp = mqtt_accounts.write_new(out_file, _credentials_csv(rows, passwords, tokens, cfg))
        passwd_tmp: Path | None = None
        old_passwd: str | None = None
        replaced = out_written = False
        try:
            if files.passwd_file is not None:
                old_passwd = files.passwd_file.read_text() if files.passwd_file.exists() else ""
                head = old_passwd + ("\n" if old_passwd and not old_passwd.endswith("\n") else "")
                passwd_tmp = mqtt_accounts.write_new(files.passwd_file, head + "".join(
                    f"{d}:{mqtt_accounts.mosquitto_hash(p)}\n" for d, p in passwords.items()), like=files.passwd_file)
            with conn.transaction():
                _insert(conn, rows, token_rows, cfg)
                # Inside the transaction: a failed rename rolls the devices back; after the renames only the
                # commit can fail, and then the old password file is put back below.
                if passwd_tmp is not None:
                    assert files.passwd_file is not None  # passwd_tmp is only written when there is one
                    os.replace(passwd_tmp, files.passwd_file)
                    replaced = True
                os.replace(creds_tmp, out_file)
                out_written = True
        except BaseException:
            creds_tmp.unlink(missing_ok=True)
            if passwd_tmp is not None and not replaced:
                passwd_tmp.unlink(missing_ok=True)
            if replaced and files.passwd_file is not None and old_passwd is not None:
                back = mqtt_accounts.write_new(files.passwd_file, old_passwd, like=files.passwd_file)
                back.replace(files.passwd_file)
            if out_written:
                out_file.unlink(missing_ok=True)  # these logins do not exist: the sheet must not either
            raise
    if files.acl_file is not None:
        mqtt_accounts.ensure_device_patterns(files.acl_file, server_user=cfg.mqtt.username)
    if files.pid_file is not None:
        result.broker_reloaded = mqtt_accounts.reload_broker(files.pid_file)
    result.created = [r.device_id for r in rows]
    log.info("imported %d devices (%d skipped); credentials in %s", len(result.created), len(result.skipped),
             out_file)
    return result


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _insert(conn: psycopg.Connection, rows: list[Row], tokens: dict[str, tuple[str, str, str]],
            cfg: ServerConfig) -> None:
    with conn.cursor() as cur:
        with cur.copy("COPY devices (id, groups) FROM STDIN") as copy:
            for r in rows:
                copy.write_row((r.device_id, list(r.groups)))
        if tokens:
            expires = timedelta(days=cfg.api.device_token_days)
            with cur.copy("COPY api_tokens (lookup, token_hash, name, role, device_id, expires_at) FROM STDIN") as copy:
                for device, (_, lookup, hashed) in tokens.items():
                    copy.write_row((lookup, hashed, f"device {device}", "device", device, datetime.now(UTC) + expires))
