"""The browser dashboard's server side: its settings endpoint and the static files at `/`.

The dashboard is plain static files (fleet_server/static/, Leaflet vendored from npm), so the only thing the
server adds is `/dashboard-config.json`: the basemap tile URL and attribution. It holds no fleet data, so it
needs no token; everything else the page shows comes from /api/v1 with the user's bearer token.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_TILE_URL = "https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png"
DEFAULT_ATTRIBUTION = '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors'
TILE_URL_ENV = "ROADMON_TILE_URL"


def dashboard_settings(cfg: Any = None) -> dict[str, Any]:
    """Tile settings from the server config's `[dashboard]` (or `[api]`) section when it has them, else the
    ROADMON_TILE_URL environment variable, else OpenStreetMap. An empty tile URL means no basemap at all."""
    section = getattr(cfg, "dashboard", None) or getattr(cfg, "api", None)
    tile_url = getattr(section, "tile_url", None)
    if tile_url is None:
        tile_url = os.environ.get(TILE_URL_ENV, DEFAULT_TILE_URL)
    return {
        "tile_url": tile_url,
        "tile_attribution": getattr(section, "tile_attribution", None) or DEFAULT_ATTRIBUTION,
        "max_zoom": getattr(section, "tile_max_zoom", None) or 19,
    }


def dashboard_router(cfg: Any = None) -> APIRouter:
    router = APIRouter(tags=["dashboard"])
    settings = dashboard_settings(cfg)

    @router.get("/dashboard-config.json", include_in_schema=False)
    def dashboard_config() -> dict[str, Any]:
        return settings

    return router


def mount_dashboard(app: FastAPI, cfg: Any = None, static_dir: Path | None = None) -> None:
    """Add the settings route and serve the dashboard at `/`. Call it after the API routes are added: the
    static mount at `/` matches every path, so routes added later would never be reached."""
    app.include_router(dashboard_router(cfg))
    folder = Path(static_dir) if static_dir else STATIC_DIR
    if not (folder / "index.html").is_file():
        log.warning("dashboard not served: %s has no index.html", folder)
        return
    app.mount("/", StaticFiles(directory=folder, html=True), name="dashboard")
