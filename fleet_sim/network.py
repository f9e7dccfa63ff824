"""The city road network: a jittered grid of two-way streets, and routes through it.

Streets are straight edges between intersections; vehicles keep to the right-hand lane, LANE_OFFSET_M right of
the centre line. A grid is enough for what the map's quality depends on: roads driven in both directions,
intersections where a crossing street passes close to a defect, and routes that drive some streets daily and
others rarely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

LANE_OFFSET_M = 1.75  # a vehicle's path: the middle of the right-hand lane of a 7 m street


@dataclass(frozen=True)
class Edge:
    id: int
    a: int                      # node ids
    b: int
    ax: float                   # node positions, local east/north metres
    ay: float
    bx: float
    by: float

    @property
    def length(self) -> float:
        return math.hypot(self.bx - self.ax, self.by - self.ay)

    def point(self, s: float, left: float) -> tuple[float, float]:
        """The point S metres from A along the edge and LEFT metres left of it (facing A -> B)."""
        ux, uy = (self.bx - self.ax) / self.length, (self.by - self.ay) / self.length
        return self.ax + ux * s - uy * left, self.ay + uy * s + ux * left

    @property
    def bearing_deg(self) -> float:
        """Compass bearing of A -> B."""
        return math.degrees(math.atan2(self.bx - self.ax, self.by - self.ay)) % 360.0


@dataclass
class RoadNetwork:
    nodes: np.ndarray                            # (n, 2) east/north
    edges: list[Edge]
    adjacency: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # node -> [(edge id, other node)]

    @classmethod
    def grid(cls, rng: np.random.Generator, nx: int, ny: int, block_m: float, jitter_m: float = 8.0) -> RoadNetwork:
        """NX x NY intersections BLOCK_M apart, each moved up to JITTER_M (so streets are not exactly parallel)."""
        xs, ys = np.meshgrid(np.arange(nx) * block_m, np.arange(ny) * block_m, indexing="ij")
        nodes = np.stack([xs.ravel(), ys.ravel()], axis=1) + rng.uniform(-jitter_m, jitter_m, (nx * ny, 2))
        edges: list[Edge] = []

        def add(a: int, b: int) -> None:
            edges.append(Edge(len(edges), a, b, *nodes[a], *nodes[b]))

        for i in range(nx):
            for j in range(ny):
                n = i * ny + j
                if i + 1 < nx:
                    add(n, n + ny)
                if j + 1 < ny:
                    add(n, n + 1)
        net = cls(nodes, edges)
        for e in edges:
            net.adjacency.setdefault(e.a, []).append((e.id, e.b))
            net.adjacency.setdefault(e.b, []).append((e.id, e.a))
        return net

    @property
    def length_km(self) -> float:
        return sum(e.length for e in self.edges) / 1000.0

    def route(self, rng: np.random.Generator, start: int, length_m: float) -> list[tuple[int, bool]]:
        """A random drive of about LENGTH_M from node START: (edge id, forward) steps, no U-turns, going on
        straight more often than turning (as delivery and bus routes do)."""
        steps: list[tuple[int, bool]] = []
        node, prev_edge, heading, driven = start, -1, None, 0.0
        while driven < length_m:
            options = [(eid, other) for eid, other in self.adjacency[node] if eid != prev_edge] or self.adjacency[node]
            weights = []
            for _, other in options:
                d = self.nodes[other] - self.nodes[node]
                h = math.atan2(d[1], d[0])
                straight = heading is not None and abs(math.remainder(h - heading, 2 * math.pi)) < 0.5
                weights.append(3.0 if straight else 1.0)
            w = np.asarray(weights) / sum(weights)
            eid, other = options[int(rng.choice(len(options), p=w))]
            edge = self.edges[eid]
            steps.append((eid, edge.a == node))
            d = self.nodes[other] - self.nodes[node]
            heading = math.atan2(d[1], d[0])
            driven += edge.length
            prev_edge, node = eid, other
        return steps


def nearest_edge(net: RoadNetwork, x: float, y: float) -> int:
    """The street nearest to (X, Y)."""
    ax = np.array([e.ax for e in net.edges])
    ay = np.array([e.ay for e in net.edges])
    dx = np.array([e.bx for e in net.edges]) - ax
    dy = np.array([e.by for e in net.edges]) - ay
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return int(np.argmin(np.hypot(x - (ax + t * dx), y - (ay + t * dy))))
