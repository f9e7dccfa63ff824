"""`edge-agent queue ...` and `edge-agent status` against a real outbox file."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_agent.cli import app
from edge_agent.config.outbox import OutboxConfig
from edge_agent.health import HealthBoard
from edge_agent.link.heartbeat import build_status, write_status_file
from edge_agent.link.outbox import Outbox
from roadmon_contract import validate
from roadmon_contract.times import utc_now_iso
from tests.test_outbox import make_coverage, make_event

runner = CliRunner()


@pytest.fixture
def box(tmp_path: Path) -> dict:
    """A config whose state_dir holds an outbox with 3 events (1 confirmed) and 1 coverage record."""
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(f'[device]\nid = "veh-cli"\nstate_dir = "{state}"\n')
    with Outbox(state / "outbox.db", OutboxConfig(synchronous="NORMAL")) as ob:
        events = [make_event(ob, s, thumbnail_jpeg_b64="QQ==") for s in (0.2, 0.9, 0.5)]
        for e in events:
            ob.add_event(e)
        ob.add_coverage(make_coverage())
        ob.due(10, 3600)
        ob.mark_confirmed([("event", events[0]["event_id"])])
    return {"config": str(config), "state": state, "events": events}


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_stats_and_ls(box) -> None:
    stats = json.loads(run("queue", "stats", "--config", box["config"], "--json"))
    assert stats["queue_depth"] == 3 and stats["events"] == {"pending": 2, "sent": 0, "confirmed": 1, "rejected": 0}
    assert stats["rejected"] == 0
    table = run("queue", "stats", "--config", box["config"])
    assert "queue depth 3" in table and "events" in table
    rows = json.loads(run("queue", "ls", "--config", box["config"], "--json"))
    assert [r["id"] for r in rows] == [box["events"][1]["event_id"], box["events"][2]["event_id"],
                                       box["events"][0]["event_id"]]      # send order, confirmed last
    pending = json.loads(run("queue", "ls", "--config", box["config"], "--state", "pending", "--json"))
    assert len(pending) == 2
    assert "coverage rows" in run("queue", "ls", "--config", box["config"], "--kind", "coverage")
    bad = runner.invoke(app, ["queue", "ls", "--config", box["config"], "--state", "lost"])
    assert bad.exit_code == 2 and "--state" in bad.output


def test_retry_purge_and_export(box, tmp_path: Path) -> None:
    assert "3 unconfirmed rows are due now" in run("queue", "retry", "--config", box["config"])
    bad = runner.invoke(app, ["queue", "retry", "--confirmed-since", "2026-12-06 02:00", "--config", box["config"]])
    assert bad.exit_code == 2 and "with its zone" in bad.output
    refused = runner.invoke(app, ["queue", "purge", "--config", box["config"]])
    assert refused.exit_code == 2 and "--confirmed" in refused.output
    again = run("queue", "retry", "--confirmed-since", "2000-01-01T00:00:00Z", "--config", box["config"])
    assert "1 events and 0 coverage records go to the server again" in again  # the server lost it: sent again
    assert "4 unconfirmed rows are due now" in again
    assert "deleted 0 confirmed rows" in run("queue", "purge", "--confirmed", "--config", box["config"])
    out = tmp_path / "events.geojson"
    # --outbox alone is enough, even without a config file.
    run("queue", "export", "--geojson", str(out), "--outbox", str(box["state"] / "outbox.db"),
        "--config", str(tmp_path / "none.toml"))
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 3
    feature = collection["features"][0]
    assert feature["geometry"] == {"type": "Point", "coordinates": [11.5, 48.1]}
    assert feature["properties"]["class"] == "pothole" and feature["properties"]["queue_state"] == "pending"


def test_rows_the_server_rejected_are_not_called_confirmed(box, monkeypatch: pytest.MonkeyPatch) -> None:
    """The field case: the server refused events for good (too old for its horizon). `queue stats`, `queue ls`
    and `status` say so instead of counting them as confirmed."""
    from rich.console import Console

    from edge_agent.commands import queue

    refused = [box["events"][1]["event_id"], box["events"][2]["event_id"]]
    with Outbox(box["state"] / "outbox.db", agent=False) as ob:
        ob.mark_rejected([(i, "captured_at: 2026-10-01T09:00:00+00:00 is older than 30 days") for i in refused])
    stats = json.loads(run("queue", "stats", "--config", box["config"], "--json"))
    assert stats["events"] == {"pending": 0, "sent": 0, "confirmed": 1, "rejected": 2}
    assert (stats["queue_depth"], stats["rejected"]) == (1, 2)
    screen = Console(width=120, record=True, file=io.StringIO())
    monkeypatch.setattr(queue, "out", screen)
    run("queue", "stats", "--config", box["config"])
    monkeypatch.undo()
    text = screen.export_text()
    header = next(line for line in text.splitlines() if "pending" in line)
    assert [c for c in re.split(r"[\s┃│]+", header) if c] == ["pending", "sent", "confirmed", "rejected"]
    events_row = next(line for line in text.splitlines() if "events" in line)
    assert [c for c in re.split(r"[\s┃│]+", events_row) if c] == ["events", "0", "0", "1", "2"]
    assert "2 rows rejected by the server" in text and "queue ls --state rejected --json" in text
    rows = json.loads(run("queue", "ls", "--config", box["config"], "--state", "rejected", "--json"))
    assert sorted(r["id"] for r in rows) == sorted(refused)
    assert all(r["state"] == "rejected" and "older than 30 days" in r["rejected"] for r in rows)
    everything = json.loads(run("queue", "ls", "--config", box["config"], "--json"))
    assert {r["id"]: r["state"] for r in everything}[box["events"][0]["event_id"]] == "confirmed"
    confirmed = json.loads(run("queue", "ls", "--config", box["config"], "--state", "confirmed", "--json"))
    assert [r["id"] for r in confirmed] == [box["events"][0]["event_id"]]
    info = json.loads(run("status", "--config", box["config"], "--json"))
    assert info["rejected"] == 2 and info["events"]["rejected"] == 2 and info["events"]["confirmed"] == 1
    table = run("status", "--config", box["config"])
    assert "rejected by server" in table and "2 rows" in table
    assert "deleted 1 confirmed rows" in run("queue", "purge", "--confirmed", "--config", box["config"])
    assert json.loads(run("queue", "stats", "--config", box["config"], "--json"))["rejected"] == 2
    assert "deleted 2 rejected rows" in run("queue", "purge", "--rejected", "--config", box["config"])


def test_missing_outbox_or_config_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["queue", "stats", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "file not found" in result.output
    result = runner.invoke(app, ["queue", "stats", "--outbox", str(tmp_path / "none.db")])
    assert result.exit_code == 2 and "no outbox" in result.output
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 300)
    result = runner.invoke(app, ["queue", "stats", "--outbox", str(junk)])
    assert result.exit_code == 1 and "cannot read the outbox" in result.output
    assert junk.exists(), "the CLI never moves a queue aside"


def test_status_shows_queue_fix_and_broker(box) -> None:
    health = HealthBoard()
    health.update(uplink="connected", fix={"lat": 48.1, "lon": 11.5, "mode": 3}, fps=8.0)
    with Outbox(box["state"] / "outbox.db", agent=False) as ob:
        beat = build_status("online", "veh-cli", ob, health, broker="connected")
        write_status_file(box["state"] / "agent-status.json", beat)
    assert validate.errors("status", beat) == []
    assert beat["queue_depth"] == 3 and beat["oldest_pending_age_s"] >= 0 and beat["disk_free_mb"] > 0
    from edge_agent.link.writer_lock import WriterLock

    lock = WriterLock(box["state"] / "outbox.db").acquire()  # a running agent holds its outbox
    try:
        info = json.loads(run("status", "--config", box["config"], "--json"))
        table = run("status", "--config", box["config"])
    finally:
        lock.release()
    assert info["broker"] == "connected" and info["broker_state"] == "connected" and info["queue_depth"] == 3
    assert info["position"]["mode"] == 3 and info["last_confirmed_at"]
    for words in ("broker", "connected", "queue depth", "oldest pending", "last confirmed", "position"):
        assert words in table


def test_status_without_a_running_agent(box) -> None:
    info = json.loads(run("status", "--config", box["config"], "--json"))
    assert info["broker"].startswith("unknown") and info["queue_depth"] == 3
    assert "no status file" in info["broker"]


@pytest.mark.parametrize("damage", ["", '{"state": "onl', "[1, 2]"])
def test_status_with_a_damaged_status_file_says_so(box, damage) -> None:
    """Empty or cut short is what a power cut leaves (the file is not fsynced): not a disk to check."""
    (box["state"] / "agent-status.json").write_text(damage)
    info = json.loads(run("status", "--config", box["config"], "--json"))
    assert "status file" in info["broker"] and "cannot be read" in info["broker"] and info["queue_depth"] == 3
    assert "power cut" in info["broker"] and "not running" in info["broker"]


def test_ls_is_readable_on_an_80_column_terminal(box, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from edge_agent.commands import queue

    with Outbox(box["state"] / "outbox.db", agent=False) as ob:  # a dead letter, with a long reason
        ob.mark_rejected([(box["events"][2]["event_id"], "schema: 'bbox' must have 4 numbers " * 3)])
    screen = Console(width=80, record=True, file=io.StringIO())
    monkeypatch.setattr(queue, "out", screen)
    run("queue", "ls", "--config", box["config"])
    text = screen.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if line.startswith("id "))
    for name in ("seq", "state", "pri", "try", "created (UTC)", "img"):
        assert name in header
    ids = {e["event_id"] for e in box["events"]}
    rows = {cells[0]: cells for cells in (line.split() for line in lines) if cells and cells[0] in ids}
    # One line per event with every column filled in, and the whole id (what goes into a server query).
    assert set(rows) == ids
    for cells in rows.values():
        assert len(cells) == 8 and cells[-1] == "yes", cells  # id seq state pri try date time img
    assert rows[box["events"][2]["event_id"]][2] == "rejected" and "--json shows why" in text


def test_export_refuses_a_missing_folder_and_reports_a_failed_write(box, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["queue", "export", "--geojson", str(tmp_path / "nope" / "x.geojson"),
                                  "--config", box["config"]], env={"COLUMNS": "200"})
    assert missing.exit_code == 2 and "does not exist" in missing.output
    not_a_file = runner.invoke(app, ["queue", "export", "--geojson", str(tmp_path), "--config", box["config"]])
    assert not_a_file.exit_code == 1 and f"cannot write {tmp_path}" in not_a_file.output
    assert isinstance(not_a_file.exception, SystemExit)


def test_a_config_that_is_a_folder_or_not_text_is_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "agent.toml"
    binary.write_bytes(b"\xff\xfe[device]\n")
    for config, words in ((tmp_path, "is a folder"), (binary, "not UTF-8")):
        for args in (("queue", "ls"), ("status",)):
            result = runner.invoke(app, [*args, "--config", str(config)])
            assert result.exit_code == 2 and words in result.output, (args, result.output)
            assert isinstance(result.exception, SystemExit)


def test_every_command_takes_the_config_from_the_environment(box) -> None:
    env = {"EDGE_AGENT_CONFIG": box["config"]}
    stats = runner.invoke(app, ["queue", "stats", "--json"], env=env)
    assert stats.exit_code == 0 and json.loads(stats.stdout)["path"] == str(box["state"] / "outbox.db")
    status = runner.invoke(app, ["status", "--json"], env=env)
    assert status.exit_code == 0 and json.loads(status.stdout)["queue_depth"] == 3
    # The option still wins over the environment.
    other = runner.invoke(app, ["queue", "stats", "--config", "/nowhere.toml"], env=env)
    assert other.exit_code == 2 and "/nowhere.toml" in other.output


def test_ls_refuses_a_limit_sqlite_cannot_take(box) -> None:
    for limit in ("99999999999999999999", "10000001", "0"):
        result = runner.invoke(app, ["queue", "ls", "--config", box["config"], "--limit", limit])
        assert result.exit_code == 2 and "'--limit'" in result.output, result.output
        assert isinstance(result.exception, SystemExit)  # a usage error, not the OverflowError from SQLite
    assert len(json.loads(run("queue", "ls", "--config", box["config"], "--limit", "10000000", "--json"))) == 3


def status_table(box: dict) -> str:
    """`edge-agent status` on a wide terminal, as one line: each row's words stay together."""
    result = runner.invoke(app, ["status", "--config", box["config"]], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def write_beat(box: dict, health: HealthBoard, **extra: object) -> None:
    with Outbox(box["state"] / "outbox.db", agent=False) as ob:
        beat = build_status("online", "veh-cli", ob, health, broker="connected") | extra
    assert validate.errors("status", beat) == []
    write_status_file(box["state"] / "agent-status.json", beat)


def test_status_says_how_far_the_box_drove_without_a_finding(box) -> None:
    health = HealthBoard()
    health.update(uplink="connected", gnss="ok", camera="ok")
    health.set_count("driven_m_since_event", 3_200)
    write_beat(box, health)
    assert json.loads(run("status", "--config", box["config"], "--json"))["driven_m_since_event"] == 3_200
    assert "driven since a finding │ 3.2 km" in status_table(box)
    health.set_count("driven_m_since_event", 23_400)  # a smeared windscreen: doctor is amber too
    write_beat(box, health)
    assert "driven since a finding │ 23.4 km: nothing found that far (see doctor)" in status_table(box)


def test_status_shows_gnss_health_and_defects_without_a_position(box) -> None:
    """GNSS sending junk: the reader says no_fix, tracks end without a position and no event is sent. The
    status says both, beside the queue that stays empty (the heartbeat carries the board's counters)."""
    health = HealthBoard()
    health.update(uplink="connected", gnss="no_fix", fps=8.0)
    health.count("events_no_fix", 4)
    write_beat(box, health)
    info = json.loads(run("status", "--config", box["config"], "--json"))
    assert info["gnss"] == {"state": "no_fix", "last_fix_age_s": None, "problem": None} and info["events_no_fix"] == 4
    table = status_table(box)
    assert "GNSS │ no_fix, last fix unknown" in table
    assert "events without position │ 4 defects seen but not placed (no usable GNSS position)" in table

    # The receiver's last real fix, 90 s ago: its age, whatever the reader's state now.
    health.update(gnss="lost", last_fix_mono=time.monotonic() - 90)
    write_beat(box, health)
    info = json.loads(run("status", "--config", box["config"], "--json"))
    assert info["gnss"]["state"] == "lost" and 89 <= info["gnss"]["last_fix_age_s"] < 150
    assert "GNSS │ lost, last fix" in status_table(box)

    # A running agent that has not yet had a defect it could not place counts 0, not "not in its status file";
    # the camera's state has a row of its own (with no camera only `fps -` said so).
    health = HealthBoard()
    health.update(uplink="connected", gnss="ok", camera="no_frames")
    write_beat(box, health)
    assert json.loads(run("status", "--config", box["config"], "--json"))["events_no_fix"] == 0
    table = status_table(box)
    assert "events without position │ 0" in table and "camera │ no_frames" in table

    # An older agent's status file (no counters, no last_fix_at): nothing made up.
    health = HealthBoard()
    health.update(uplink="connected", gnss="ok", fix={"lat": 48.1, "lon": 11.5, "h_std_m": 2.0})
    with Outbox(box["state"] / "outbox.db", agent=False) as ob:
        beat = build_status("online", "veh-cli", ob, health, broker="connected")
    write_status_file(box["state"] / "agent-status.json",
                      {k: v for k, v in beat.items() if k not in ("counters", "last_fix_at")})
    info = json.loads(run("status", "--config", box["config"], "--json"))
    assert info["gnss"]["state"] == "ok" and 0 <= info["gnss"]["last_fix_age_s"] < 60
    assert info["events_no_fix"] is None
    table = status_table(box)
    assert re.search(r"GNSS │ ok, last fix \d+ s ago", table) and "- (not in this agent's status file)" in table


def test_status_opens_with_the_camera_and_says_what_its_state_means(box) -> None:
    """A frozen picture or a failing detector is why a box is quiet: the table opens with what the box sees (the
    camera was a row under the queue figures) and says in words what each state means."""
    health = HealthBoard()
    health.update(uplink="connected", gnss="ok", camera="frozen", detector="failed", fps=8.0)
    write_beat(box, health)
    table = status_table(box)
    assert table.split("│")[1].strip() == "camera", table  # the first row
    assert "frozen (camera shows one picture while driving" in table
    assert "detector │ failed (detector fails: nothing is detected)" in table


def test_status_says_a_box_is_too_slow_for_its_speed_in_words(box) -> None:
    """The fps row was only coloured ("2.2 (a frame every 8.1 m while driving)"), with the detector's time in
    --json alone."""
    health = HealthBoard()
    health.update(uplink="connected", gnss="ok", camera="ok", detector="ok", fps=2.2, m_per_frame=8.1,
                  inference_ms=452.0)
    write_beat(box, health)
    table = status_table(box)
    assert "2.2, detector 452 ms a frame (a frame every 8.1 m while driving: too slow for its speed" in table
    assert "edge-agent doctor" in table
    assert json.loads(run("status", "--config", box["config"], "--json"))["inference_ms"] == 452.0
    health.update(m_per_frame=3.0)
    write_beat(box, health)
    assert "(a frame every 3.0 m while driving)" in status_table(box)


def test_status_shows_the_uplinks_window_and_a_backed_off_timeout(box) -> None:
    """docs/store-and-forward.md said `status` showed the flow control; it was only in the status file, while a
    technician asked why a box's rows waited minutes after the server came back."""
    health = HealthBoard()
    health.update(uplink="connected", gnss="ok", camera="ok")
    flow = {"window": 4, "ack_timeout_s": 320.0, "backed_off": True, "ack_latency_s": 0.21, "timeouts": 6}
    write_beat(box, health, uplink={"flow": flow})
    assert json.loads(run("status", "--config", box["config"], "--json"))["flow"] == flow
    assert ("uplink │ 4 rows in flight at most, ack timeout 5 min, acks take 0.2 s (backed off: the server has "
            "not answered)") in status_table(box)


def test_a_running_agents_last_fix_is_as_old_as_at_its_status_not_since(box) -> None:
    """With fixes every second, `status` and doctor read "last fix 26 s ago": the age was counted from the fix
    the status file named to now, and the file is written every 30 s (a change of state rewrites it at once)."""
    from edge_agent.doctor.agent_view import AgentView

    health = HealthBoard()
    health.update(uplink="connected", gnss="ok", last_fix_mono=time.monotonic() - 0.5)
    with Outbox(box["state"] / "outbox.db", agent=False) as ob:
        beat = build_status("online", "veh-cli", ob, health, broker="connected")
    beat |= {"sent_at": utc_now_iso(25), "last_fix_at": utc_now_iso(25.5)}
    write_status_file(box["state"] / "agent-status.json", beat)
    assert json.loads(run("status", "--config", box["config"], "--json"))["gnss"]["last_fix_age_s"] < 2
    assert AgentView(1, beat).last_fix in ("0 s ago", "1 s ago")
    lost = beat | {"health": beat["health"] | {"gnss": "lost"}}  # no fix since: counted to now
    write_status_file(box["state"] / "agent-status.json", lost)
    assert json.loads(run("status", "--config", box["config"], "--json"))["gnss"]["last_fix_age_s"] >= 25
    why = "the receiver repeats one position while its speed says it moved 21 m: power-cycle it"
    frozen = beat | {"health": beat["health"] | {"gnss": "frozen", "gnss_problem": why}}  # said why: null before
    write_status_file(box["state"] / "agent-status.json", frozen)
    assert json.loads(run("status", "--config", box["config"], "--json"))["gnss"]["problem"] == why


def test_status_has_one_last_fix_and_a_stopped_agents_gnss_is_history(box) -> None:
    """During `run` the status showed `GNSS │ ok, last fix 15 s ago` beside `last fix │ -` (the pipeline's
    position at its last frame, with no frame processed yet); after a stop `GNSS ok` as if the receiver still
    had a fix. One "last fix" figure; the position row says why it is empty; a stopped agent's GNSS is history."""
    health = HealthBoard()
    health.update(uplink="connected", gnss="ok", last_fix_mono=time.monotonic() - 3)  # no frame yet: no fps, no fix
    write_beat(box, health)
    table = status_table(box)
    assert len(re.findall("last fix", table)) == 1, table
    assert re.search(r"GNSS │ ok, last fix \d+ s ago", table)
    assert "position │ - (no frame processed)" in table

    with Outbox(box["state"] / "outbox.db", agent=False) as ob:
        beat = build_status("stopped", "veh-cli", ob, health, broker="stopped")
    write_status_file(box["state"] / "agent-status.json", beat)
    info = json.loads(run("status", "--config", box["config"], "--json"))
    assert info["gnss"]["state"] == "stopped" and info["gnss"]["last_state"] == "ok"
    assert 2 <= info["gnss"]["last_fix_age_s"] < 60
    table = status_table(box)
    assert "GNSS │ agent stopped (GNSS ok at its last status" in table and "last fix" in table
    assert "GNSS │ ok" not in table

    # An agent that died without a farewell: its status grows stale, and says so instead of "ok".
    stale = beat | {"state": "online", "sent_at": utc_now_iso(3600)}
    write_status_file(box["state"] / "agent-status.json", stale)
    info = json.loads(run("status", "--config", box["config"], "--json"))
    assert info["gnss"]["state"] == "unknown" and info["gnss"]["last_state"] == "ok"
    assert "agent not running (status is stale)" in status_table(box)


def test_status_says_in_one_word_whether_the_agent_runs(box, monkeypatch: pytest.MonkeyPatch) -> None:
    """A monitoring script had only prose in `broker` to tell a hung agent from a running one, `health` turned
    null on a box without a status (d["health"]["uplink"] raised), and as a non-root user a running agent read
    "cannot be read: empty or half-written" in status and "it hangs" (red) in doctor. An operator's finding."""
    import os

    from edge_agent.config import load
    from edge_agent.doctor.delivery_check import check_agent
    from edge_agent.doctor.result import Context, Level
    from edge_agent.link.writer_lock import WriterLock

    def state() -> dict:
        return json.loads(run("status", "--config", box["config"], "--json"))

    info = state()
    assert info["agent"] == "not running" and info["health"] == {} and info["flow"] == {}
    assert info["broker_state"] == "unknown"
    status_file = box["state"] / "agent-status.json"
    with Outbox(box["state"] / "outbox.db", agent=False) as ob:
        beat = build_status("online", "veh-cli", ob, HealthBoard())
    write_status_file(status_file, beat)
    killed = state()  # a fresh status, but no agent holds the outbox: killed a moment ago
    assert killed["agent"] == "not running" and killed["broker_state"] == "unknown"
    assert killed["broker"].endswith("(at its last status; no agent runs now)"), killed["broker"]
    lock = WriterLock(box["state"] / "outbox.db").acquire()  # what a running agent holds
    try:
        running = state()
        assert running["agent"] == "running" and running["broker_state"] == "online"
        assert set(running) == set(info)  # one set of keys in every state
        write_status_file(status_file, beat | {"sent_at": utc_now_iso(3600)})
        assert state()["agent"] == "hung"
        assert "agent hung" in status_table(box)
        write_status_file(status_file, beat)
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == status_file else real_access(p, mode))
        info = state()
        assert info["agent"] == "unknown" and "cannot be read by this user" in info["broker"], info["broker"]
        result = check_agent(Context(box["config"], cfg=load(box["config"])))
        assert result.level == Level.YELLOW and "cannot be read by this user" in result.summary, result
    finally:
        monkeypatch.undo()
        lock.release()
    assert state()["agent"] == "not running"


def test_status_json_of_a_box_whose_agent_never_started(tmp_path: Path) -> None:
    """A fresh install gave a monitoring script no JSON at all (exit 2): it gets the same keys, empty."""
    config = tmp_path / "agent.toml"
    config.write_text(f'[device]\nid = "veh-new"\nstate_dir = "{tmp_path / "state"}"\n')
    info = json.loads(run("status", "--config", str(config), "--json"))
    assert info["agent"] == "never started" and info["queue_depth"] == 0 and info["broker_state"] == "unknown"
    assert info["events"] == {"pending": 0, "sent": 0, "confirmed": 0, "rejected": 0}
    people = runner.invoke(app, ["status", "--config", str(config)])
    assert people.exit_code == 2 and "no outbox" in people.output  # a person is told in one line
