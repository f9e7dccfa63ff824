"""A really full disk (a small tmpfs filled to the last byte): the outbox tells "full" from "corrupt", never
moves a healthy queue aside, keeps draining (sending is what frees space) and re-imports sound queues an
earlier run moved aside."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config.outbox import OutboxConfig
from edge_agent.link.outbox import Outbox, disk_trouble
from tests.ack_server import AckServer
from tests.test_outbox import make_event
from tests.test_uplink import login, uplink_cfg, wait_for

CFG = OutboxConfig(synchronous="NORMAL", budget_mb=100, free_floor_mb=0)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs of this test's own (needs root, as `make test` runs here)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def queue_of(n: int, path: Path) -> list[str]:
    with Outbox(path, CFG) as ob:
        events = [make_event(ob, 0.5) for _ in range(n)]
        assert all(ob.add_event(e) for e in events)
    return [e["event_id"] for e in events]


def test_disk_errors_are_trouble_not_corruption() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    io = sqlite3.OperationalError("disk I/O error")
    io.sqlite_errorcode = sqlite3.SQLITE_IOERR | (7 << 8)  # an extended code (SQLITE_IOERR_...)
    corrupt = sqlite3.DatabaseError("database disk image is malformed")
    corrupt.sqlite_errorcode = sqlite3.SQLITE_CORRUPT
    assert disk_trouble(full) and disk_trouble(io)
    assert not disk_trouble(corrupt) and not disk_trouble(ValueError("x"))


def test_a_restart_on_a_full_disk_keeps_the_queue_and_drains_it(small_disk: Path) -> None:
    path = small_disk / "outbox.db"
    ids = queue_of(50, path)
    filler = fill_disk(small_disk)
    ob = Outbox(path, CFG)  # what a watchdog restart does
    try:
        assert ob.moved_aside is None and not list(small_disk.glob("outbox.db.corrupt-*"))
        assert ob.stats()["queue_depth"] == 50
        # The disk refuses every write, yet rows go out, each once per resend period...
        first = ob.due(20, 30.0)
        second = ob.due(40, 30.0)
        assert len(first) == 20 and len(second) == 30
        assert {m.id for m in first} | {m.id for m in second} == set(ids)
        assert ob.due(50, 30.0) == []
        # ...and a confirmation that cannot be written is not sent again while it waits to be written.
        with pytest.raises(sqlite3.OperationalError):
            ob.mark_confirmed([("event", m.id) for m in first])
        ob._held.clear()  # as if the resend period had passed
        assert {m.id for m in ob.due(50, 30.0)} == {m.id for m in second}
        filler.unlink()  # the space frees up: the retried confirmation lands
        assert ob.mark_confirmed([("event", m.id) for m in first]) == 20
        assert ob.stats()["queue_depth"] == 30
    finally:
        ob.close()


@pytest.mark.services
def test_the_uplink_sends_and_confirms_while_the_disk_is_full(small_disk: Path, service_info, mqtt_device,
                                                               tmp_path: Path) -> None:
    from edge_agent.link.uplink import Uplink

    device, password = mqtt_device()
    path = small_disk / "outbox.db"
    ids = queue_of(50, path)
    filler = fill_disk(small_disk)
    server = AckServer("127.0.0.1", service_info.mqtt_port, service_info.server_user, service_info.server_password,
                       client_id=f"ack-{device}", devices=[device]).start()
    ob = Outbox(path, CFG)
    uplink = Uplink(uplink_cfg(service_info.mqtt_port, login(tmp_path, password)), device, ob,
                    status_path=tmp_path / "status.json")
    try:
        uplink.start()
        wait_for(lambda: set(server.events) == set(ids), 30, "every queued event at the server")
        wait_for(lambda: uplink.counters["connects"] >= 1 and len(ob._unsaved_confirmed) == 50, 30,
                 "every confirmation received (and waiting to be written)")
        filler.unlink()
        wait_for(lambda: ob.stats()["queue_depth"] == 0, 30, "the confirmations written once there is room")
        assert max(server.events.values()) == 1  # nothing was sent twice meanwhile
    finally:
        uplink.stop()
        server.stop()
        ob.close()


def test_a_sound_queue_moved_aside_earlier_is_re_imported(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ids = queue_of(5, path)
    with Outbox(path, CFG) as ob:  # one of them was confirmed before the move
        ob.mark_confirmed([("event", ids[0])])
    moved = tmp_path / "outbox.db.corrupt-20261201T000000Z"
    path.rename(moved)  # what an older agent did on a full disk
    with Outbox(path, CFG) as ob:
        assert set(ob.states()) == set(ids[1:])
        assert ob.stats()["queue_depth"] == 4 and ob.next_seq() == 6
        assert len(ob.due(10, 30.0)) == 4
    assert not moved.exists() and (tmp_path / "outbox.db.imported-20261201T000000Z").exists()
    with Outbox(path, CFG) as ob:  # imported once only
        assert ob.stats()["queue_depth"] == 4


def test_a_really_corrupt_file_stays_aside(tmp_path: Path) -> None:
    moved = tmp_path / "outbox.db.corrupt-20261201T000000Z"
    moved.write_bytes(b"not a database at all" * 100)
    with Outbox(tmp_path / "outbox.db", CFG) as ob:
        assert ob.stats()["queue_depth"] == 0
    assert moved.exists()
