"""The shapes of the API's answers, for the OpenAPI document only (the routes build plain dicts).

A TypeScript client generated from the document saw `{[key: string]: unknown}` for every defect, page, coverage
line and audit row, and its writer typed them by hand from the prose (an integrator's finding).
`tests/test_api_contract.py` validates real answers against these shapes, so they cannot drift from the code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["new", "confirmed", "scheduled", "likely_repaired", "repaired", "dismissed"]
UTC_TIME = "UTC, RFC 3339 with milliseconds and Z"


def _time(description: str = UTC_TIME) -> dict:
    return {"description": description, "json_schema_extra": {"format": "date-time"}}


class Shape(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class DefectProperties(Shape):
    id: int
    lon: float = Field(description="The marker's longitude (7 decimals)")
    lat: float = Field(description="The marker's latitude (7 decimals)")
    class_: str = Field(alias="class", description="pothole, crack, or a class of the fleet's own model")
    status: Status
    severity: float | None = Field(description="0..1, the sightings' median; null when no sighting measured it")
    confidence: float | None
    sighting_count: int
    vehicle_count: int
    pass_count: int
    miss_count: int
    first_seen: str = Field(**_time())
    last_seen: str = Field(**_time())
    h_accuracy_m: float | None = Field(description="The position's 1-sigma uncertainty, metres")
    size_width_m: float | None
    size_length_m: float | None = Field(description="For a crack, one piece's (the median sighting)")
    status_changed_at: str = Field(**_time())
    line: list[list[float]] | None = Field(description="A crack's line, [[lon, lat], ...]; null for a point defect")
    note: str | None = Field(description="The newest note a person wrote with a status change")
    line_length_m: float | None = Field(description="A crack's line length; null for a point defect")


class Point(Shape):
    type: Literal["Point"]
    coordinates: list[float] = Field(min_length=2, max_length=2, description="[lon, lat]")


class DefectFeature(Shape):
    type: Literal["Feature"]
    id: int
    geometry: Point = Field(description="The marker (a crack's line is in properties.line)")
    properties: DefectProperties


class DefectPage(Shape):
    type: Literal["FeatureCollection"]
    features: list[DefectFeature]
    next_cursor: int | None = Field(description="Pass as `cursor` for the next page; null on the last")
    sync_token: str = Field(description="Pass as `since_token` later: only what was written since")
    removed: list[int] | None = Field(None, description="Only on the first page of a `since_token` answer: ids "
                                                        "merged away or no longer matching the filters")


class Sighting(Shape):
    event_id: str
    device_id: str | None = Field(description="The vehicle; null for a map token")
    captured_at: str = Field(**_time())
    confidence: float
    severity: float | None
    lon: float
    lat: float
    h_accuracy_m: float
    source: str = Field(description="mqtt or http")
    thumbnail_url: str | None


class Vehicle(Shape):
    device_id: str
    sightings: int
    first_seen: str = Field(**_time())
    last_seen: str = Field(**_time())


class HistoryEntry(Shape):
    at: str = Field(**_time())
    actor: str = Field(description="A token's name, or aggregator")
    from_status: Status | None
    to_status: Status
    note: str | None


class Miss(Shape):
    coverage_id: str
    device_id: str
    started_at: str = Field(**_time())
    ended_at: str = Field(**_time())


class DefectDetail(DefectFeature):
    sightings: list[Sighting] = Field(description="Newest first, at most 1,000")
    sightings_truncated: bool
    vehicles: list[Vehicle] = Field(description="Empty for a map token (properties.vehicle_count says how many)")
    history: list[HistoryEntry]
    misses: list[Miss] = Field(description="Empty for a map token (properties.miss_count says how many)")


class Line(Shape):
    type: Literal["LineString"]
    coordinates: list[list[float]]


class CoverageProperties(Shape):
    coverage_id: str
    device_id: str
    started_at: str = Field(**_time())
    ended_at: str = Field(**_time())
    detector_active: bool


class CoverageFeature(Shape):
    type: Literal["Feature"]
    id: str
    geometry: Line
    properties: CoverageProperties


class CoveragePage(Shape):
    type: Literal["FeatureCollection"]
    features: list[CoverageFeature]
    next_cursor: str | None
    sync_token: str
    since: str = Field(**_time("The window's start this page used"))


class Me(Shape):
    name: str
    role: Literal["device", "map", "viewer", "manager", "admin"]
    device_id: str | None


class AuditRow(Shape):
    id: int
    at: str = Field(**_time())
    token_id: int | None
    who: str
    role: str | None
    method: str = Field(description="The HTTP method; `CLI` for a server command that changed data")
    path: str = Field(description="The path with its query; for `CLI`, the command as parsed, without secrets")
    status: int = Field(description="The HTTP status; for `CLI`, the command's exit code (0: done)")
    client: str | None = Field(description="The caller's address; for `CLI`, the host's name")


def answer(model: type[BaseModel], description: str = "OK") -> dict:
    """A route's `responses` entry for its 200, typed by MODEL (pass `response_model=None` with it)."""
    return {200: {"description": description, "model": model}}
