"""POST /api/v1/detections and POST /v1/detections: phones and other HTTP clients, the same path as MQTT.

Two bodies are accepted, told apart by shape and each validated strictly: our own `roadmon.event/1` (one
event; a client may leave out schema, event_id, device_id and seq) and the deployment guide's SDK body
(`fleet_server.phone_body`, one event per detection). Answers: 202 `{event_id, status: "queued"}`; 400 naming
the field; 403 without credentials or for another device's data; 401 for a refused token; 409 when every
event of the body was stored before; 429 with Retry-After once a device made `api.rate_limit_per_hour` accepted
or duplicate posts within the hour (the guide's test, 101 good posts, sees posts 1-100 answered 202/409). Refused
posts (400) do not count: a device with a bug must not lose an hour of valid uploads, and what its bad posts
cost is bounded by the dead letters' own cap (ingest.rejected_per_device_hour).
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from fleet_server import phone_body
from fleet_server.api_deps import db, principal
from fleet_server.auth import Principal
from fleet_server.config import ServerConfig
from fleet_server.db import one_row
from fleet_server.http_writer import OverRate
from fleet_server.store import CLASH, RejectPolicy, store_rejected
from fleet_server.validate import (
    Invalid,
    Rejection,
    check_message,
    check_window,
    drop_camera_metadata,
    parse_json,
    parse_utc,
)
from roadmon_contract import validate as contract
from roadmon_contract.ids import uuid7

router = APIRouter()
PATHS = ("/api/v1/detections", "/v1/detections")  # ours, and the guide's SDKs' base URL + /detections


class Accepted(BaseModel):
    event_id: str = Field(description="The submission's id (a phone body) or the event's id (roadmon.event/1)")
    status: str = Field(description="Always 'queued': stored, and merged into the defect map")
    event_ids: list[str] = Field(description="The sightings stored, one per detection")


GUIDE_REQUEST = {
    "device_id": "VEH_TEST", "timestamp": "2026-11-28T13:45:32.120Z",
    "gps": {"lat": 12.9716, "lon": 77.5946, "accuracy": 5.0},
    "detections": [{"bbox": [100, 150, 250, 300], "class": "pothole", "confidence": 0.87}],
}
GUIDE_RESPONSE = {"event_id": "019ad0b4-8b38-7f3e-9a40-6c1b0f1e2d3c", "status": "queued",
                  "event_ids": ["019ad0b4-8b38-7a51-8e44-0d2b5b7c9e10"]}


def _inline(schema: dict) -> dict:
    """SCHEMA with its $defs substituted, so it can sit inside the OpenAPI document as is."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


class Duplicate(BaseModel):
    detail: str = Field(description="What happened, in words")
    event_id: str = Field(description="The submission's id, as in the 202 it got before")
    status: str = Field(description="Always 'duplicate'")
    event_ids: list[str] = Field(description="The sightings stored before, one per detection")


# What a client may leave out of either body: the token names the device, the server fills in the rest.
FILLED_IN = {"device_id", "schema", "event_id", "seq"}


def _request_body() -> dict:
    phone = _inline(phone_body.PhoneSubmission.model_json_schema(by_alias=True))
    event = {k: v for k, v in contract.schema("event").items() if k not in ("$schema", "$id")}
    for body in (phone, event):
        body["required"] = [name for name in body.get("required", []) if name not in FILLED_IN]
    # The guide's sample names its own device id, which only a token of a device of that id may send.
    example = {k: v for k, v in GUIDE_REQUEST.items() if k != "device_id"}
    return {"required": True, "content": {"application/json": {
        "schema": {"oneOf": [phone, {**_inline(event), "title": "roadmon.event/1"}]},
        "examples": {"guide": {"summary": "The deployment guide's SDK body (device_id left out: the token says "
                                          "it; another device's id is a 400)", "value": example}}}}}


def _responses() -> dict:
    def text(why: str) -> dict:
        return {"description": why, "content": {"application/json": {"example": {"detail": why}}}}

    return {202: {"description": "stored", "content": {"application/json": {"example": GUIDE_RESPONSE}}},
            400: text("invalid input, e.g. gps.lat: Input should be less than or equal to 90"),
            401: text("invalid, expired or revoked token"),
            403: text("Not authenticated: send Authorization: Bearer <token>"),
            409: {"description": "this submission was already received", "content": {"application/json": {
                "schema": Duplicate.model_json_schema(),
                "example": {"detail": "submission ... was already received", **GUIDE_RESPONSE,
                            "status": "duplicate"}}}},
            429: text("more than 100 posts from this device within the hour")}  # 413 and Retry-After: api.py adds them


async def submit(request: Request, who: Principal = Depends(principal),
                 conn: psycopg.Connection = Depends(db)) -> Accepted | JSONResponse:
    raw = await request.body()
    return await run_in_threadpool(_submit, request, who, conn, raw)


for _path in PATHS:
    router.add_api_route(_path, submit, methods=["POST"], status_code=202, response_model=Accepted,
                         summary="Submit detections (phones, SDKs, other clients): the same path as MQTT",
                         openapi_extra={"requestBody": _request_body()}, responses=_responses(),
                         operation_id="submit_detections" + ("_v1" if _path.startswith("/v1") else ""))


def _submit(request: Request, who: Principal, conn: psycopg.Connection, raw: bytes) -> Accepted | JSONResponse:
    cfg = request.app.state.cfg
    if who.role != "device":
        raise HTTPException(403, "detections need a device token")
    assert who.device_id is not None  # api_tokens' CHECK: a device token names its device
    # Accepted and duplicate posts count (the writer records them): a device at its hourly rate is turned away
    # before its body is read. Refused ones do not: their dead letters are capped per device and hour instead.
    if _posts_this_hour(conn, who.device_id) >= cfg.api.rate_limit_per_hour:
        raise HTTPException(429, f"more than {cfg.api.rate_limit_per_hour} posts from this device within the hour",
                            headers={"Retry-After": str(_retry_after(conn, who.device_id))})
    try:
        body = parse_json(raw, cfg.api.max_body_bytes)  # the HTTP cap; ingest.max_message_bytes is MQTT's
        if not isinstance(body, dict):
            raise Invalid("(root): not a JSON object")
        # The body is wrong, not the token: 400, so a client drops this body and goes on (a 403 read as a refused
        # token held a phone's whole queue behind it, as the guide's samples send the platform's own id here).
        if body.get("device_id", who.device_id) != who.device_id:
            raise Invalid(f"device_id: this token belongs to device {who.device_id!r}; send that (GET /api/v1/me says "
                          "it) or leave device_id out")
        submission_id, events = _events(body, who, raw, cfg)
        stored = request.app.state.http_writer.store(who.device_id, events)
    except Invalid as exc:
        _reject(conn, cfg, who, str(exc), raw)
    except (psycopg.DataError, psycopg.IntegrityError) as exc:  # valid JSON that PostgreSQL still refuses
        _reject(conn, cfg, who, f"database refused: {exc}", raw)
    except OverRate:
        raise HTTPException(429, f"more than {cfg.api.rate_limit_per_hour} posts from this device within the hour",
                            headers={"Retry-After": str(_retry_after(conn, who.device_id))}) from None
    except TimeoutError:
        # The writer is held up (a lock on a defect, held by someone else for a minute): the submission stays in
        # its queue and is stored when it moves; a 500 told the phone its data was lost, and its retry got 409.
        raise HTTPException(503, "the database is busy: the submission is queued and will be stored; sending it "
                                 "again is safe (a stored one answers 409)", headers={"Retry-After": "30"}) from None
    ids = [e["event_id"] for e in events]
    if stored.clashing:  # kept as a dead letter by the store; a 409 said "stored before" and the client dropped it
        raise HTTPException(400, f"event_id {', '.join(sorted(stored.clashing))}: {CLASH} (another device's, or "
                                 "this one's with other fields): give each new event its own id")
    if not stored.new:  # with its id, so that a client retrying after a lost answer learns it
        return JSONResponse({"detail": f"submission {submission_id} was already received",
                             "event_id": submission_id, "status": "duplicate", "event_ids": ids}, status_code=409)
    return Accepted(event_id=submission_id, status="queued", event_ids=ids)


def _events(body: dict, who: Principal, raw: bytes, cfg) -> tuple[str, list[dict]]:
    """(the id to answer with, the events of BODY), each checked as an MQTT event would be."""
    now = datetime.now(UTC)
    # Either body may leave out the device: the token names it (the 400 for another device's id says so).
    body.setdefault("device_id", who.device_id)
    if phone_body.is_phone_body(body):
        sub, image = phone_body.parse_submission(body, cfg.api.max_image_bytes)
        check_window("timestamp", sub.timestamp, now, cfg.ingest)
        submission_id, events = phone_body.to_events(sub, image, phone_body.submission_key(body),
                                                     cfg.api.unprojected_sigma_m)
        for event in events:
            check_message("event", who.device_id, json.dumps(event).encode(), now, cfg.ingest)
        return submission_id, events
    # Our own event; a client may leave out what the server can fill in.
    if "event_id" not in body:
        body["event_id"] = _event_id_of(body)
    body.setdefault("schema", "roadmon.event/1")
    body.setdefault("seq", 0)
    event = check_message("event", who.device_id, json.dumps(body).encode(), now, cfg.ingest)
    drop_camera_metadata(event)
    return event["event_id"], [event]


def _event_id_of(body: dict) -> str:
    """The id of an event sent without one, from its content (as a phone body's): a client's retry after a lost
    answer is a 409, not a second sighting of the pothole (an outside re-test stored one twice)."""
    try:
        ms = int(parse_utc(body["captured_at"]).timestamp() * 1000)
    except (KeyError, AttributeError, TypeError, ValueError):  # Invalid is a ValueError
        return str(uuid7())  # the event's check names what is wrong with its time
    return phone_body.stable_uuid7(ms, b"event\0" + phone_body.submission_key(body))


def _retry_after(conn: psycopg.Connection, device_id: str) -> int:
    """Seconds until the device's oldest submission of the hour leaves the window."""
    row = one_row(conn.execute("SELECT extract(epoch FROM min(at) + interval '1 hour' - now()) "
                               "FROM http_submissions WHERE device_id = %s AND at > now() - interval '1 hour'",
                               (device_id,)))
    return max(1, int(row[0] or 0) + 1)


def _posts_this_hour(conn: psycopg.Connection, device_id: str) -> int:
    return one_row(conn.execute("SELECT count(*) FROM http_submissions WHERE device_id = %s "
                                "AND at > now() - interval '1 hour'", (device_id,)))[0]


def _reject(conn: psycopg.Connection, cfg: ServerConfig, who: Principal, reason: str, raw: bytes) -> None:
    """Keep RAW as a dead letter (within the per-device cap, as for MQTT) and answer 400 with REASON."""
    policy = RejectPolicy(cfg.ingest.rejected_keep_bytes, cfg.ingest.rejected_per_device_hour)
    with contextlib.suppress(psycopg.Error):
        store_rejected(conn, [Rejection("http", None, who.device_id, reason, raw)], policy)
    raise HTTPException(400, reason)
