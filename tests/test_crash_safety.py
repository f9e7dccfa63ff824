"""The agent process SIGKILLed at random points while writing and while draining: no event that reached the
outbox is ever lost, and the database is never corrupt.

Each "agent" is a child forked from a small zygote process that has already imported everything, so that a
kill round costs milliseconds instead of a Python start-up. A child writes events (printing each event_id
only after add_event returned, i.e. after the commit) and, in drain rounds, runs the uplink against a private
broker at the same time. ROADMON_CRASH_KILLS sets the number of kills (the benchmark asks for more).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KILLS = int(os.environ.get("ROADMON_CRASH_KILLS", "60"))
DEVICE, PASSWORD = "veh-crash", "pw-crash"


# ------------------------------------------------------------------------------------------ the children
def _child(mode: str, state: Path, port: int, round_no: int) -> None:
    """Write events forever (and drain them in 'drain' mode) until killed."""
    from edge_agent.config.outbox import OutboxConfig
    from edge_agent.config.uplink import UplinkConfig
    from edge_agent.link.outbox import Outbox
    from edge_agent.link.uplink import Uplink
    from tests.test_outbox import make_event

    fd = os.open(state / f"committed-{round_no:04d}.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    outbox = Outbox(state / "outbox.db", OutboxConfig(synchronous="FULL", budget_mb=64))
    if mode == "drain":
        cfg = UplinkConfig(host="127.0.0.1", port=port, tls=False, password_file=str(state / "pw"),
                           ack_timeout_s=2, heartbeat_s=0.2, backoff_initial_s=0.05, backoff_max_s=0.5,
                           window=200, session_expiry_s=60)
        Uplink(cfg, DEVICE, outbox).start()
    rng = random.Random(round_no)
    while True:
        event = make_event(outbox, severity=rng.random(), thumbnail_jpeg_b64="B" * rng.randrange(0, 4000))
        if outbox.add_event(event):
            os.write(fd, (event["event_id"] + "\n").encode())
        if mode == "drain":
            time.sleep(0.003)


def _zygote(state: Path, port: int) -> None:
    """Read 'write N' / 'drain N' lines; fork a child for each and answer with its pid."""
    import edge_agent.link.uplink  # noqa: F401  imported once here, so that each forked child starts at once
    import tests.test_outbox  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps killed children
    for line in sys.stdin:
        mode, round_no = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                _child(mode, state, port, int(round_no))
            finally:
                os._exit(1)
        print(pid, flush=True)


# ------------------------------------------------------------------------------------------- the test
def _wait_gone(pid: int, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.002)
    raise AssertionError(f"child {pid} did not die")


def _committed(state: Path) -> set[str]:
    ids: set[str] = set()
    for path in state.glob("committed-*.txt"):
        ids.update(line for line in path.read_text().splitlines() if len(line) == 36)
    return ids


def _check_db(db: Path) -> set[str]:
    """quick_check must pass; returns the stored event ids. Opened read-only so nothing is repaired."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)], "outbox corrupt after a kill"
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone() is None:
            return set()  # killed before the first migration committed: nothing can have been stored yet
        return {r[0] for r in conn.execute("SELECT event_id FROM events")}
    finally:
        conn.close()


@pytest.mark.services
def test_sigkill_while_writing_and_draining_loses_nothing(private_broker, tmp_path: Path) -> None:
    from edge_agent.config.outbox import OutboxConfig
    from edge_agent.config.uplink import UplinkConfig
    from edge_agent.link.outbox import Outbox
    from edge_agent.link.uplink import Uplink
    from tests.ack_server import AckServer
    from tests.test_uplink import wait_for

    mq = private_broker()
    mq.add_device(DEVICE, PASSWORD)
    (tmp_path / "pw").write_text(PASSWORD)
    server = AckServer("127.0.0.1", mq.port, "roadmon-server", mq.server_password, client_id="ack-crash",
                       session_expiry_s=3600).start()
    zygote = subprocess.Popen(
        [sys.executable, "-m", "tests.test_crash_safety", "zygote", str(tmp_path), str(mq.port)], cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    rng = random.Random(1234)
    db = tmp_path / "outbox.db"
    kills = 0
    try:
        for round_no in range(KILLS):
            mode = "write" if round_no % 2 == 0 else "drain"
            zygote.stdin.write(f"{mode} {round_no}\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            # Early rounds may die while the file is created and migrated; later ones mid-write or mid-drain.
            time.sleep(rng.uniform(0.0, 0.05) if round_no < 4 else rng.uniform(0.02, 0.25))
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)
            kills += 1
            if db.exists():
                stored = _check_db(db)
                missing = _committed(tmp_path) - stored
                assert not missing, f"round {round_no}: {len(missing)} committed events lost"
    finally:
        zygote.stdin.close()
        zygote.wait(10)
    committed = _committed(tmp_path)
    assert kills >= min(KILLS, 50) and len(committed) > 100

    # After the last crash a healthy agent drains everything; the server has every committed event.
    outbox = Outbox(db, OutboxConfig())
    assert outbox.moved_aside is None
    uplink = Uplink(UplinkConfig(host="127.0.0.1", port=mq.port, tls=False, password_file=str(tmp_path / "pw"),
                                 ack_timeout_s=2, heartbeat_s=0.5), DEVICE, outbox)
    uplink.start()
    try:
        wait_for(lambda: outbox.stats()["queue_depth"] == 0, 60, "the backlog drained after the crashes")
    finally:
        uplink.stop()
        server.stop()
    assert committed <= set(outbox.states())
    assert committed <= set(server.events)
    assert "offline" in server.status_states(), "a killed agent's Last Will marks it offline"
    print(f"crash safety: {kills} SIGKILLs, {len(committed)} committed events, all confirmed; "
          f"deliveries {server.total} for {server.distinct} distinct")
    outbox.close()


if __name__ == "__main__":
    if sys.argv[1] == "zygote":
        _zygote(Path(sys.argv[2]), int(sys.argv[3]))
