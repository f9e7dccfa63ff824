"""The HTTP API: `create_app(cfg)` builds the FastAPI app (OpenAPI at /docs and /openapi.json)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from fleet_server import (
    __version__,
    api_audit,
    api_defects,
    api_detections,
    api_docs,
    api_fleet,
    audit,
    auth,
    dashboard,
    health,
    http_writer,
    metrics,
)
from fleet_server.config import ServerConfig
from fleet_server.db import make_pool
from fleet_server.http_bulkhead import Bulkhead
from fleet_server.http_guard import ClientAddress, HttpGuard
from fleet_server.http_observe import Observe
from fleet_server.replica import NoteWrites, Reads

log = logging.getLogger(__name__)


def create_app(cfg: ServerConfig, workers: list | None = None) -> FastAPI:
    """The API over CFG's database. WORKERS (ingest workers in this process) feed /health's broker check."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # Here, not after uvicorn.run returns: on SIGTERM uvicorn raises the signal again once it has shut down
        # (uvicorn 0.29+), so the process ended before `serve` could stop its workers, whose sessions then kept
        # taking their share of the fleet's messages until they expired (lost to all but the agents' re-send).
        for worker in app.state.workers:
            await asyncio.to_thread(worker.stop)
        app.state.http_writer.close()
        app.state.audit.close()
        app.state.reads.close()
        app.state.pool.close()

    app = FastAPI(title="road-monitor fleet server", version=__version__, lifespan=lifespan,
                  description="Road defects merged from a fleet's sightings; devices; coverage; workflow.",
                  docs_url=None, redoc_url=None)  # /docs from local files (api_docs.py), not a CDN
    app.state.cfg = cfg
    app.state.pool = make_pool(cfg.database)
    app.state.reads = Reads(cfg.database, app.state.pool)
    app.state.tokens = auth.TokenCache(cfg.api.token_cache_s, cfg.api.max_concurrent_verifications,
                                       cfg.api.auth_failures_per_minute)
    app.state.auth_failures = auth.AuthFailures(cfg.api.auth_failures_per_minute)
    app.state.workers = workers or []
    app.state.audit = audit.AuditLog(app.state.pool, cfg.api.audit_flush_s)
    app.state.http_writer = http_writer.SubmissionWriter(cfg)
    metrics.register_device_collector(_fetcher(app), cfg.ingest.stale_after_s)

    # Each added layer wraps the ones before it. A write's position on the primary is noted before its answer
    # leaves, so that the client's next read includes it...
    app.add_middleware(NoteWrites, reads=app.state.reads)
    # ...requests take turns for the database without holding a thread while they wait...
    app.add_middleware(Bulkhead, limit=cfg.api.max_concurrent_requests or cfg.database.pool_max,
                       wait_s=cfg.api.queue_wait_s)
    # ...limits apply before any other work is done for a request...
    app.add_middleware(HttpGuard, max_body_bytes=cfg.api.max_body_bytes)
    # ...every answer, the guard's refusals and the 500 of an exception included, is measured and audited...
    app.add_middleware(Observe, audit_log=app.state.audit)
    # ...the address is an IP address or "invalid"...
    app.add_middleware(ClientAddress)
    # ...and the client is the address a trusted proxy names (X-Forwarded-For), else the connection's own.
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=[str(net) for net in cfg.api.trusted_proxies])
    if cfg.api.cors_origins:
        # Around every other layer, so that the guard's 413 and the bulkhead's 503 reach a web client as what they
        # are (without the header a browser reports a network error). What a client reads from an answer: the
        # /devices pages, Retry-After of a 429 or 503, why a token was refused, and a defect's version for If-Match.
        app.add_middleware(CORSMiddleware, allow_origins=cfg.api.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PATCH"],
                           allow_headers=["Authorization", "Content-Type", "If-Match"],
                           expose_headers=["X-Next-Cursor", "Link", "Retry-After", "WWW-Authenticate", "ETag"])
    if cfg.api.compress_min_bytes:
        # Outermost, after the bulkhead let the database slot go. A 10,000-vehicle device list is megabytes of
        # JSON every refresh of every open tab. Models are left alone (they hardly compress, and agents resume
        # their downloads by byte ranges), as are pictures.
        app.add_middleware(GZipMiddleware, minimum_size=cfg.api.compress_min_bytes, compresslevel=5,
                           exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/octet-stream"))

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_away(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": "database unavailable, try again"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Malformed parameters are the client's mistake: 400 with every problem, as the issue asks.
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        kind = request.headers.get("content-type", "")
        if any(e["loc"][:1] == ("body",) for e in exc.errors()) and "json" not in kind.lower():
            # Without the header FastAPI reads a JSON body as text: "valid dictionary" misled curl users.
            problems.insert(0, f"body: send it as JSON with Content-Type: application/json (got {kind[:60]!r})")
        return JSONResponse({"detail": problems}, status_code=400)

    app.openapi = _openapi_as_answered(app)  # type: ignore[method-assign]  # FastAPI's documented way to replace it

    app.include_router(api_fleet.router)
    app.include_router(api_fleet.api)
    app.include_router(api_fleet.downloads)
    app.include_router(api_detections.router)
    app.include_router(api_audit.router)
    app.include_router(api_defects.router)
    api_docs.add_docs(app)
    app.include_router(dashboard.dashboard_router(cfg))  # /dashboard-config.json (basemap tiles)
    # Last: the dashboard's static mount at `/` matches every path, so routes added after it are unreachable.
    dashboard.mount_dashboard(app, cfg, cfg.api.static_dir)
    return app


class Problem(BaseModel):
    """The body of every refusal: one reason, or (malformed parameters) every problem, each naming its field."""

    detail: str | list[str] = Field(description="What is wrong, starting with the field it is about")


# What a route behind a token answers besides its own codes (a generated client must expect them).
AUTH_REFUSALS = {"401": "Invalid, expired or revoked token (WWW-Authenticate: Bearer)",
                 "403": "No token, or the token's role may not do this"}


THROTTLED = "Too many failed authentications from this address (or a device's hourly posts): wait Retry-After"


def _openapi_as_answered(app: FastAPI) -> Callable[[], dict]:
    """app.openapi, with FastAPI's 422 for validated routes replaced by the 400 (and its body) this server
    answers: the document is the contract for clients we do not ship."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.get("responses", {})
                # Every /api/v1 route refuses a query parameter it does not take (known_query_only, query_check).
                if responses.pop("422", None) is not None or "400" in responses or path.startswith("/api/v1/"):
                    answer = responses.setdefault("400", {"description": "Invalid input: the detail names the "
                                                                         "field"})
                    answer.setdefault("content", {}).setdefault("application/json", {})["schema"] = {
                        "$ref": "#/components/schemas/Problem"}
                refusals = dict(AUTH_REFUSALS) if "security" in operation else {}
                parameters = {p.get("name"): p.get("in") for p in operation.get("parameters", [])}
                if "path" in parameters.values():
                    refusals["404"] = "No such item"
                if "requestBody" in operation:
                    refusals["413"] = "The body is larger than api.max_body_bytes"
                if "since_token" in parameters:
                    refusals["410"] = "since_token is not from this database's history: load everything again"
                if "security" in operation:
                    refusals["429"] = THROTTLED
                refusals["503"] = "The database is unavailable or busy: try again after Retry-After"
                for code, description in refusals.items():
                    responses.setdefault(code, {"description": description})
                for code, answer in responses.items():
                    if code in ("429", "503"):
                        answer.setdefault("headers", {})["Retry-After"] = {
                            "description": "Seconds to wait", "schema": {"type": "integer"}}
                    if code >= "400":  # every refusal's body is a Problem (a 409 of a duplicate adds fields)
                        media = answer.setdefault("content", {}).setdefault("application/json", {})
                        media.setdefault("schema", {"$ref": "#/components/schemas/Problem"})
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        schemas["Problem"] = Problem.model_json_schema()
        return schema

    return openapi


def _fetcher(app: FastAPI):
    def query(sql: str) -> list[tuple]:
        with app.state.pool.connection(timeout=health.PROBE_S) as conn:
            return conn.execute(sql).fetchall()

    def fetch(sql: str) -> list[tuple]:  # bounded: a scrape answers with the last figures when PostGIS is frozen
        return health.within(lambda: query(sql))

    return fetch
