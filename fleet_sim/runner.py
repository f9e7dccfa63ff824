"""Runs a World against a real fleet server: each vehicle's messages go through its outbox and its own MQTT 5
login, step by simulated step, and after each step (once the server has acked everything) the server's
defects are read back as a snapshot for scoring."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import psycopg
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fleet_sim.client import VehicleLink
from fleet_sim.defects import DAY_S
from fleet_sim.metrics import MapDefect, Scorer, Snapshot, TruthDefect
from fleet_sim.network import nearest_edge
from fleet_sim.outbox import Outbox
from fleet_sim.world import Message, World

log = logging.getLogger(__name__)

SNAPSHOT = """SELECT id, class, status, ST_Y(geom::geometry), ST_X(geom::geometry),
                     coalesce(ST_Length(line), 0) FROM defects"""
NAMED_BLIND = "SELECT id FROM devices WHERE finds_nothing IS NOT NULL"  # fleet_server.blind_boxes


@dataclass
class RunStats:
    events: int = 0
    coverage: int = 0
    resent: int = 0
    rejected: int = 0
    unacked: int = 0
    wall_s: float = 0.0
    steps: int = 0
    ack_wait_s: list[float] = field(default_factory=list)


class Runner:
    def __init__(self, world: World, mqtt_host: str, mqtt_port: int, credentials: dict[str, str], dsn: str,
                 step_s: float = 1800.0, step_timeout_s: float = 180.0) -> None:
        self.world = world
        self.dsn = dsn
        self.step_s = step_s
        self.step_timeout_s = step_timeout_s
        self.outboxes = [Outbox() for _ in world.device_ids]
        self.links = [VehicleLink(mqtt_host, mqtt_port, d, credentials[d], box)
                      for d, box in zip(world.device_ids, self.outboxes, strict=True)]
        self.snapshots: list[Snapshot] = []
        self.named_blind: dict[str, float] = {}  # device -> simulated time the server first said it finds nothing
        self.map_street: dict[int, int] = {}
        self.stats = RunStats()
        self.end_t = 0.0

    def wait_connected(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for link in self.links:
            if not link.subscribed.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"{link.device_id}: not connected and subscribed to its ack topic "
                                   f"(login refused or broker unreachable)")

    def run(self, days: int, progress: bool = True) -> RunStats:
        t_start = time.monotonic()
        self.end_t = days * DAY_S
        self.wait_connected()
        steps_per_day = int(DAY_S // self.step_s)
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       disable=not progress)
        with bar, psycopg.connect(self.dsn, autocommit=True) as conn:
            task = bar.add_task("simulated steps", total=days * steps_per_day)
            for day in range(days):
                plan = self.world.day(day)
                cursors = [0] * len(plan)
                for step in range(steps_per_day):
                    until = day * DAY_S + (step + 1) * self.step_s
                    sent = 0
                    for vi, msgs in enumerate(plan):
                        sent += self._enqueue(vi, msgs, cursors, until)
                    if sent:
                        self._drain()
                        self.snapshots.append(self._snapshot(conn, until))
                    bar.update(task, advance=1, description=f"day {day + 1}/{days}, {self.stats.events} events")
            # Messages written after the last step's end (a drive that ran past midnight of the last day).
            for vi, msgs in enumerate(plan):
                self._enqueue(vi, msgs, cursors, float("inf"))
            self._drain()
            self.snapshots.append(self._snapshot(conn, days * DAY_S + self.step_s))
        for link in self.links:
            link.close()
        self.stats.resent = sum(b.resent for b in self.outboxes)
        self.stats.rejected = sum(b.rejected for b in self.outboxes)
        self.stats.unacked = sum(len(b) for b in self.outboxes)
        self.stats.wall_s = time.monotonic() - t_start
        return self.stats

    def _enqueue(self, vi: int, msgs: list[Message], cursors: list[int], until: float) -> int:
        n = 0
        while cursors[vi] < len(msgs) and msgs[cursors[vi]].t < until:
            m = msgs[cursors[vi]]
            self.outboxes[vi].add(m.kind, m.id, m.payload)
            if m.kind == "event":
                self.stats.events += 1
            else:
                self.stats.coverage += 1
            cursors[vi] += 1
            n += 1
        return n

    def _drain(self) -> None:
        """Send until the server has acked everything (re-sending what stays unacked past the timeout)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.step_timeout_s:
            for link in self.links:
                link.pump()
            if not any(len(b) for b in self.outboxes):
                break
            time.sleep(0.02)
        else:
            log.warning("step: %d messages still unacked after %.0f s", sum(len(b) for b in self.outboxes),
                        self.step_timeout_s)
        self.stats.ack_wait_s.append(time.monotonic() - t0)
        self.stats.steps += 1

    def _snapshot(self, conn: psycopg.Connection, t: float) -> Snapshot:
        for (device,) in conn.execute(NAMED_BLIND).fetchall():
            self.named_blind.setdefault(device, t)
        frame = self.world.frame
        out = []
        for did, cls, status, lat, lon, line_m in conn.execute(SNAPSHOT).fetchall():
            x, y = frame.to_enu(lat, lon)
            if did not in self.map_street:
                self.map_street[did] = nearest_edge(self.world.net, x, y)
            out.append(MapDefect(did, cls, status, x, y, float(line_m)))
        return Snapshot(t, out)

    def truths(self) -> list[TruthDefect]:
        net, end = self.world.net, self.end_t
        out = []
        for d in self.world.field.defects:
            (ax, ay), (bx, by) = d.ends(net, min(end, d.repaired or end))
            out.append(TruthDefect(d.id, d.cls, ax, ay, bx, by, d.appeared, d.repaired))
        return out

    def scorer(self) -> Scorer:
        return Scorer(self.truths(), self.snapshots, self.world.truth.defect_passes,
                      street_passes=self.world.truth.edge_passes, map_street=self.map_street)
