"""GET /api/v1/audit: the audit log of authenticated API calls, for managers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
from fastapi import APIRouter, Depends, Query, Request

from fleet_server.api_defects import _jsonable
from fleet_server.api_deps import QueryTime, known_query_only, read_db, require

router = APIRouter(prefix="/api/v1", dependencies=[Depends(known_query_only)])


@router.get("/audit", summary="Who called what, when, and what came of it (every call that presented a token)")
def audit_log(request: Request, since: QueryTime | None = None,
              who: str | None = Query(None, max_length=200, description="a token's name"),
              limit: int | None = Query(None, ge=1), conn: psycopg.Connection = Depends(read_db),
              _who=Depends(require("manager"))) -> list[dict]:
    request.app.state.audit.flush()  # what is still queued belongs in the answer
    where, params = ["at >= %(since)s"], {"since": since or datetime.now(UTC) - timedelta(days=1)}
    if who is not None:
        where.append("who = %(who)s")
        params["who"] = who
    params["limit"] = min(limit or request.app.state.cfg.api.page_size, request.app.state.cfg.api.max_page_size)
    rows = conn.execute(f"""SELECT at, token_id, who, role, method, path, status, client FROM audit_log
                            WHERE {" AND ".join(where)} ORDER BY at DESC, id DESC LIMIT %(limit)s""",
                        params).fetchall()
    keys = ("at", "token_id", "who", "role", "method", "path", "status", "client")
    return [dict(zip(keys, (_jsonable(r[0]), *r[1:]), strict=True)) for r in rows]
