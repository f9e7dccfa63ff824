"""Defect routes: the map (GeoJSON, filtered, paginated), one defect with its evidence, the manager workflow,
exports, and sighting thumbnails."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleet_server import aggregate, spreadsheet
from fleet_server.api_deps import (
    QueryTime,
    QueryUntil,
    db,
    known_query_only,
    read_db,
    require,
    since_token_query,
    sync_point,
)
from fleet_server.api_shapes import DefectDetail, DefectFeature, DefectPage, answer
from fleet_server.auth import Principal
from fleet_server.validate import fold_class
from roadmon_contract.decode import text_fault
from roadmon_contract.times import utc_iso

router = APIRouter(prefix="/api/v1", dependencies=[Depends(known_query_only)])
MAX_SIGHTINGS_LISTED = 1000  # a defect's own route lists its newest sightings, at most this many
STATUSES = ("new", "confirmed", "scheduled", "likely_repaired", "repaired", "dismissed")
OPEN_STATUSES = ("new", "confirmed", "scheduled", "likely_repaired")  # the dashboard's "open": `status=open`
MANAGER_STATUSES = ("confirmed", "scheduled", "repaired", "dismissed")

# Coordinates to 7 decimals (~1 cm), as the crack line, and metres to cm: float noise (11.507596200000002,
# an accuracy of 2.1433501 m beside 1.62 m after a recompute) helps no one.
DEFECT_COLUMNS = """d.id, round(ST_X(d.geom::geometry)::numeric, 7)::float8,
    round(ST_Y(d.geom::geometry)::numeric, 7)::float8, d.class, d.status, d.severity, d.confidence,
    d.sighting_count, d.vehicle_count, d.pass_count, d.miss_count, d.first_seen, d.last_seen,
    round(d.h_accuracy_m::numeric, 2)::float8, round(d.size_width_m::numeric, 2)::float8,
    round(d.size_length_m::numeric, 2)::float8, d.status_changed_at,
    (ST_AsGeoJSON(d.line::geometry, 7)::jsonb -> 'coordinates'),
    (SELECT h.note FROM defect_history h WHERE h.defect_id = d.id AND h.note IS NOT NULL
     AND h.actor <> 'aggregator' ORDER BY h.at DESC, h.id DESC LIMIT 1),
    round(ST_Length(d.line)::numeric, 1)::float8"""
PROPERTY_NAMES = ("id", "lon", "lat", "class", "status", "severity", "confidence", "sighting_count", "vehicle_count",
                  "pass_count", "miss_count", "first_seen", "last_seen", "h_accuracy_m", "size_width_m",
                  "size_length_m", "status_changed_at", "line",  # line: [[lon, lat], ...] of a crack, else null
                  "note",  # the newest note a person wrote with a status (a work order's "crew B, Tuesday")
                  # a crack's line in metres: size_length_m is one piece's (the median sighting), and a CSV of a
                  # 95 m crack said 3.35
                  "line_length_m")


def _jsonable(value: Any) -> Any:
    """Times as the wire contract writes them (UTC, milliseconds, Z), whatever the session's time zone."""
    if not isinstance(value, datetime):
        return value
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return utc_iso(value)


def defect_feature(row: tuple) -> dict:
    props = {k: _jsonable(v) for k, v in zip(PROPERTY_NAMES, row, strict=True)}
    return {"type": "Feature", "id": row[0], "geometry": {"type": "Point", "coordinates": [row[1], row[2]]},
            "properties": props}


def export_feature(row: tuple) -> dict:
    """A defect for a GIS file: a crack's geometry is its line (QGIS and the like draw the geometry, not a
    property); the map's feature keeps the point, where the marker goes. Both keep lon/lat and line."""
    feature = defect_feature(row)
    if feature["properties"]["line"]:
        feature["geometry"] = {"type": "LineString", "coordinates": feature["properties"]["line"]}
    return feature


NUMBER = r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
BBOX_PATTERN = rf"^{NUMBER},{NUMBER},{NUMBER},{NUMBER}$"  # in the document; parse_bbox says what is wrong


def parse_bbox(bbox: str | None) -> tuple[float, float, float, float] | None:
    """'min_lon,min_lat,max_lon,max_lat' -> floats, or 400. As in GeoJSON (RFC 7946, 5.2) a min_lon greater than
    max_lon is a box across the antimeridian."""
    if bbox is None:
        return None
    try:
        values = [float(v) for v in bbox.split(",")]
    except ValueError:
        raise HTTPException(400, "bbox: four numbers min_lon,min_lat,max_lon,max_lat") from None
    if len(values) != 4:
        raise HTTPException(400, "bbox: four numbers min_lon,min_lat,max_lon,max_lat")
    lon1, lat1, lon2, lat2 = values
    if not (abs(lon1) <= 180 and abs(lon2) <= 180 and abs(lat1) <= 90 and abs(lat2) <= 90):
        raise HTTPException(400, "bbox: longitudes within -180..180, latitudes within -90..90")
    if lat1 > lat2:
        raise HTTPException(400, "bbox: min_lat is above max_lat")
    return lon1, lat1, lon2, lat2


def bbox_filter(column: str, bbox: str | None, where: list[str], params: dict) -> None:
    """Adds "COLUMN meets the box" to WHERE when a bbox was given (`column` is fixed SQL text, never input)."""
    box = parse_bbox(bbox)
    if box is None:
        return
    params.update(x1=box[0], y1=box[1], x2=box[2], y2=box[3])
    if box[0] <= box[2]:
        where.append(f"{column}::geometry && ST_MakeEnvelope(%(x1)s, %(y1)s, %(x2)s, %(y2)s, 4326)")
    else:  # across the antimeridian: the part east of min_lon and the part west of max_lon
        where.append(f"({column}::geometry && ST_MakeEnvelope(%(x1)s, %(y1)s, 180, %(y2)s, 4326) "
                     f"OR {column}::geometry && ST_MakeEnvelope(-180, %(y1)s, %(x2)s, %(y2)s, 4326))")


def defect_filters(bbox: str | None, klass: str | None, status: str | None, since: datetime | None,
                   min_severity: float | None, until: datetime | None = None) -> tuple[list[str], dict[str, Any]]:
    """WHERE clauses (fixed SQL text) and their bound values; user input only ever travels as a parameter."""
    where: list[str] = []
    params: dict[str, Any] = {}
    bbox_filter("coalesce(d.line, d.geom)", bbox, where, params)  # a crack meets the box anywhere along it
    if klass is not None:
        where.append("d.class = ANY(%(class)s)")
        # classes are stored folded: Pothole finds pothole
        params["class"] = [fold_class(k.strip()) for k in klass.split(",") if k.strip()]
        if not params["class"]:  # `class=` from a form's "all" once exported an empty work order, answered 200
            raise HTTPException(400, "class: empty; leave the parameter out for every class")
    if status is not None:
        wanted = [s.strip() for s in status.split(",") if s.strip()]
        if not wanted:
            raise HTTPException(400, "status: empty; leave the parameter out for every status")
        wanted = [w for s in wanted for w in (OPEN_STATUSES if s == "open" else (s,))]
        unknown = [s for s in wanted if s not in STATUSES]
        if unknown:
            raise HTTPException(400, f"status: unknown {unknown[0][:40]!r}; one or more of {', '.join(STATUSES)} "
                                     "(open: the first four)")
        where.append("d.status = ANY(%(status)s)")
        params["status"] = wanted
    if since is not None:
        where.append("d.last_seen >= %(since)s")
        params["since"] = since
    if until is not None:
        where.append("d.first_seen <= %(until)s")
        params["until"] = until
    if min_severity is not None:
        where.append("d.severity >= %(min_severity)s")
        params["min_severity"] = min_severity
    return where, params


def query_defects(conn: psycopg.Connection, where: list[str], params: dict, after: int | None,
                  limit: int | None) -> list[tuple]:
    clauses = list(where)
    if after is not None:
        clauses.append("d.id > %(after)s")
        params["after"] = after
    sql = f"SELECT {DEFECT_COLUMNS} FROM defects d"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY d.id"
    if limit is not None:
        sql += " LIMIT %(limit)s"
        params["limit"] = limit
    return conn.execute(sql, params).fetchall()


class Filters:
    """The query parameters shared by the list and the exports."""

    def __init__(self, bbox: str | None = Query(None, description="min_lon,min_lat,max_lon,max_lat",
                                                json_schema_extra={"pattern": BBOX_PATTERN}),
                 klass: str | None = Query(None, alias="class", max_length=200,
                                           description="Defect class, or several separated by commas"),
                 status: str | None = Query(None, max_length=200, description="Comma-separated statuses; open = "
                                            "new, confirmed, scheduled, likely_repaired (as the dashboard's filter)"),
                 since: QueryTime | None = Query(None, description="Last seen at or after this UTC time"),
                 until: QueryUntil | None = Query(None, description="First seen at or before this UTC time "
                                                  "(a bare date: by the end of that day)"),
                 min_severity: float | None = Query(None, ge=0, le=1, description="Lowest severity")) -> None:
        self.where, self.params = defect_filters(bbox, klass, status, since, min_severity, until)


@router.get("/defects", summary="Defects as a GeoJSON FeatureCollection (filtered, paginated by cursor)",
            response_model=None, responses=answer(DefectPage, "A page of defects"))
def list_defects(request: Request, filters: Filters = Depends(), cursor: int | None = Query(None, ge=0),
                 limit: int | None = Query(None, ge=1),
                 since_token: str | None = since_token_query(
                     "the defects written since it was read (new, sighted, moved, status, note), and in `removed` "
                     "(first page) those merged into another or no longer matching the filters"),
                 conn: psycopg.Connection = Depends(read_db), _who=Depends(require("map"))) -> dict:
    api = request.app.state.cfg.api
    page = min(limit or api.page_size, api.max_page_size)
    token, since_xid = sync_point(conn, since_token)  # before the rows: what they cannot show is at or above it
    where, params = list(filters.where), dict(filters.params)
    if since_xid is not None:
        where.append("d.change_xid >= %(since_xid)s::xid8")
        params["since_xid"] = since_xid
    rows = query_defects(conn, where, params, cursor, page + 1)
    more = len(rows) > page
    rows = rows[:page]
    answer = {"type": "FeatureCollection", "features": [defect_feature(r) for r in rows],
              "next_cursor": rows[-1][0] if more else None, "sync_token": token}
    if since_xid is not None and cursor is None:
        answer["removed"] = removed_since(conn, since_xid, filters)
    return answer


def removed_since(conn: psycopg.Connection, since_xid: str, filters: Filters) -> list[int]:
    """Ids a copy kept by FILTERS must drop: merged into another or erased (`device erase`) since the transaction
    SINCE_XID, or written since and no longer matching (a copy of the open defects heard nothing of one dismissed)."""
    ids = {r[0] for r in conn.execute("SELECT dropped_id FROM defect_merges WHERE merged_xid >= %(x)s::xid8 UNION "
                                      "SELECT defect_id FROM defect_removals WHERE removed_xid >= %(x)s::xid8",
                                      {"x": since_xid})}
    if filters.where:
        matching = " AND ".join(f"({w})" for w in filters.where)
        ids |= {r[0] for r in conn.execute(
            f"SELECT d.id FROM defects d WHERE d.change_xid >= %(since_xid)s::xid8 "
            f"AND NOT coalesce({matching}, false)", {**filters.params, "since_xid": since_xid})}
    return sorted(ids)


def download(media_type: str, what: str) -> dict:
    """The OpenAPI answer of an export: its own media type (FastAPI would say application/json)."""
    shape = {"type": "object"} if media_type.endswith("json") else {"type": "string"}
    return {200: {"description": what, "content": {media_type: {"schema": shape}}}}


# Exports stream page by page: a whole city's GeoJSON built in one string took 300 MB of the API's memory, and
# four managers exporting at once more than its pod's 1 GiB.
EXPORT_PAGE = 2000


def export_pages(conn: psycopg.Connection, filters: Filters) -> Iterator[list[tuple]]:
    """Every matching defect in pages of EXPORT_PAGE by id. The first page is read before the answer starts,
    so that a database error is still an error status, not a cut file."""
    first = query_defects(conn, filters.where, dict(filters.params), None, EXPORT_PAGE)

    def pages() -> Iterator[list[tuple]]:
        rows = first
        while rows:
            yield rows
            if len(rows) < EXPORT_PAGE:
                return
            rows = query_defects(conn, filters.where, dict(filters.params), rows[-1][0], EXPORT_PAGE)

    return pages()


def streamed(chunks: Iterator[str], media_type: str, filename: str) -> StreamingResponse:
    return StreamingResponse((c.encode() for c in chunks), media_type=media_type,
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/defects.geojson", summary="Every matching defect as a GeoJSON file", response_class=Response,
            responses=download("application/geo+json", "A GeoJSON FeatureCollection (RFC 7946) to save"))
def export_geojson(filters: Filters = Depends(), conn: psycopg.Connection = Depends(read_db),
                   _who=Depends(require("map"))) -> Response:
    pages = export_pages(conn, filters)

    def chunks() -> Iterator[str]:
        yield '{"type": "FeatureCollection", "features": ['
        sep = ""
        for rows in pages:
            yield sep + ", ".join(json.dumps(export_feature(r)) for r in rows)
            sep = ", "
        yield "]}"

    return streamed(chunks(), "application/geo+json", "defects.geojson")


@router.get("/defects.csv", summary="Every matching defect as CSV", response_class=Response,
            responses=download("text/csv", "UTF-8, comma-separated, a header row, CRLF rows"))
def export_csv(filters: Filters = Depends(), conn: psycopg.Connection = Depends(read_db),
               _who=Depends(require("map"))) -> Response:
    pages = export_pages(conn, filters)

    def chunks() -> Iterator[str]:
        for k, rows in enumerate(itertools.chain([[]], pages)):
            out = io.StringIO()
            writer = csv.writer(out)
            if k == 0:
                writer.writerow(PROPERTY_NAMES)
            for row in rows:
                writer.writerow([csv_cell(v) for v in row])
            yield out.getvalue()

    return streamed(chunks(), "text/csv", "defects.csv")


def csv_cell(value: Any) -> Any:
    """VALUE as a CSV cell: lists as JSON, times as ISO 8601, text that could run as a formula neutralised."""
    value = json.dumps(value) if isinstance(value, list) else _jsonable(value)
    return spreadsheet.safe_text(value) if isinstance(value, str) else value


def load_defect(conn: psycopg.Connection, defect_id: int, request: Request) -> dict:
    row = conn.execute(f"SELECT {DEFECT_COLUMNS} FROM defects d WHERE d.id = %s", (defect_id,)).fetchone()
    if row is None:
        raise missing(conn, defect_id, request)
    return defect_feature(row)


def missing(conn: psycopg.Connection, defect_id: int, request: Request) -> HTTPException:
    """404, or for a defect merged into another (two defects of one pothole, aggregate.merge_neighbours) a
    permanent redirect to the one that holds its sightings and history now: 308 keeps a PATCH a PATCH."""
    row = conn.execute("SELECT kept_id FROM defect_merges WHERE dropped_id = %s", (defect_id,)).fetchone()
    if row is None:
        return HTTPException(404, f"no defect {defect_id}")
    there = request.url.path.rsplit("/", 1)[0] + f"/{row[0]}"
    return HTTPException(308, f"defect {defect_id} was merged into defect {row[0]}: the same defect",
                         headers={"Location": there})


@router.get("/defects/{defect_id}", summary="One defect with its sightings, vehicles, misses and status history",
            response_model=None,
            responses={200: {"description": "The defect", "model": DefectDetail,
                             "headers": {"ETag": {"description": "Its version, for PATCH's If-Match",
                                                  "schema": {"type": "string"}}}},
                       308: {"description": "The defect was merged into another: Location is the one to ask",
                             "headers": {"Location": {"schema": {"type": "string"}}}}})
def get_defect(defect_id: int, request: Request, response: Response, conn: psycopg.Connection = Depends(read_db),
               primary: psycopg.Connection = Depends(db), who: Principal = Depends(require("map"))) -> dict:
    # The version before the data: a change committed in between makes the tag older than what is shown (the
    # manager's PATCH is refused and the panel reads again), never newer (a change the manager did not see would
    # be overwritten). The statements are not one snapshot.
    tag = version_tag(conn, defect_id)
    try:
        feature = load_defect(conn, defect_id, request)
    except HTTPException:
        if conn is primary:
            raise
        conn = primary  # a defect made after the replica's last replay (a link from a fresher page): ask the primary
        tag = version_tag(conn, defect_id)
        feature = load_defect(conn, defect_id, request)
    # A map token reads the defect, not which vehicle was there when: no device ids, no vehicles, and no misses (a
    # miss names the drive, its coverage id and times, which ties every defect it passed, and any sighting made in
    # its window, to one vehicle's route: what /coverage refuses). properties.vehicle_count and miss_count stay.
    sees_vehicles = who.at_least("viewer")
    sightings = [
        {"event_id": str(r[0]), "device_id": r[1] if sees_vehicles else None, "captured_at": _jsonable(r[2]),
         "confidence": r[3], "severity": r[4], "lon": r[5], "lat": r[6], "h_accuracy_m": r[7], "source": r[8],
         "thumbnail_url": f"/api/v1/sightings/{r[0]}/thumbnail.jpg" if r[9] else None}
        for r in conn.execute("""
            SELECT event_id, device_id, captured_at, confidence, severity, ST_X(geom::geometry), ST_Y(geom::geometry),
                   h_accuracy_m, source, thumbnail IS NOT NULL
            FROM sightings WHERE defect_id = %s ORDER BY captured_at DESC LIMIT %s""",
                            (defect_id, MAX_SIGHTINGS_LISTED))]
    vehicles = [{"device_id": r[0], "sightings": r[1], "first_seen": _jsonable(r[2]), "last_seen": _jsonable(r[3])}
                for r in conn.execute("""SELECT device_id, count(*), min(captured_at), max(captured_at) FROM sightings
                                         WHERE defect_id = %s GROUP BY device_id ORDER BY 4 DESC""", (defect_id,))
                ] if sees_vehicles else []
    history = [{"at": _jsonable(r[0]), "actor": r[1], "from_status": r[2], "to_status": r[3], "note": r[4]}
               for r in conn.execute("""SELECT at, actor, from_status, to_status, note FROM defect_history
                                        WHERE defect_id = %s ORDER BY at, id""", (defect_id,))]
    misses = [{"coverage_id": str(r[0]), "device_id": r[1], "started_at": _jsonable(r[2]), "ended_at": _jsonable(r[3])}
              for r in conn.execute("""SELECT coverage_id, device_id, started_at, ended_at FROM defect_misses
                                       WHERE defect_id = %s ORDER BY started_at""", (defect_id,))
              ] if sees_vehicles else []
    feature["sightings"] = sightings
    # The newest MAX_SIGHTINGS_LISTED; properties.sighting_count says how many there are in all.
    feature["sightings_truncated"] = len(sightings) < feature["properties"]["sighting_count"]
    feature["vehicles"] = vehicles
    feature["history"] = history
    feature["misses"] = misses
    response.headers["ETag"] = tag or ""  # for PATCH's If-Match
    return feature


# Controls, and the bidirectional overrides and isolates that make a note read otherwise than it is stored.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
NOTE_PATTERN = ("^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f\\u202a-\\u202e"
                "\\u2066-\\u2069]*$")  # the same, for the document
_BLANKS = " \t\r\n\u00a0\u200b\u200c\u200d\u2060\ufeff"


class DefectPatch(BaseModel):
    # Strict, as every other body: `{"status": "scheduled", "nots": "crew B"}` dropped the note without a word.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [{"required": ["status"]},
                                                                          {"required": ["note"]}]})

    status: Literal["confirmed", "scheduled", "repaired", "dismissed"] | None = Field(
        None, description="The manager's decision; left out, the note is added to the history and the status stays")
    note: str | None = Field(None, max_length=2000, description="Why (kept in the defect's history); no control "
                             "characters but tab and line breaks", json_schema_extra={"pattern": NOTE_PATTERN})

    @field_validator("note")
    @classmethod
    def _storable(cls, note: str | None) -> str | None:
        if note is None:
            return None
        if fault := text_fault(note):  # PostgreSQL refuses NUL in text: it was a 500
            raise ValueError(fault)
        # Escapes and other controls reach every terminal and spreadsheet that shows the history; tab and line
        # breaks are a note's own.
        if bad := _CONTROLS.search(note):
            raise ValueError(f"control character U+{ord(bad.group()):04X}")
        return note if note.strip(_BLANKS) else None  # a blank note is none (alone, the body then asks for one)

    @model_validator(mode="after")
    def _something(self) -> DefectPatch:
        if self.status is None and not self.note:
            raise ValueError("send a status, a note, or both")
        return self


def version_tag(conn: psycopg.Connection, defect_id: int) -> str | None:
    """The ETag of a defect's manager-visible state: its id, status and newest history entry. A new sighting
    changes it only when it changes the status (the aggregator confirms the defect), so a manager's If-Match fails
    only when someone (a person, or the server's rules) decided something about the defect since it was read."""
    row = conn.execute("SELECT d.status, (SELECT max(id) FROM defect_history WHERE defect_id = d.id) FROM defects d "
                       "WHERE d.id = %s", (defect_id,)).fetchone()
    # The id in it: every defect without history was "new-0", so a tag read from a defect merged away passed on the
    # survivor its PATCH was redirected to.
    return None if row is None else f'"{defect_id}-{row[0]}-{row[1] or 0}"'


_TAG = re.compile(r'(W/)?"[^"]*"')


def if_match_tags(request: Request) -> list[str] | None:
    """The tags of every If-Match line (only the first was read), or None without one; a tag that is not quoted,
    or `*` in a list, is a 400 (it was a 412 "changed since it was read" for a defect nobody had changed)."""
    lines = request.headers.getlist("if-match")
    if not lines:
        return None
    tags = [t.strip() for line in lines for t in line.split(",")]
    if tags == ["*"]:
        return tags
    if not all(_TAG.fullmatch(t) for t in tags):
        raise HTTPException(400, "If-Match: the ETag of GET /api/v1/defects/{id} as it came (in quotes), several "
                                 "separated by commas, or * alone")
    return tags


def _refused(conn: psycopg.Connection, defect_id: int, status: str, tags: list[str], tag: str) -> HTTPException:
    """412 naming what changed: who set what (or noted), or the merge that made another defect's tag this one's."""
    named = {int(m[1]) for t in tags if (m := re.match(r'"(\d+)-', t))}
    merged = named and defect_id not in named and conn.execute(
        "SELECT 1 FROM defect_merges WHERE dropped_id = ANY(%s) AND kept_id = %s", (sorted(named), defect_id)
    ).fetchone()
    if merged:
        first = min(named)
        return HTTPException(412, f"defect {first} was merged into defect {defect_id} since it was read (the same "
                                  f"defect: its sightings and history are {defect_id}'s now); read defect {defect_id} "
                                  "and decide again", headers={"ETag": tag})
    last = conn.execute("SELECT actor, at, to_status, from_status FROM defect_history WHERE defect_id = %s "
                        "ORDER BY id DESC LIMIT 1", (defect_id,)).fetchone()
    did = f"set it {last[2]}" if last and last[2] != last[3] else "added a note"
    since = f": {last[0]} {did} at {_jsonable(last[1])}" if last else ""
    return HTTPException(412, f"defect {defect_id} changed since it was read (now {status}{since}); read it again: "
                              "this answer's ETag is its version now", headers={"ETag": tag})


@router.patch("/defects/{defect_id}", summary="Manager workflow: schedule, mark repaired, dismiss, re-confirm, note",
              response_model=None,
              responses={200: {"description": "The defect as changed", "model": DefectFeature,
                               "headers": {"ETag": {"description": "Its new version", "schema": {"type": "string"}}}},
                         308: {"description": "The defect was merged into another: send the change there",
                               "headers": {"Location": {"schema": {"type": "string"}}}},
                         412: {"description": "If-Match named a version the defect no longer has: read it again",
                               "headers": {"ETag": {"description": "Its version now", "schema": {"type": "string"}}}}})
def patch_defect(defect_id: int, change: DefectPatch, request: Request, response: Response,
                 conn: psycopg.Connection = Depends(db), who=Depends(require("manager")),
                 _if_match: str | None = Header(None, alias="If-Match", description="The ETag of GET /defects/{id}: "
                                                "the change is made only if nobody changed the defect's status or "
                                                "history since (412 otherwise); left out, the last write wins")
                 ) -> dict:
    with conn.transaction():
        row = conn.execute("SELECT status FROM defects WHERE id = %s FOR UPDATE", (defect_id,)).fetchone()
        if row is None:
            raise missing(conn, defect_id, request)
        tags = if_match_tags(request)
        if tags is not None and "*" not in tags and (tag := version_tag(conn, defect_id)) not in tags:
            assert tag is not None  # the defect's row is locked above: it is there
            raise _refused(conn, defect_id, row[0], tags, tag)
        if change.status is None:
            assert change.note is not None  # DefectPatch: without a status, a note
            aggregate.add_note(conn, defect_id, row[0], who.name, change.note)
        elif change.status != row[0] or change.note:  # the same status again, without a note, changes nothing
            aggregate.set_status(conn, defect_id, row[0], change.status, who.name, change.note)
        etag = version_tag(conn, defect_id)
        assert etag is not None  # the defect's row is locked above: it is there
        response.headers["ETag"] = etag
    return load_defect(conn, defect_id, request)


@router.get("/sightings/{event_id}/thumbnail.jpg", summary="The crop a vehicle sent with its sighting",
            response_class=Response, responses=download("image/jpeg", "The JPEG crop"))
def thumbnail(event_id: uuid.UUID, conn: psycopg.Connection = Depends(read_db),
              primary: psycopg.Connection = Depends(db), _who=Depends(require("map"))) -> Response:
    row = conn.execute("SELECT thumbnail FROM sightings WHERE event_id = %s", (event_id,)).fetchone()
    if row is None and conn is not primary:  # stored after the replica's last replay
        row = primary.execute("SELECT thumbnail FROM sightings WHERE event_id = %s", (event_id,)).fetchone()
    if row is None or row[0] is None:
        raise HTTPException(404, "no thumbnail for this sighting")
    return Response(bytes(row[0]), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})
