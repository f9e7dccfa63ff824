"""A really full disk (a small tmpfs filled to the last byte): the outbox tells "full" from "corrupt", never
moves a healthy queue aside, keeps draining (sending is what frees space) and re-imports sound queues an
earlier run moved aside. A read-only disk (the same tmpfs remounted read-only): the agent refuses to start in
one line, the reading commands still read, and the CLI says what is wrong with the disk, never "damaged"."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from edge_agent.cli import app
from edge_agent.config.outbox import OutboxConfig
from edge_agent.link.outbox import Outbox
from edge_agent.link.outbox_file import OutboxUnavailable, disk_trouble
from tests.ack_server import AckServer
from tests.test_outbox import make_event
from tests.test_uplink import login, uplink_cfg, wait_for

CFG = OutboxConfig(synchronous="NORMAL", budget_mb=100, free_floor_mb=0)


@contextlib.contextmanager
def tmpfs(mount: Path) -> Iterator[Path]:
    """A 2 MB tmpfs at MOUNT (needs root, as `make test` runs here); skips the test where it cannot."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def remount_read_only(mount: Path) -> None:
    # Root ignores file modes, so a read-only mount is the only honest read-only disk here.
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk") as mount:
        yield mount


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    """A read-only disk holding a sound queue (outbox.db: 3 events, 1 confirmed) and agent.toml naming it."""
    with tmpfs(tmp_path / "disk") as mount:
        ids = queue_of(3, mount / "outbox.db")
        with Outbox(mount / "outbox.db", CFG) as ob:
            ob.mark_confirmed([("event", ids[0])])
        write_config(mount)
        remount_read_only(mount)
        yield mount


def write_config(state: Path) -> Path:
    config = state / "agent.toml"
    config.write_text(f'[device]\nid = "veh-disk"\nstate_dir = "{state}"\n[outbox]\nfree_floor_mb = 0\n'
                      '[uplink]\nenabled = false\n')
    return config


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


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


def test_refusals_on_a_full_disk_are_all_counted_in_the_file_once_there_is_room(small_disk: Path) -> None:
    # `queue stats` and `status` read the counters from the file: a count the full disk kept out of it must
    # get there with the next write that works.
    with Outbox(small_disk / "outbox.db", CFG) as ob:
        filler = fill_disk(small_disk)
        refused = sum(not ob.add_event(make_event(ob, 0.9, thumbnail_jpeg_b64="A" * 20_000)) for _ in range(12))
        assert refused == ob.dropped["events_refused_disk_full"] > 0
        filler.unlink()
        assert ob.add_event(make_event(ob, 0.9))
        with Outbox(small_disk / "outbox.db", CFG, agent=False) as tool:
            assert tool.stats()["dropped"]["events_refused_disk_full"] == refused


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


# ------------------------------------------------------------------------------------------ read-only disk
def test_a_read_only_disk_is_refused_in_one_line_and_still_read(read_only_disk: Path) -> None:
    for path in (read_only_disk / "outbox.db", read_only_disk / "new.db"):
        for agent in (True, False):
            with pytest.raises(OutboxUnavailable, match="is on a read-only filesystem") as refused:
                Outbox(path, CFG, agent=agent)
            assert "remount" in refused.value.hint
    with Outbox(read_only_disk / "outbox.db", CFG, read_only=True) as ob:
        assert ob.stats()["events"] == {"pending": 2, "sent": 0, "confirmed": 1, "rejected": 0}
    assert sorted(p.name for p in read_only_disk.iterdir()) == ["agent.toml", "outbox.db"]


def test_the_agent_does_not_start_on_a_read_only_disk(read_only_disk: Path, tmp_path: Path) -> None:
    config = str(read_only_disk / "agent.toml")
    run = cli("run", "--config", config)
    assert run.exit_code == 2 and "cannot start" in run.output and "read-only filesystem" in run.output
    assert isinstance(run.exception, SystemExit)  # a clean exit, not a crash
    (tmp_path / "v.mp4").write_bytes(b"x")
    (tmp_path / "d.nmea").write_bytes(b"x")
    replay = cli("replay", "--video", str(tmp_path / "v.mp4"), "--nmea", str(tmp_path / "d.nmea"),
                 "--outbox", str(read_only_disk / "new.db"))
    assert replay.exit_code == 2 and "read-only filesystem" in replay.output, replay.output


def test_reading_commands_work_on_a_read_only_disk(read_only_disk: Path, tmp_path: Path) -> None:
    config = str(read_only_disk / "agent.toml")
    stats = cli("queue", "stats", "--config", config, "--json")
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.stdout)["queue_depth"] == 2
    for args in (("queue", "ls"), ("status",), ("queue", "export", "--geojson", str(tmp_path / "x.geojson"))):
        done = cli(*args, "--config", config)
        assert done.exit_code == 0, (args, done.output)
    assert len(json.loads((tmp_path / "x.geojson").read_text())["features"]) == 3
    # A command that must write says why it cannot, and never calls the queue damaged.
    retry = cli("queue", "retry", "--config", config)
    assert retry.exit_code == 1 and "read-only filesystem" in retry.output and "damaged" not in retry.output


# ----------------------------------------------------------------------------------- full disk, from the CLI
def test_purge_and_retry_on_a_full_disk_say_so_in_one_line(small_disk: Path) -> None:
    ids = queue_of(30, small_disk / "outbox.db")
    with Outbox(small_disk / "outbox.db", CFG) as ob:
        ob.mark_confirmed([("event", i) for i in ids[:20]])
    config = str(write_config(small_disk))
    filler = fill_disk(small_disk)
    purge = cli("queue", "purge", "--confirmed", "--config", config)
    assert purge.exit_code == 1 and "nothing deleted" in purge.output and "full disk" in purge.output
    assert "free space even to delete" in purge.output and isinstance(purge.exception, SystemExit)
    retry = cli("queue", "retry", "--config", config)
    assert retry.exit_code == 1 and "full disk" in retry.output and isinstance(retry.exception, SystemExit)
    stats = cli("queue", "stats", "--config", config, "--json")  # reading still works
    assert stats.exit_code == 0 and json.loads(stats.stdout)["queue_depth"] == 10
    filler.unlink()
    assert "deleted 20 confirmed rows" in cli("queue", "purge", "--confirmed", "--config", config).output
