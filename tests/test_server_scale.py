"""Ingest that scales with workers, on the real PostGIS and Mosquitto: area locks instead of one global lock
(batches elsewhere on the map do not wait, two sightings at a cell border still make one defect), no row lock
on shared device rows per batch, a stopped worker's share returns at once, and a new worker gets no retained
statuses."""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet_server import aggregate, metrics
from fleet_server.config import AggregateConfig
from fleet_server.store import Batch, store_batch
from roadmon_contract import topics
from tests.server_fixtures import DeviceClient, count, make_cfg, make_coverage, make_event, offset, wait_for, workers

__all__ = ["make_cfg", "workers"]
AGG = AggregateConfig()


def _border_pair(lat: float = 48.137, lon: float = 11.575, apart_m: float = 1.0) -> tuple[tuple, tuple]:
    """Two points APART_M metres apart on either side of a vertical cell border near (lat, lon)."""
    size = aggregate.cell_m(AGG)
    x, _, k = aggregate._mercator(lat, lon)
    border_x = (math.floor(x / size) + 1) * size
    half = apart_m / 2 * k
    to_lon = lambda mx: math.degrees(mx / aggregate._EARTH_R)  # noqa: E731
    return (lat, to_lon(border_x - half)), (lat, to_lon(border_x + half))


def test_cells_of_close_points_meet_at_a_border_and_far_ones_do_not() -> None:
    a, b = _border_pair()
    own = {(int(aggregate._mercator(*p)[0] // aggregate.cell_m(AGG)),
            int(aggregate._mercator(*p)[1] // aggregate.cell_m(AGG))) for p in (a, b)}
    assert len(own) == 2, "the two points lie in different cells"
    assert aggregate.area_cells([a], [], AGG) & aggregate.area_cells([b], [], AGG)
    far = (a[0] + 0.05, a[1])  # 5.5 km north
    assert not aggregate.area_cells([a], [], AGG) & aggregate.area_cells([far], [], AGG)
    assert len(aggregate.area_cells([a], [], AGG)) <= 4
    # The reach covers a join (gate plus a crack's length) and a merge chain: a cell is at least twice that.
    assert aggregate.cell_m(AGG) >= 2 * 3 * (AGG.max_gate_m + AGG.max_line_m)


def test_a_points_cells_cover_its_reach_in_every_direction() -> None:
    """Whatever lies within reach_m of a sighting (north, south, east or west) is in a cell it locks."""
    size, reach = aggregate.cell_m(AGG), aggregate.reach_m(AGG)
    # Points every ~55 m along 8 km north-south and east-west: some lie within reach of every kind of border.
    places = [(48.10 + i * 0.0005, 11.575) for i in range(150)] + [(48.137, 11.50 + i * 0.0007) for i in range(150)]
    for lat, lon in [*places, (-33.9, 151.2), (64.1, -21.9)]:
        locked = aggregate.area_cells([(lat, lon)], [], AGG)
        for north, east in ((0.99, 0), (-0.99, 0), (0, 0.99), (0, -0.99)):
            x, y, _ = aggregate._mercator(*offset(lat, lon, north * reach, east * reach))
            assert (int(x // size), int(y // size)) in locked, (lat, lon, north, east)
    # A small configured cell still spans twice the reach: two cells apart never share a defect.
    small = AggregateConfig(lock_cell_m=50.0)
    assert aggregate.cell_m(small) == 2.0 * aggregate.reach_m(small) > 50.0


def test_lock_levels_stay_within_the_budget() -> None:
    few = {(i, 0) for i in range(10)}
    level, locks = aggregate.area_locks(few, 512)
    assert level == "fine" and sum(excl for _, excl in locks) == 10
    many = {(i, j) for i in range(40) for j in range(40)}
    level, locks = aggregate.area_locks(many, 512)
    assert level == "coarse" and len(locks) <= 512 + 1
    everywhere = {(i * 16, j * 16) for i in range(30) for j in range(30)}
    assert aggregate.area_locks(everywhere, 512) == ("global", [(aggregate._LOCK_KEY, True)])


def test_every_cell_and_level_has_a_lock_key_of_its_own() -> None:
    """Cells either side of the equator and of Greenwich (negative indices) and both levels: no two share an
    advisory lock key (a shared key would make unrelated areas wait for each other), every key a bigint."""
    keys = {aggregate._key(level, cx, cy) for level in (aggregate._LEVEL_FINE, aggregate._LEVEL_COARSE)
            for cx in range(-40, 40) for cy in range(-40, 40)}
    assert len(keys) == 2 * 80 * 80
    assert all(0 < k < 2**63 for k in keys)


def test_fine_locks_count_the_coarse_cells_too() -> None:
    """Three fine cells in one coarse cell take 3 + 1 locks: within a budget of 4, not of 3."""
    cells = {(0, 0), (1, 0), (2, 0)}
    assert aggregate.fits_fine(cells, 4) and not aggregate.fits_fine(cells, 3)


def _try_lock(dsn: str, points: list[tuple[float, float]]) -> bool:
    """Whether a second transaction gets the area locks of POINTS within 0.5 s."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '500ms'")
        try:
            aggregate.lock_areas(conn, points, [], AGG)
        except psycopg.errors.LockNotAvailable:
            return False
    return True


@pytest.mark.services
def test_a_batch_elsewhere_does_not_wait_one_across_the_border_does(make_cfg) -> None:
    cfg = make_cfg()
    dsn = cfg.database.resolve_dsn()
    a, b = _border_pair()
    with psycopg.connect(dsn, autocommit=True) as holder, holder.transaction():
        assert aggregate.lock_areas(holder, [a], [], AGG) == "fine"
        assert _try_lock(dsn, [(a[0] + 0.05, a[1])]), "a batch 5 km away waited"
        assert not _try_lock(dsn, [b]), "a batch 1 m away across a cell border did not wait"
        # A batch spread over the whole region waits too: one of its cells is held.
        spread = [(a[0] + i * 0.01, a[1] + j * 0.01) for i in range(-12, 12) for j in range(-12, 12)]
        assert not _try_lock(dsn, spread)
    assert _try_lock(dsn, [b]) and _try_lock(dsn, spread)


@pytest.mark.services
def test_an_ingest_batch_defers_what_lies_in_a_busy_area(make_cfg) -> None:
    """Ingest workers do not wait for an area another transaction holds: the batch stores the rest and hands
    back the busy area's messages for its next batch; one deferred for longer than defer_busy_s waits instead."""
    cfg = make_cfg()
    dsn = cfg.database.resolve_dsn()
    now = datetime.now(UTC)
    a, b = _border_pair()
    busy = make_event("veh-x", *b, at=now)
    elsewhere = make_event("veh-x", a[0] + 0.05, a[1], at=now)
    with psycopg.connect(dsn, autocommit=True) as holder, holder.transaction():
        aggregate.lock_areas(holder, [a], [], AGG)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '1s'")
            batch = Batch(events=[(busy, now), (elsewhere, now)], origin={busy["event_id"]: ["m1"],
                                                                          elsewhere["event_id"]: ["m2"]})
            stored = store_batch(conn, batch, cfg.aggregate, defer_busy_s=10.0)
            assert stored.new_events == {elsewhere["event_id"]}
            assert stored.deferred is not None and [e["event_id"] for e, _ in stored.deferred.events] == \
                [busy["event_id"]]
            assert stored.deferred.origin == {busy["event_id"]: ["m1"]}
            assert list(stored.deferred.deferred_at) == [busy["event_id"]]
            assert busy["event_id"] not in {i for a in stored.acks.values() for i in a["event_ids"]}
            # Deferred for longer than defer_busy_s: the batch waits for the area (here: into the lock timeout).
            stored.deferred.deferred_at[busy["event_id"]] -= 11.0
            with pytest.raises(psycopg.errors.LockNotAvailable):
                store_batch(conn, stored.deferred, cfg.aggregate, defer_busy_s=10.0)
    with psycopg.connect(dsn, autocommit=True) as conn:
        again = store_batch(conn, Batch(events=[(busy, now)]), cfg.aggregate, defer_busy_s=10.0)
        assert again.new_events == {busy["event_id"]} and again.deferred is None


@pytest.mark.services
def test_deferred_events_and_coverage_are_counted_in_the_deferred_metric(make_cfg) -> None:
    cfg = make_cfg()
    dsn = cfg.database.resolve_dsn()
    now = datetime.now(UTC)
    a, b = _border_pair()
    busy = [make_event("veh-x", *offset(*b, 0.0, east), at=now) for east in (0.0, 0.3)]
    line = make_coverage("veh-x", [b, offset(*b, 2.0, 0.0)], now - timedelta(seconds=5), now)
    before = metrics.INGEST_DEFERRED._value.get()
    with psycopg.connect(dsn, autocommit=True) as holder, holder.transaction():
        aggregate.lock_areas(holder, [a], [], AGG)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '1s'")
            origin = {e["event_id"]: [f"m{i}"] for i, e in enumerate(busy)} | {line["coverage_id"]: ["m9"]}
            stored = store_batch(conn, Batch(events=[(e, now) for e in busy], coverage=[(line, now)], origin=origin),
                                 cfg.aggregate, defer_busy_s=10.0)
    assert stored.deferred is not None
    assert (len(stored.deferred.events), len(stored.deferred.coverage)) == (2, 1)
    assert stored.deferred.origin == origin  # what acknowledges them travels with them
    assert set(stored.deferred.deferred_at) == set(origin)
    assert metrics.INGEST_DEFERRED._value.get() - before == 3


@pytest.mark.services
def test_concurrent_batches_at_a_cell_border_make_one_defect(make_cfg) -> None:
    cfg = make_cfg()
    dsn = cfg.database.resolve_dsn()
    spots = [_border_pair(48.137 + i * 0.02, 11.575) for i in range(6)]
    now = datetime.now(UTC)
    for a, b in spots:
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def one(p: tuple[float, float], device: str, barrier: threading.Barrier = barrier,
                errors: list[BaseException] = errors) -> None:
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    barrier.wait(5)
                    store_batch(conn, Batch(events=[(make_event(device, *p, at=now), now)]), cfg.aggregate)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(p, d)) for p, d in ((a, "veh-a"), (b, "veh-b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
    assert count(dsn, "SELECT count(*) FROM defects") == len(spots)
    assert count(dsn, "SELECT count(*) FROM sightings WHERE defect_id IS NULL") == 0


@pytest.mark.services
def test_a_device_row_held_elsewhere_does_not_block_a_batch(make_cfg) -> None:
    cfg = make_cfg()
    dsn = cfg.database.resolve_dsn()
    now = datetime.now(UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (id, last_seen) VALUES ('veh-held', now() - interval '1 hour')")
    with psycopg.connect(dsn, autocommit=True) as holder, holder.transaction():
        holder.execute("SELECT 1 FROM devices WHERE id = 'veh-held' FOR UPDATE")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '1s'")
            stored = store_batch(conn, Batch(events=[(make_event("veh-held", 48.2, 11.6), now)]), cfg.aggregate)
        assert len(stored.new_events) == 1
    # last_seen moves when it is older than the resolution, and not on every batch.
    with psycopg.connect(dsn, autocommit=True) as conn:
        store_batch(conn, Batch(events=[(make_event("veh-held", 48.2, 11.7), now)]), cfg.aggregate)
        first = conn.execute("SELECT last_seen FROM devices WHERE id = 'veh-held'").fetchone()[0]
        assert datetime.now(UTC) - first < timedelta(seconds=30)
        store_batch(conn, Batch(events=[(make_event("veh-held", 48.2, 11.8), now)]), cfg.aggregate)
        assert conn.execute("SELECT last_seen FROM devices WHERE id = 'veh-held'").fetchone()[0] == first


@pytest.mark.services
def test_a_stopped_workers_share_returns_at_once(make_cfg, workers, mqtt_device, service_info) -> None:
    """A clean stop leaves the shared group and ends the session: no message is routed to it afterwards."""
    device, password = mqtt_device()
    cfg = make_cfg(devices=[device], mqtt={"session_expiry_s": 60})
    _staying, leaving = workers(cfg, 2)
    dev = DeviceClient(service_info.mqtt_host, service_info.mqtt_port, device, password)
    try:
        # Messages already delivered to the leaving worker are stored and acked before it goes.
        early = [make_event(device, 48.1, 11.5 + i * 1e-4) for i in range(20)]
        for e in early:
            dev.publish("event", e)
        leaving.stop()
        sent = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            event = make_event(device, 48.2, 11.5 + len(sent) * 1e-4)
            dev.publish("event", event)
            sent.append(event["event_id"])
            time.sleep(0.05)
        wanted = {e["event_id"] for e in early} | set(sent)
        assert wait_for(lambda: dev.acked_events() >= wanted, timeout_s=10), \
            f"{len(wanted - dev.acked_events())} of {len(wanted)} not acked (stranded at the stopped worker?)"
    finally:
        dev.close()


@pytest.mark.services
def test_a_crashed_workers_share_returns_after_the_session_expiry(make_cfg, workers, mqtt_device,
                                                                  service_info) -> None:
    """A worker that vanishes without DISCONNECT keeps its session, and the broker keeps routing part of the
    messages to it until the session expires (mqtt.session_expiry_s); then everything reaches the other one."""
    device, password = mqtt_device()
    cfg = make_cfg(devices=[device], mqtt={"session_expiry_s": 3})
    _staying, leaving = workers(cfg, 2)
    dev = DeviceClient(service_info.mqtt_host, service_info.mqtt_port, device, password)
    try:
        leaving.stopping.set()  # as after a crash: no drain, no DISCONNECT, the TCP connection just goes
        leaving.client.loop_stop()
        leaving.client.socket().close()
        # Its network loop, which would have noticed the lost connection, is stopped: say so, or the fixture's
        # stop() at teardown drains it, waiting ingest.drain_s (5 s) for an UNSUBACK a closed socket never brings.
        leaving.connected.clear()
        gone_at = time.monotonic()
        sent: list[tuple[float, str]] = []
        while time.monotonic() - gone_at < 7.0:
            event = make_event(device, 48.1, 11.5 + len(sent) * 1e-4)
            dev.publish("event", event)
            sent.append((time.monotonic() - gone_at, event["event_id"]))
            time.sleep(0.1)
        time.sleep(1.0)
        acked = dev.acked_events()
        stranded = [t for t, eid in sent if eid not in acked]
        assert stranded, "the crashed worker's session took no share (the broker routes to it until it expires)"
        print(f"share of the crashed worker returned after {max(stranded):.1f} s (session_expiry_s 3); "
              f"{len(stranded)} of {len(sent)} messages went to its session")
        assert max(stranded) <= 3.0 + 1.5
        assert all(eid in acked for t, eid in sent if t > 3.0 + 1.5)
    finally:
        dev.close()


@pytest.mark.services
def test_a_new_worker_gets_no_retained_status(make_cfg, workers, mqtt_device, service_info) -> None:
    device, password = mqtt_device()
    cfg = make_cfg(devices=[device])
    dsn = cfg.database.resolve_dsn()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ret-{device}", protocol=mqtt.MQTTv5)
    pub.username_pw_set(device, password)
    pub.connect(service_info.mqtt_host, service_info.mqtt_port)
    pub.loop_start()
    try:
        old = json.dumps({"state": "online", "queue_depth": 7, "version": "retained"})
        pub.publish(topics.status(device), old, qos=1, retain=True).wait_for_publish(10)
        workers(cfg, 1)
        time.sleep(1.5)
        assert count(dsn, "SELECT count(*) FROM devices WHERE id = %s AND last_status IS NOT NULL", (device,)) == 0
        new = json.dumps({"state": "online", "queue_depth": 3, "version": "live"})
        pub.publish(topics.status(device), new, qos=1, retain=True).wait_for_publish(10)
        assert wait_for(lambda: count(dsn, "SELECT count(*) FROM devices WHERE id = %s AND queue_depth = 3",
                                      (device,)) == 1, timeout_s=10)
    finally:
        pub.publish(topics.status(device), b"", qos=1, retain=True).wait_for_publish(10)  # clear it
        pub.disconnect()
        pub.loop_stop()


@pytest.mark.services
def test_a_coverage_records_misses_are_found_through_the_extent_index(make_cfg) -> None:
    """Each new coverage record looks for the open defects near its line. On a city's map that must be an index
    search (migration 017's index on coalesce(line, geom)), not a read of every open defect per record: that cost
    8.5 ms a record at 10,000 defects, and coverage arrives once a minute from every vehicle."""
    cfg = make_cfg()
    dsn = cfg.database.resolve_dsn()
    day_ago = datetime.now(UTC) - timedelta(days=1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""
            INSERT INTO defects (class, geom, first_seen, last_seen, status)
            -- A city's map around the drive, none of it within 1 km of the driven line (a random defect there,
            -- ~2 in 100 runs, was a true miss the assertion below did not expect).
            SELECT 'pothole', ST_SetSRID(ST_MakePoint(11.3 + random() * 0.26, 48.0 + random() * 0.3), 4326)::geography,
                   %(t)s, %(t)s, 'new'
            FROM generate_series(1, 5000)""", {"t": day_ago})
        near = conn.execute("""INSERT INTO defects (class, geom, first_seen, last_seen)
                               VALUES ('pothole', ST_SetSRID(ST_MakePoint(11.575, 48.1372), 4326)::geography, %(t)s,
                                       %(t)s) RETURNING id""", {"t": day_ago}).fetchone()[0]
        conn.execute("ANALYZE defects")
        now = datetime.now(UTC)
        cov = make_coverage("veh-cov", [offset(48.137, 11.575, -200, 0), offset(48.137, 11.575, 200, 0)],
                            now - timedelta(seconds=60), now, half_width=14.0)
        stored = store_batch(conn, Batch(coverage=[(cov, now)]), AGG)
        assert stored.new_coverage == {cov["coverage_id"]}
        missed = [r[0] for r in conn.execute("SELECT defect_id FROM defect_misses WHERE coverage_id = %s",
                                             (cov["coverage_id"],))]
        assert missed == [near]
        plan = json.dumps(conn.execute("EXPLAIN (FORMAT JSON) " + aggregate.RECORD_MISSES, {
            "hw": AGG.footprint_half_width_m, "ids": [cov["coverage_id"]], "open": list(aggregate.OPEN_FOR_MISSES),
            "slack": aggregate.MISS_SLACK, "same_way": AGG.miss_same_way_deg, "reach": AGG.miss_reach_m}).fetchone()[0])
    assert "defects_extent_gist" in plan
