"""GET /api/v1/audit: the audit log of authenticated API calls, for managers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from fastapi import APIRouter, Depends, Query, Request

from fleet_server.api_defects import _jsonable
from fleet_server.api_deps import QueryTime, QueryUntil, known_query_only, read_db, require
from fleet_server.api_shapes import AuditRow

router = APIRouter(prefix="/api/v1", dependencies=[Depends(known_query_only)])


@router.get("/audit", summary="Who called what, when, and what came of it (every call that presented a token)",
            response_model=None, responses={200: {"description": "Rows, newest first", "model": list[AuditRow]}})
def audit_log(request: Request, since: QueryTime | None = None,
              until: QueryUntil | None = Query(None, description="At or before this UTC time (a date alone: the "
                                                                 "end of that day)"),
              who: str | None = Query(None, max_length=200, description="a token's name"),
              cursor: int | None = Query(None, ge=1, description="Rows older than this row `id`: the next page is "
                                                                 "cursor = the last row's id"),
              limit: int | None = Query(None, ge=1, description="Rows per page (at most api.max_page_size)"),
              conn: psycopg.Connection = Depends(read_db), _who=Depends(require("manager"))) -> list[dict]:
    # Newest first. Without `until` and `cursor` a past night could not be read once more calls than a page
    # had been made since: the dashboard alone writes a few rows per refresh.
    request.app.state.audit.flush()  # what is still queued belongs in the answer
    where: list[str] = ["at >= %(since)s"]
    params: dict[str, Any] = {"since": since or datetime.now(UTC) - timedelta(days=1)}
    for column, op, value in (("at", "<=", until), ("id", "<", cursor), ("who", "=", who)):
        if value is not None:
            where.append(f"{column} {op} %({column})s")
            params[column] = value
    params["limit"] = min(limit or request.app.state.cfg.api.page_size, request.app.state.cfg.api.max_page_size)
    rows = conn.execute(f"""SELECT id, at, token_id, who, role, method, path, status, client FROM audit_log
                            WHERE {" AND ".join(where)} ORDER BY id DESC LIMIT %(limit)s""",
                        params).fetchall()
    keys = ("id", "at", "token_id", "who", "role", "method", "path", "status", "client")
    return [dict(zip(keys, (r[0], _jsonable(r[1]), *r[2:]), strict=True)) for r in rows]
