"""Shared fixtures: the project-local PostGIS and Mosquitto (real services, started by scripts/services.py),
private brokers for chaos tests, and the real data in ../shared (skipped when absent)."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import secrets
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from scripts import services

ROOT = Path(__file__).resolve().parent.parent

SHARED = ROOT.parent / "shared"
T = TypeVar("T")


def free_port() -> int:
    """A free port on loopback, below the kernel's ephemeral range: a client reconnecting in a loop to a killed
    broker's ephemeral port now and then got that very number for its own end and connected to itself, and the
    broker could not start there again ("taken by another program", test_broker_killed_and_restarted_mid_drain).
    Another program may still take it before the caller binds it: callers that start a server use
    `on_a_free_port`."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(100):
        port = random.randint(max(1024, low - 12000), max(1025, low - 1))
        if services.port_is_free(port):
            return port
    with socket.socket() as s:  # nothing free below the range: the OS's choice, as before
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_a_free_port(start: Callable[..., T], attempts: int = 5, ports: int = 1) -> T:
    """START(*ports) on PORTS ports from free_port(), again on fresh ones when one was taken in between (START
    raises OSError or services.ServiceError then, saying "Address already in use" or leaving the port taken)."""
    for attempt in range(attempts):
        chosen = [free_port() for _ in range(ports)]
        try:
            return start(*chosen)
        except (OSError, services.ServiceError) as exc:
            lost_race = (getattr(exc, "errno", None) == errno.EADDRINUSE or "address already in use" in str(exc).lower()
                         or not all(services.port_is_free(p) for p in chosen))
            if attempt == attempts - 1 or not lost_race:
                raise  # a real failure
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def service_info() -> Iterator[services.ServiceInfo]:
    """PostGIS + Mosquitto on loopback, started once per test session and stopped afterwards, unless they
    were already running (a `make services-up` or a demo keeps its services)."""
    already = services.running()
    yield services.up()
    if not already:
        services.down()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses the local services must say so (`@pytest.mark.services`), so that
    `pytest -m "not services"` never starts PostGIS or Mosquitto: an unmarked one stops the run, named."""
    unmarked = [item.nodeid for item in items
                if "service_info" in getattr(item, "fixturenames", ()) and item.get_closest_marker("services") is None]
    if unmarked:
        raise pytest.UsageError("tests that use the local services lack @pytest.mark.services: " + ", ".join(unmarked))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Debian 12's Mosquitto 2.0.11 has segfaulted a few times in a full random-order run (kernel log: a
    segfault in mosquitto or libc, no last line in its own log). One crash must not fail every later test:
    a test that uses the session's services finds the broker started again, and the warning says so."""
    if "service_info" in getattr(item, "fixturenames", ()) and services.running_broker_died():
        warnings.warn("the local Mosquitto had died (see the kernel log); started it again", stacklevel=1)
        services.up()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """A test on the session's services that failed while that Mosquitto crashed (row above: the crash comes from
    the broker's reloads, not from the test) runs once more on a broker started again; the warning names it.
    Failing again, or failing with the broker alive, is a failure as always."""
    if "service_info" not in getattr(item, "fixturenames", ()):
        return None
    from _pytest.runner import runtestprotocol  # pytest's own run of one test (what rerun plugins call)

    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    failed = [r for r in reports if r.failed]
    if failed and services.running_broker_died():
        warnings.warn(f"{item.nodeid} failed while the local Mosquitto crashed ({failed[0].when}: "
                      f"{str(failed[0].longrepr).splitlines()[-1][:200]}); ran it again on a broker started again",
                      stacklevel=1)
        services.up()
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


@pytest.fixture(scope="session")
def postgres(service_info: services.ServiceInfo) -> services.Postgres:
    return services.Postgres()


@pytest.fixture(scope="session")
def broker(service_info: services.ServiceInfo) -> services.Mosquitto:
    return services.Mosquitto()


@pytest.fixture(scope="session")
def db_templates(postgres: services.Postgres) -> Iterator[dict[str, str]]:
    """Databases each test's own is copied from: `postgis` (empty, with PostGIS) and `migrated` (every migration
    applied). Some 250 tests each created PostGIS and migrated, 1.3-2 s apiece, a third of the suite's time. Named
    by this process, so that two sessions on one cluster do not drop each other's."""
    from fleet_server.migrate import migrate

    names = {"postgis": f"t_template_{os.getpid()}_postgis", "migrated": f"t_template_{os.getpid()}_migrated"}
    postgres.create_database(names["postgis"])
    migrate(postgres.create_database(names["migrated"], template=names["postgis"]))
    yield names
    if postgres.running():
        for name in names.values():
            postgres.drop_database(name)


@pytest.fixture
def fresh_db(postgres: services.Postgres, db_templates: dict[str, str], request: pytest.FixtureRequest) -> str:
    """An empty PostGIS database of this test's own; returns its DSN. The name ends in a hash of the test's
    full id: a readable prefix alone would let parametrised cases (and long names) share one database."""
    readable = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40]
    name = f"t_{readable}_{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]}"
    return postgres.create_database(name, template=db_templates["postgis"])


@pytest.fixture
def migrated_db(fresh_db: str, postgres: services.Postgres, db_templates: dict[str, str]) -> str:
    """`fresh_db` with every migration applied: the same database (a test may ask for both), made a copy of the
    session's migrated template before anyone connects to it."""
    return postgres.create_database(fresh_db.rsplit("/", 1)[1], template=db_templates["migrated"])


@pytest.fixture
def mqtt_device(broker: services.Mosquitto) -> Callable[[str], tuple[str, str]]:
    """Provision a device login on the shared broker: returns (device_id, password)."""

    def make(device_id: str | None = None) -> tuple[str, str]:
        device_id = device_id or f"test-{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(12)
        broker.add_device(device_id, password)
        return device_id, password

    return make


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Callable[..., services.Mosquitto]]:
    """A broker of this test's own (another port, own persistence), for kill/restart and quota tests."""
    started: list[services.Mosquitto] = []

    def make(extra_conf: str = "", start: bool = True) -> services.Mosquitto:
        name = f"mqtt{len(started)}"

        def broker_on(port: int) -> services.Mosquitto:
            mq = services.Mosquitto(state=tmp_path, port=port, name=name, extra_conf=extra_conf)
            if start:
                mq.up()
            else:
                mq._write_config()
            return mq

        mq = on_a_free_port(broker_on)
        started.append(mq)
        return mq

    yield make
    for mq in started:
        mq.kill()


@pytest.fixture(scope="session")
def shared_nmea() -> Path:
    path = SHARED / "nmea"
    if not path.is_dir():
        pytest.skip("real NMEA captures not available: ../shared/nmea is absent")
    return path


@pytest.fixture(scope="session")
def shared_potholes() -> Path:
    path = SHARED / "datasets" / "potholes-chitholian" / "train"
    if not path.is_dir():
        pytest.skip("real pothole photos not available: ../shared/datasets/potholes-chitholian is absent")
    return path


@pytest.fixture(scope="session")
def shared_survey() -> Path:
    path = SHARED / "datasets" / "cracks-potholes-passos2020"
    if not path.is_dir():
        pytest.skip("real survey-vehicle frames not available: ../shared/datasets/cracks-potholes-passos2020 is absent")
    return path


@pytest.fixture(scope="session")
def seed7_drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulated drive of seed 7 (45 s at 15 fps, 10 potholes and 5 cracks, 3 m of white GNSS noise at 1 Hz),
    rendered once a session by `edge-agent sim drive`: test_acceptance_drive replays it with the bundled model,
    test_crack_events with the simulator's own boxes. Each rendered the same bytes (a drive is fixed by its seed
    and settings) for itself. Readers write their outboxes beside it, never into it."""
    out = tmp_path_factory.mktemp("drive-seed7")
    sim = subprocess.run([str(Path(sys.executable).with_name("edge-agent")), "sim", "drive", "--out", str(out),
                          "--seed", "7", "--minutes", "0.75", "--gps-noise-m", "3", "--gps-noise-model", "white",
                          "--nmea-hz", "1", "--defects", "15", "--potholes", "10", "--fps", "15"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    if sim.returncode != 0 and "No such command" in sim.stderr + sim.stdout:
        pytest.skip("`edge-agent sim drive` is not there yet")
    assert sim.returncode == 0, sim.stderr[-3000:]
    return out
