"""Who may scrape /metrics: anyone, or whoever sends the bearer token in `metrics.token_file`.

The API's /metrics and each ingest process's --metrics-port share the rule. The token is read at every scrape
(Prometheus scrapes every 15 s; a file read is cheap), so a rotated secret takes effect without a restart; a
token file that has gone missing refuses every scrape rather than opening the figures to anyone.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app

from fleet_server.config import ConfigError, MetricsConfig

log = logging.getLogger(__name__)

CHALLENGE = ("WWW-Authenticate", 'Bearer realm="metrics"')
REFUSED = "/metrics needs the bearer token of metrics.token_file (Prometheus: authorization.credentials_file)\n"


def scrape_allowed(cfg: MetricsConfig, authorization: str | None) -> bool:
    """True when no token is set, or AUTHORIZATION is `Bearer <the token>`."""
    try:
        token = cfg.resolve_token()
    except (OSError, ConfigError) as exc:
        log.error("metrics.token_file cannot be used (%s): every scrape is refused until it can", exc)
        return False
    if token is None:
        return True
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class _QuietHandler(WSGIRequestHandler):
    timeout = 10  # s per read: a client that connects and sends nothing is dropped, not waited on for ever

    def log_message(self, format: str, *args: object) -> None:
        pass  # a line per scrape every 15 s is noise


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """A thread per connection: on the one-at-a-time server, a single connection left half-open (a stalled
    scrape, a port scanner) held /health until the kubelet's liveness probe restarted the ingest process."""

    daemon_threads = True


def serve_metrics(cfg: MetricsConfig, port: int, addr: str = "0.0.0.0") -> WSGIServer:
    """An ingest process's metrics on ADDR:PORT in a daemon thread. /health answers without the token: it is the
    liveness probe's path (a kubelet probe cannot send a secret) and tells nothing but that the process lives."""
    metrics = make_wsgi_app(REGISTRY)

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/health":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if not scrape_allowed(cfg, environ.get("HTTP_AUTHORIZATION")):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), CHALLENGE])
            return [REFUSED.encode()]
        return metrics(environ, start_response)

    server = make_server(addr, port, guarded, server_class=_ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
