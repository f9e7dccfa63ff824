"""Project-local PostGIS and Mosquitto on loopback, for tests, the demo and development.

    python -m scripts.services up|down|status|replica [--json]

`replica` adds a streaming read replica of the PostGIS cluster (on ROADMON_PG_REPLICA_PORT), for trying the
API's `database.read_dsn`; `down` stops it too. Both services run from data folders under the project's ignored
`.state/` folder on non-default ports, so they never touch a system-wide service. `up` is idempotent: a server
that already runs from our folder is kept.
PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` system user.
Mosquitto runs with persistence on, a password file and an ACL that lets a device write only under its own id.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fleet_server.mqtt_accounts import reload_broker, set_password

ROOT = Path(__file__).resolve().parent.parent

STATE = Path(os.environ.get("ROADMON_STATE", ROOT / ".state"))
PG_PORT = int(os.environ.get("ROADMON_PG_PORT", "55432"))
PG_REPLICA_PORT = int(os.environ.get("ROADMON_PG_REPLICA_PORT", str(PG_PORT + 1)))
MQTT_PORT = int(os.environ.get("ROADMON_MQTT_PORT", "51883"))
SERVER_USER = "roadmon-server"
DB_NAME = DB_USER = "roadmon"


class ServiceError(RuntimeError):
    """A service could not be started; the message says why and what to do."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def require_free_port(port: int, env_var: str) -> None:
    """Refuse to start a service on a port another program holds, naming the setting that moves it."""
    if not port_is_free(port):
        raise ServiceError(f"port {port} on 127.0.0.1 is taken by another program; "
                           f"free it or set {env_var} to another port")


def wait_for_port(port: int, timeout_s: float, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.1)
    return False


def _as_root() -> bool:
    return os.geteuid() == 0


# --------------------------------------------------------------------------------------------- PostGIS
class Postgres:
    """A PostgreSQL + PostGIS cluster in its own data folder."""

    port_env = "ROADMON_PG_PORT"

    def __init__(self, state: Path = STATE, port: int = PG_PORT, folder: str = "pg") -> None:
        self.state = state
        self.port = port
        self.base = self._pick_base(state / folder)
        self.data = self.base / "data"
        self.sock = self.base / "run"
        self.logfile = self.base / "postgres.log"
        self.password_file = state / "pg-password"
        self.bindir = self._bindir()

    @staticmethod
    def _bindir() -> Path:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        if not found:
            raise ServiceError("PostgreSQL is not installed (apt-get install postgresql-15-postgis-3)")
        return Path(found[-1]).parent

    @staticmethod
    def _pick_base(wanted: Path) -> Path:
        # The postgres user must reach its data folder; a state folder under /root or a mode-700 temp folder
        # is not traversable, so fall back to a folder under /var/tmp named after the STATE folder (not the
        # checkout) and the cluster: every ROADMON_STATE keeps its own clusters, whatever its permissions.
        if not _as_root():
            return wanted
        probe = wanted.parent
        probe.mkdir(parents=True, exist_ok=True)
        ok = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(probe)]).returncode == 0
        if ok:
            return wanted
        tag = hashlib.sha1(str(probe.resolve()).encode()).hexdigest()[:10]
        return Path(f"/var/tmp/roadmon-{wanted.name}-{tag}")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if _as_root():
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True)

    @property
    def password(self) -> str:
        if not self.password_file.exists():
            write_secret(self.password_file, secrets.token_urlsafe(18))
        return self.password_file.read_text().strip()

    @property
    def dsn(self) -> str:
        return f"postgresql://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{DB_NAME}"

    def running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        return self._run(str(self.bindir / "pg_ctl"), "status", "-D", str(self.data), check=False).returncode == 0

    def up(self) -> None:
        if self.running():
            return
        require_free_port(self.port, self.port_env)
        self.base.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(parents=True, exist_ok=True)
        # Local connections are trusted (the scripts' psql): only the cluster's owner may reach the socket, or
        # any user of the machine would be the database superuser.
        self.sock.chmod(0o700)
        if _as_root():
            shutil.chown(self.base, "postgres", "postgres")
            shutil.chown(self.sock, "postgres", "postgres")
        self._create()
        self._start()
        self._provision()

    def _create(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self._run(
                str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions",
            )

    def _start(self) -> None:
        if _as_root():
            subprocess.run(["touch", str(self.logfile)], check=True)
            shutil.chown(self.logfile, "postgres", "postgres")
        opts = (f"-p {self.port} -k {self.sock} -c unix_socket_permissions=0700 -c listen_addresses=127.0.0.1 "
                "-c fsync=on")
        result = self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-o", opts,
            "-w", "-t", "60", "start", check=False,
        )
        if result.returncode != 0:
            tail = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise ServiceError(f"PostgreSQL did not start on port {self.port}:\n{result.stderr}\n{tail}")

    def _psql(self, sql: str, db: str = "postgres") -> str:
        out = self._run(
            "psql", "-h", str(self.sock), "-p", str(self.port), "-U", "postgres", "-d", db,
            "-v", "ON_ERROR_STOP=1", "-tAc", sql,
        )
        return out.stdout.strip()

    def _provision(self) -> None:
        pw = self.password.replace("'", "''")
        if self._psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{DB_USER}'") != "1":
            self._psql(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{pw}'")
        else:
            self._psql(f"ALTER ROLE {DB_USER} PASSWORD '{pw}'")
        if self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'") != "1":
            self._psql(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
        self._psql("CREATE EXTENSION IF NOT EXISTS postgis", db=DB_NAME)

    def create_database(self, name: str, template: str | None = None) -> str:
        """A fresh database for a test or a bench: empty with PostGIS, or a copy of TEMPLATE (which no one may be
        connected to; a copy takes ~0.15 s where PostGIS and the migrations take 1.3-2 s); returns its DSN."""
        self._psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if template is not None:
            self._psql(f"CREATE DATABASE {name} TEMPLATE {template} OWNER {DB_USER}")
        else:
            self._psql(f"CREATE DATABASE {name} OWNER {DB_USER}")
            self._psql("CREATE EXTENSION IF NOT EXISTS postgis", db=name)
        return f"postgresql://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{name}"

    def drop_database(self, name: str) -> None:
        self._psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def down(self) -> None:
        if self.running():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


class Replica(Postgres):
    """A streaming hot standby of the project's cluster: the same roles and databases, read-only, on its own port.
    Its data is a copy (pg_basebackup) taken afresh at every start, so it always follows the running primary."""

    port_env = "ROADMON_PG_REPLICA_PORT"

    def __init__(self, primary: Postgres | None = None, port: int = PG_REPLICA_PORT) -> None:
        self.primary = primary or Postgres()
        super().__init__(self.primary.state, port, folder="pg-replica")

    def _create(self) -> None:
        if not self.primary.running():
            raise ServiceError("the primary PostgreSQL is not running: start it first (up)")
        shutil.rmtree(self.data, ignore_errors=True)  # a copy of an earlier primary, maybe
        # Over the primary's socket, where initdb's pg_hba trusts local replication connections.
        result = self._run(str(self.bindir / "pg_basebackup"), "-h", str(self.primary.sock),
                           "-p", str(self.primary.port), "-U", "postgres", "-D", str(self.data),
                           "--write-recovery-conf", "--wal-method=stream", "--checkpoint=fast", check=False)
        if result.returncode != 0:
            raise ServiceError(f"pg_basebackup from port {self.primary.port} failed: {result.stderr.strip()}")

    def _provision(self) -> None:
        pass  # read-only: the roles and databases come from the primary

    def stop(self) -> None:
        """Stop and forget the copy (the next start takes a fresh one)."""
        self.down()
        shutil.rmtree(self.data, ignore_errors=True)


# ------------------------------------------------------------------------------------------- Mosquitto
ACL = """\
# Written by scripts/services.py. The server reads and answers everything under roadmon/;
# a device (login = device id) writes only under its own id and reads only its own ack and commands.
user {server}
topic readwrite roadmon/#

pattern write roadmon/v1/%u/event
pattern write roadmon/v1/%u/coverage
pattern readwrite roadmon/v1/%u/status
pattern read roadmon/v1/%u/ack
pattern read roadmon/v1/%u/cmd/#
pattern write roadmon/v1/%u/cmd/+/result
"""


class Mosquitto:
    """A Mosquitto broker with its own config, persistence folder, password file and ACL."""

    def __init__(self, state: Path = STATE, port: int = MQTT_PORT, name: str = "mqtt",
                 extra_conf: str = "") -> None:
        self.port = port
        self.dir = state / name
        self.conf = self.dir / "mosquitto.conf"
        self.passwd_file = self.dir / "passwd"
        self.acl_file = self.dir / "acl"
        self.pid_file = self.dir / "mosquitto.pid"
        self.logfile = self.dir / "mosquitto.log"
        self.server_secret = self.dir / "server.secret"
        self.extra_conf = extra_conf

    @property
    def server_password(self) -> str:
        return self.server_secret.read_text().strip()

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and str(self.conf) not in cmdline.read_text():
            return None  # a recycled pid
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        if not self.server_secret.exists():
            write_secret(self.server_secret, secrets.token_urlsafe(18))
            set_password(self.passwd_file, SERVER_USER, self.server_password)
        self.acl_file.write_text(ACL.format(server=SERVER_USER))
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {self.passwd_file}",
            f"acl_file {self.acl_file}",
            "persistence true",
            f"persistence_location {self.dir / 'data'}/",
            "autosave_interval 5",
            f"pid_file {self.pid_file}",
            f"log_dest file {self.logfile}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            # A shared subscription's messages queue in ONE worker's session: a depot storm of 10,000 vehicles x
            # 50 queued events is 500,000 messages there. Past this limit Mosquitto drops them silently (the
            # agents re-send after their ack timeout). Twice the storm; bytes unlimited on this test broker.
            "max_queued_messages 1000000",
            # Above the server's ingest.max_message_bytes (2.5 MB): a larger packet is refused by the broker.
            "max_packet_size 3000000",
        ]
        if _as_root():
            lines.insert(0, "user root")
        self.conf.write_text("\n".join(lines) + "\n" + self.extra_conf + "\n")
        for f in (self.passwd_file, self.acl_file):
            f.chmod(0o600)

    def up(self) -> None:
        if self.running():
            return
        require_free_port(self.port, "ROADMON_MQTT_PORT")
        self._write_config()
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        result = subprocess.run([binary, "-c", str(self.conf), "-d"], capture_output=True, text=True)
        if result.returncode != 0 or not wait_for_port(self.port, 15):
            tail = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise ServiceError(f"Mosquitto did not start on port {self.port}: {result.stderr}\n{tail}")

    def add_device(self, device_id: str, password: str) -> None:
        set_password(self.passwd_file, device_id, password)
        if self.running():
            reload_broker(self.pid_file)
            time.sleep(0.3)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)

    def kill(self) -> None:
        """Crash the broker (SIGKILL): what it had not saved is gone, as after a power cut."""
        self.stop(signal.SIGKILL)

    down = stop


# --------------------------------------------------------------------------------------------- both
@dataclass
class ServiceInfo:
    dsn: str
    mqtt_host: str
    mqtt_port: int
    server_user: str
    server_password: str
    passwd_file: str
    acl_file: str
    broker_pid_file: str


def up() -> ServiceInfo:
    pg, mq = Postgres(), Mosquitto()
    pg.up()
    mq.up()
    info = ServiceInfo(
        dsn=pg.dsn, mqtt_host="127.0.0.1", mqtt_port=mq.port, server_user=SERVER_USER,
        server_password=mq.server_password, passwd_file=str(mq.passwd_file), acl_file=str(mq.acl_file),
        broker_pid_file=str(mq.pid_file),
    )
    write_secret(STATE / "services.json", json.dumps(asdict(info), indent=2))
    return info


def write_secret(path: Path, text: str) -> None:
    """Write TEXT to PATH readable by its owner only (it holds passwords), whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(text)


def running() -> bool:
    """Whether both services already run from this state folder."""
    return Postgres().running() and Mosquitto().running()


def running_broker_died() -> bool:
    """PostgreSQL runs from this state folder but its broker does not: the broker died (the two are only ever
    started and stopped together)."""
    return Postgres().running() and not Mosquitto().running()


def down(state: Path = STATE) -> list[str]:
    """Stop whatever of STATE's services runs; returns what was running."""
    broker, primary = Mosquitto(state), Postgres(state)
    replica = Replica(primary)
    found = [name for name, service in (("Mosquitto", broker), ("the read replica", replica), ("PostGIS", primary))
             if service.running()]
    broker.stop()
    replica.stop()
    primary.down()
    return found


def purge(state: Path = STATE) -> list[Path]:
    """Stop the services and delete their data, the clusters kept outside the state folder included (the
    /var/tmp fallback of a folder the postgres user cannot reach); returns the folders deleted."""
    existed = state.exists()  # finding the clusters creates it
    down(state)
    primary = Postgres(state)
    outside = [f for f in (primary.base, Replica(primary).base) if f.exists() and not f.is_relative_to(state)]
    for folder in [*outside, state]:
        shutil.rmtree(folder, ignore_errors=True)
    return outside + ([state] if existed else [])


def status(state: Path = STATE) -> dict[str, dict]:
    """Each service's state and port: a second checkout's services on other ports are told apart by it."""
    primary = Postgres(state)
    services = {"postgis": primary, "mosquitto": Mosquitto(state), "read replica": Replica(primary)}
    return {name: {"running": s.running(), "port": s.port} for name, s in services.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status", "replica", "purge"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        if args.action == "up":
            info = up()
            print(json.dumps(asdict(info), indent=2) if args.json else
                  f"PostGIS   {info.dsn.split('@')[1]}  (data in {Postgres().data})\n"
                  f"Mosquitto 127.0.0.1:{info.mqtt_port}  (config {Mosquitto().conf})")
        elif args.action == "replica":
            replica = Replica()
            replica.up()
            print(json.dumps({"read_dsn": replica.dsn}) if args.json else
                  f"read replica {replica.dsn.split('@')[1]}  (data in {replica.data}); "
                  f"set database.read_dsn or ROADMON_READ_DATABASE_DSN to its DSN")
        elif args.action == "purge":
            print("\n".join(f"deleted {f}" for f in purge()) or "nothing to delete")
        elif args.action == "down":
            was_running = down()
            print(f"stopped {' and '.join(was_running)}" if was_running else
                  f"nothing was running for the state folder {STATE}")
        else:
            print(json.dumps(status()) if args.json else "\n".join(
                f"{name:12s} {'running' if s['running'] else 'stopped'}  127.0.0.1:{s['port']}"
                for name, s in status().items()))
    except ServiceError as exc:
        print(f"services: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
