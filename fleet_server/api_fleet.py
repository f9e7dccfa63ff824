"""Fleet routes: who am I, devices, coverage, the HTTP detection path, model downloads, health and metrics."""

from __future__ import annotations

import contextlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.concurrency import run_in_threadpool

from fleet_server import metrics
from fleet_server.api_defects import _jsonable, parse_bbox
from fleet_server.api_deps import db, principal, require
from fleet_server.auth import Principal
from fleet_server.health import checks as health_checks
from fleet_server.store import Batch, store_batch, store_rejected
from fleet_server.validate import Invalid, Rejection, check_message, parse_json
from roadmon_contract.ids import uuid7

router = APIRouter()
api = APIRouter(prefix="/api/v1")
_SHA256 = re.compile(r"^([0-9a-f]{64})\.onnx$")


@router.get("/health", summary="Database, broker and ingest: ok, or degraded (503) with a short reason")
def health(request: Request) -> JSONResponse:
    checks = health_checks(request.app.state)
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "degraded", **checks}, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def prometheus_metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@api.get("/me", summary="The caller's name and role")
def me(who: Principal = Depends(principal)) -> dict:
    return {"name": who.name, "role": who.role, "device_id": who.device_id}


@api.get("/devices", summary="Devices: state (stale when silent), last seen, queue depth, last fix")
def devices(request: Request, conn: psycopg.Connection = Depends(db), _who=Depends(require("viewer"))) -> list:
    stale_s = request.app.state.cfg.ingest.stale_after_s
    rows = conn.execute("""
        SELECT id, name, state, last_seen, queue_depth, inference_ms, last_fix, last_status, created_at, revoked_at,
               (SELECT count(*) FROM sightings s WHERE s.device_id = d.id) AS sightings
        FROM devices d ORDER BY id""").fetchall()
    now = datetime.now(UTC)
    out = []
    for r in rows:
        state = r[2]
        if r[9] is not None:
            state = "revoked"
        elif state == "online" and (r[3] is None or now - r[3] > timedelta(seconds=stale_s)):
            state = "stale"
        status = r[7] or {}
        out.append({"id": r[0], "name": r[1], "state": state, "last_seen": _jsonable(r[3]), "queue_depth": r[4],
                    "inference_ms": r[5], "last_fix": r[6], "fps": status.get("fps"), "model": status.get("model"),
                    "version": status.get("version"), "disk_free_mb": status.get("disk_free_mb"),
                    "oldest_pending_at": status.get("oldest_pending_at"), "created_at": _jsonable(r[8]),
                    "sightings": r[10]})
    return out


@api.get("/coverage", summary="Driven stretches as GeoJSON LineStrings with device and time")
def coverage(request: Request, since: datetime | None = None, until: datetime | None = None,
             bbox: str | None = Query(None, description="min_lon,min_lat,max_lon,max_lat"),
             device: str | None = Query(None, max_length=64), limit: int | None = Query(None, ge=1),
             conn: psycopg.Connection = Depends(db), _who=Depends(require("viewer"))) -> dict:
    cfg = request.app.state.cfg.api
    where, params = ["c.ended_at >= %(since)s"], {"since": since or datetime.now(UTC) - timedelta(days=1)}
    if until is not None:
        where.append("c.started_at <= %(until)s")
        params["until"] = until
    box = parse_bbox(bbox)
    if box is not None:
        where.append("c.line::geometry && ST_MakeEnvelope(%(x1)s, %(y1)s, %(x2)s, %(y2)s, 4326)")
        params.update(x1=box[0], y1=box[1], x2=box[2], y2=box[3])
    if device is not None:
        where.append("c.device_id = %(device)s")
        params["device"] = device
    params["limit"] = min(limit or cfg.max_page_size, cfg.max_page_size)
    rows = conn.execute(f"""
        SELECT c.coverage_id, c.device_id, c.started_at, c.ended_at, c.detector_active, ST_AsGeoJSON(c.line)
        FROM coverage c WHERE {" AND ".join(where)} ORDER BY c.started_at LIMIT %(limit)s""", params).fetchall()
    features = [{"type": "Feature", "id": str(r[0]), "geometry": json.loads(r[5]),
                 "properties": {"coverage_id": str(r[0]), "device_id": r[1], "started_at": _jsonable(r[2]),
                                "ended_at": _jsonable(r[3]), "detector_active": r[4]}} for r in rows]
    return {"type": "FeatureCollection", "features": features}


def _reject(conn: psycopg.Connection, who: Principal, reason: str, raw: bytes, status: int) -> None:
    with contextlib.suppress(psycopg.Error):
        store_rejected(conn, [Rejection("http", None, who.device_id, reason, raw)])
    metrics.SUBMISSIONS.labels(str(status)).inc()
    raise HTTPException(status, reason)


def _over_rate(conn: psycopg.Connection, device_id: str, per_hour: int) -> bool:
    """Counts this request; True when the device already made PER_HOUR of them within the hour."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (device_id,))
        n = conn.execute("SELECT count(*) FROM http_submissions "
                         "WHERE device_id = %s AND at > now() - interval '1 hour'", (device_id,)).fetchone()[0]
        if n >= per_hour:
            return True
        conn.execute("INSERT INTO http_submissions (device_id) VALUES (%s)", (device_id,))
        if n == 0:  # the device's window restarts: forget its old rows
            conn.execute("DELETE FROM http_submissions WHERE device_id = %s AND at <= now() - interval '1 hour'",
                         (device_id,))
    return False


@api.post("/detections", status_code=202, summary="Submit one event (phones, SDKs): the same path as MQTT",
          responses={400: {"description": "invalid"}, 401: {"description": "no valid token"},
                     403: {"description": "not this device's token"}, 409: {"description": "duplicate event_id"},
                     429: {"description": "over the device's hourly rate"}})
async def submit_detection(request: Request, who: Principal = Depends(principal),
                           conn: psycopg.Connection = Depends(db)) -> dict:
    raw = await request.body()
    return await run_in_threadpool(_submit, request, who, conn, raw)


def _submit(request: Request, who: Principal, conn: psycopg.Connection, raw: bytes) -> dict:
    cfg = request.app.state.cfg
    if who.role != "device":
        metrics.SUBMISSIONS.labels("403").inc()
        raise HTTPException(403, "detections need a device token")
    # Counted before the body is looked at: invalid bodies use up the device's rate like valid ones.
    if _over_rate(conn, who.device_id, cfg.api.rate_limit_per_hour):
        metrics.SUBMISSIONS.labels("429").inc()
        raise HTTPException(429, f"more than {cfg.api.rate_limit_per_hour} detections within the hour",
                            headers={"Retry-After": "60"})
    try:
        body = parse_json(raw, cfg.ingest.max_message_bytes)
    except Invalid as exc:
        _reject(conn, who, str(exc), raw, 400)
    if not isinstance(body, dict):
        _reject(conn, who, "schema: (root): not a JSON object", raw, 400)
    if body.get("device_id", who.device_id) != who.device_id:
        metrics.SUBMISSIONS.labels("403").inc()
        raise HTTPException(403, f"this token belongs to device {who.device_id!r}")
    # Phones may leave out what the server can fill in.
    body.setdefault("schema", "roadmon.event/1")
    body.setdefault("event_id", str(uuid7()))
    body.setdefault("device_id", who.device_id)
    body.setdefault("seq", 0)
    try:
        event = check_message("event", who.device_id, json.dumps(body).encode(), datetime.now(UTC), cfg.ingest)
    except Invalid as exc:
        _reject(conn, who, str(exc), raw, 400)
    try:
        stored = store_batch(conn, Batch(events=[(event, datetime.now(UTC))], source="http"), cfg.aggregate)
    except (psycopg.DataError, psycopg.IntegrityError) as exc:  # valid JSON that PostgreSQL still refuses
        _reject(conn, who, f"database refused: {exc}", raw, 400)
    if event["event_id"] not in stored.new_events:
        metrics.SUBMISSIONS.labels("409").inc()
        raise HTTPException(409, f"event {event['event_id']} was already received")
    metrics.SUBMISSIONS.labels("202").inc()
    return {"event_id": event["event_id"], "status": "queued"}


@api.get("/models/{filename}", summary="Download a model offered to devices, by its sha256",
         response_class=FileResponse)
def model_file(filename: str, request: Request, _who: Principal = Depends(principal)) -> FileResponse:
    match = _SHA256.match(filename)
    if not match:
        raise HTTPException(404, "models are named <sha256>.onnx")
    path = Path(request.app.state.cfg.models.dir) / filename
    if not path.is_file():
        raise HTTPException(404, "no such model")
    return FileResponse(path, media_type="application/octet-stream", filename=filename)
