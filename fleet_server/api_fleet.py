"""Fleet routes: who am I, devices, coverage, model downloads, health and metrics."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel, Field

from fleet_server import commands
from fleet_server.api_defects import _jsonable, bbox_filter
from fleet_server.api_deps import (
    QueryTime,
    QueryUntil,
    db,
    known_query_only,
    principal,
    read_db,
    require,
    since_token_query,
    sync_point,
    token_if_any,
)
from fleet_server.api_shapes import CoveragePage, Me, answer
from fleet_server.auth import Principal
from fleet_server.device_view import PROBLEM_CODES, STATES, State, choices, device_rows, wanted
from fleet_server.health import checks as health_checks
from fleet_server.metrics_auth import CHALLENGE, REFUSED, scrape_allowed
from fleet_server.shared_answer import SharedAnswer
from fleet_server.sighting_counts import sighting_counts
from fleet_server.validate import as_utc

router = APIRouter()
api = APIRouter(prefix="/api/v1", dependencies=[Depends(known_query_only)])
# Model downloads: a signed link works without a token, so the caller is checked by the route itself.
downloads = APIRouter(prefix="/api/v1", dependencies=[Depends(token_if_any)])
_SHA256 = re.compile(r"^([0-9a-f]{64})\.onnx$")


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="ok when every check is ok")
    database: str = Field(description="ok, or a short reason")
    broker: str = Field(description="ok, or a short reason")
    ingest: str | None = Field(None, description="ok, or a short reason (only where this process runs ingest "
                                                 "workers)")
    read_replica: str | None = Field(None, description="Only where a read replica is configured: ok, or why the "
                                                       "primary serves the reads; not part of status (the API "
                                                       "still answers)")


@router.head("/health", include_in_schema=False)  # uptime monitors probe with HEAD by default
@router.get("/health", summary="Database, broker and ingest: ok, or degraded (503) with a short reason",
            response_model=Health, responses={
                503: {"model": Health, "description": "Degraded: a check is not ok (the reason, never raw error "
                                                      "text)",
                      "content": {"application/json": {"example": {"status": "degraded", "database": "unreachable",
                                                                   "broker": "ok"}}}}})
def health(request: Request) -> JSONResponse:
    checks = health_checks(request.app.state)
    ok = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if ok else "degraded", **checks}
    if (replica := request.app.state.reads.health()) is not None:
        body["read_replica"] = replica
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics (with metrics.token_file set: only for its bearer token)",
            response_class=Response)
def prometheus_metrics(request: Request) -> Response:
    if not scrape_allowed(request.app.state.cfg.metrics, request.headers.get("authorization")):
        return Response(REFUSED, status_code=401, media_type="text/plain", headers=dict([CHALLENGE]))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@api.get("/me", summary="The caller's name and role", response_model=None, responses=answer(Me))
def me(who: Principal = Depends(principal)) -> dict:
    return {"name": who.name, "role": who.role, "device_id": who.device_id}


class Device(BaseModel):
    id: str = Field(description="Device id (its MQTT login)")
    name: str | None = Field(description="Display name, when given at `device add`")
    state: State = Field(
        description="online: heartbeat recent; stale: online by its last status but silent for "
                    "ingest.stale_after_s; offline: its connection dropped without a clean stop (the broker's Last "
                    "Will: power cut at ignition-off, no network, the agent died); stopped: its agent stopped "
                    "cleanly; revoked: credentials withdrawn; unknown: no status yet")
    last_seen: str | None = Field(description="When the server last heard from it (UTC)")
    queue_depth: int | None = Field(description="Unconfirmed records in its outbox, by its last status")
    health: dict = Field(description="Its health board by its last status: camera (ok, frozen, blank, no_frames, "
                                     "lost, ended, starting), gnss (ok, no_fix, stale, lost, starting) and "
                                     "gnss_problem, detector (ok, failed), outbox (ok, degraded, full), uplink")
    status_sent_at: str | None = Field(description="Its last status's sent_at, by the box's clock")
    clock_offset_s: float | None = Field(description="Box clock minus the server's when that status arrived, s")
    refused_24h: int = Field(description="Its messages the server refused in the last 24 h")
    last_speed_mps: float | None = Field(description="Its speed at its last status: for an offline or stale box, "
                                                     "whether it went silent standing (ignition-off, likely) or "
                                                     "driving (power or network lost on the road)")
    problems: list[str] = Field(description="Why the box may be quiet, in words (what its last status said for an "
                                            "offline box)")
    problem_codes: list[str] = Field(description="The same, one code each: camera, gnss, detector, outbox, clock, "
                                                 "sparse_frames, mount, unplaced, finds_nothing, refused")
    inference_ms: float | None = Field(description="Detector time per frame, by its last status")
    last_fix: dict | None = Field(description="Its last known position: lat, lon, h_std_m, speed_mps, heading_deg")
    fps: float | None = Field(description="Frames through the detector per second")
    m_per_frame: float | None = Field(description="Metres driven per processed frame while moving")
    model: dict | str | None = Field(description="The model it runs: name, version, sha256")
    version: str | None = Field(description="Agent version")
    disk_free_mb: float | None = Field(description="Free disk on the box, MB")
    oldest_pending_at: str | None = Field(description="Its oldest unconfirmed record (UTC)")
    created_at: str | None = Field(description="When it was added")
    sightings: int = Field(description="Sightings it contributed (in the list as counted within the last minute)")


DEVICE_LISTS = SharedAnswer()


def _devices(request: Request, conn: psycopg.Connection, one: str | None = None) -> list[dict]:
    if one is None:  # tabs that ask together share one read of the whole fleet
        return DEVICE_LISTS.get((conn.info.host, conn.info.port, conn.info.dbname),
                               lambda: _read_devices(request, conn, None))
    return _read_devices(request, conn, one)


def _read_devices(request: Request, conn: psycopg.Connection, one: str | None) -> list[dict]:
    views = device_rows(conn, datetime.now(UTC), request.app.state.cfg.ingest.stale_after_s, one)
    # The status's few keys, not the whole document again (device_rows read it for the health and problems).
    rows = {r[0]: r[1:] for r in conn.execute("""
        SELECT id, inference_ms, last_fix, created_at, last_status->'fps', last_status->'m_per_frame',
               last_status->'model', last_status->'version', last_status->'disk_free_mb',
               last_status->'oldest_pending_at'
        FROM devices WHERE %(one)s::text IS NULL OR id = %(one)s""", {"one": one}).fetchall()}
    counts = sighting_counts(conn, one)
    out = []
    for view in views:
        inference_ms, last_fix, created_at, fps, m_per_frame, model, version, disk_free, oldest = rows[view["id"]]
        out.append(view | {"last_seen": _jsonable(view["last_seen"]), "inference_ms": inference_ms,
                           "last_fix": last_fix, "fps": fps, "m_per_frame": m_per_frame, "model": model,
                           "version": version, "disk_free_mb": disk_free, "oldest_pending_at": oldest,
                           "created_at": _jsonable(created_at), "sightings": counts.get(view["id"], 0)})
    return out


@api.get("/devices", summary="Devices: state (stale when silent), last seen, queue depth, last fix, and why a "
                             "box may be quiet (problems: its health, clock, refused messages)",
         response_model=list[Device],
         responses={200: {"headers": {
             "X-Next-Cursor": {"description": "With `limit`, when more follow: the `cursor` of the next page",
                               "schema": {"type": "string"}},
             "Link": {"description": "With `limit`, when more follow: `<next page URL>; rel=\"next\"`",
                      "schema": {"type": "string"}}}}})
def devices(request: Request, response: Response,
            state: str | None = Query(None, max_length=100, description="Comma list of states, e.g. "
                                                                        "`offline,stale`"),
            problem: str | None = Query(None, max_length=200, description="Comma list of problem codes: devices "
                                                                          "with any of them, e.g. `camera,gnss`"),
            limit: int | None = Query(None, ge=1, description="At most this many devices (capped at the server's "
                                                              "`api.max_page_size`); without it, every device"),
            cursor: str | None = Query(None, max_length=64, description="The previous page's `X-Next-Cursor`: "
                                                                         "the devices after that id"),
            conn: psycopg.Connection = Depends(read_db), _who=Depends(require("viewer"))) -> list[dict]:
    try:
        states, codes = choices(state, "state", STATES), choices(problem, "problem", PROBLEM_CODES)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    found = [d for d in _devices(request, conn) if wanted(d, states, codes)]
    if limit is None and cursor is None:
        return found  # the whole fleet in one list, as clients written before paging expect
    # Pages follow ids in code-point order (the database's collation may sort "Box-2" and "box-10" otherwise).
    rest = sorted((d for d in found if cursor is None or d["id"] > cursor), key=lambda d: d["id"])
    most = request.app.state.cfg.api.max_page_size
    page = min(limit or most, most)
    if len(rest) > page:
        last = rest[page - 1]["id"]
        response.headers["X-Next-Cursor"] = last
        response.headers["Link"] = f'<{request.url.include_query_params(cursor=last)}>; rel="next"'
    return rest[:page]


@api.get("/devices/{device_id}", summary="One device, as in the list", response_model=Device,
         responses={404: {"description": "No such device"}})
def device(request: Request, device_id: str, conn: psycopg.Connection = Depends(read_db),
           _who=Depends(require("viewer"))) -> dict:
    found = _devices(request, conn, device_id)
    if not found:
        raise HTTPException(404, f"no device {device_id[:64]!r}")
    return found[0]


@api.get("/coverage", summary="Driven stretches as GeoJSON LineStrings with device and time (paginated by cursor)",
         response_model=None, responses=answer(CoveragePage, "A page of driven stretches"))
def coverage(request: Request, since: QueryTime | None = None, until: QueryUntil | None = None,
             bbox: str | None = Query(None, description="min_lon,min_lat,max_lon,max_lat"),
             device: str | None = Query(None, max_length=64), limit: int | None = Query(None, ge=1),
             cursor: str | None = Query(None, max_length=80, description="The previous page's next_cursor"),
             since_token: str | None = since_token_query(
                 "the lines stored since it was read (coverage never changes once stored: these are the new ones, "
                 "late uploads of old drives included)"),
             conn: psycopg.Connection = Depends(read_db), _who=Depends(require("viewer"))) -> dict:
    cfg = request.app.state.cfg.api
    token, since_xid = sync_point(conn, since_token)  # before the rows: what they cannot show is at or above it
    since = since or datetime.now(UTC) - timedelta(days=1)
    where: list[str] = ["c.ended_at >= %(since)s"]
    params: dict[str, Any] = {"since": since}
    if since_xid is not None:
        where.append("c.stored_xid >= %(since_xid)s::xid8")
        params["since_xid"] = since_xid
    if until is not None:
        where.append("c.started_at <= %(until)s")
        params["until"] = until
    bbox_filter("c.line", bbox, where, params)
    if device is not None:
        where.append("c.device_id = %(device)s")
        params["device"] = device
    if cursor is not None:  # pages follow (started_at, coverage_id): a page once ended the list without a word
        where.append("(c.started_at, c.coverage_id) > (%(after_at)s, %(after_id)s)")
        params["after_at"], params["after_id"] = _coverage_cursor(cursor)
    page = min(limit or cfg.max_page_size, cfg.max_page_size)
    params["limit"] = page + 1
    rows = conn.execute(f"""
        SELECT c.coverage_id, c.device_id, c.started_at, c.ended_at, c.detector_active, ST_AsGeoJSON(c.line)
        FROM coverage c WHERE {" AND ".join(where)} ORDER BY c.started_at, c.coverage_id LIMIT %(limit)s""",
                        params).fetchall()
    more = len(rows) > page
    rows = rows[:page]
    features = [{"type": "Feature", "id": str(r[0]), "geometry": json.loads(r[5]),
                 "properties": {"coverage_id": str(r[0]), "device_id": r[1], "started_at": _jsonable(r[2]),
                                "ended_at": _jsonable(r[3]), "detector_active": r[4]}} for r in rows]
    last = rows[-1] if rows else None
    return {"type": "FeatureCollection", "features": features,
            "next_cursor": f"{last[2].astimezone(UTC):%Y-%m-%dT%H:%M:%S.%fZ}~{last[0]}" if more and last else None,
            "sync_token": token, "since": _jsonable(since)}  # since: the window's start, the default one too


def _coverage_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, _, coverage_id = cursor.partition("~")
        return as_utc(datetime.fromisoformat(at)), uuid.UUID(coverage_id)
    except (ValueError, TypeError):
        raise HTTPException(400, "cursor: pass the next_cursor of the previous page as it came") from None


@downloads.get("/models/{filename}", summary="Download a model offered to devices, by its sha256: with a bearer "
                                           "token, or with the signed link `model push` sent (device, expires, sig)",
               response_class=FileResponse, openapi_extra={"security": [{"bearer": []}, {}]},
               responses={401: {"description": "Invalid, expired or revoked token"},
                          403: {"description": "No token and no signed link, or the link is not valid for this model"}})
def model_file(filename: str, request: Request,
               device: str | None = Query(None, max_length=64, description="Signed link: the device it was made for"),
               expires: int | None = Query(None, description="Signed link: its expiry (Unix seconds)"),
               sig: str | None = Query(None, max_length=128, description="Signed link: HMAC-SHA256, hex"),
               conn: psycopg.Connection = Depends(db)) -> FileResponse:
    match = _SHA256.fullmatch(filename)  # match() let "<sha>.onnx\n" through to the file lookup
    if not match:
        raise HTTPException(404, "models are named <sha256>.onnx")
    if sig is None:
        principal(request, conn)  # any valid token, as before links were signed
    else:
        _check_link(request, conn, match.group(1), device, expires, sig)
    folder = Path(request.app.state.cfg.models.dir).resolve()
    path = folder / filename
    # Only a file `model push` staged there: a link (to /etc/passwd, to the demo's token file) was served as a model
    # to any device token.
    if path.is_symlink() or not path.is_file() or path.resolve().parent != folder:
        raise HTTPException(404, "no such model")
    return FileResponse(path, media_type="application/octet-stream", filename=filename)


def _check_link(request: Request, conn: psycopg.Connection, sha: str, device: str | None, expires: int | None,
                sig: str) -> None:
    """403 unless the link is signed for this model, unexpired, and made for a device that is not revoked."""
    if device is None or expires is None:
        raise HTTPException(403, "a signed model link carries device, expires and sig")
    problem = commands.link_problem(request.app.state.cfg, sha, device, expires, sig)
    if problem is None:
        row = conn.execute("SELECT revoked_at FROM devices WHERE id = %s", (device,)).fetchone()
        problem = "the link's device is unknown or revoked" if row is None or row[0] is not None else None
    if problem:
        raise HTTPException(403, problem)
