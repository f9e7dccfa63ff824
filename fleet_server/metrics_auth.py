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


def serve_metrics(cfg: MetricsConfig, port: int, addr: str = "0.0.0.0",
                  problem: Callable[[], str | None] = lambda: None) -> WSGIServer:
    """An ingest process's metrics on ADDR:PORT in a daemon thread. Two paths answer without the token (a probe
    cannot send a secret): /live, 200 while the process lives (the liveness probe: a broker outage must not
    restart the workers), and /health, 200 once every worker is subscribed and committing, else 503 with
    PROBLEM's reason (readiness, and what `docker compose up --wait` waits for before a restore's resend: it
    answered 200 from the start, for a worker whose broker login was refused too)."""
    metrics = make_wsgi_app(REGISTRY)

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == "/live":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/health":
            reason = problem()
            start_response("200 OK" if reason is None else "503 Service Unavailable",
                           [("Content-Type", "text/plain")])
            return [b"ok\n" if reason is None else f"degraded: {reason}\n".encode()]
        if not scrape_allowed(cfg, environ.get("HTTP_AUTHORIZATION")):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), CHALLENGE])
            return [REFUSED.encode()]
        return metrics(environ, start_response)

    server = make_server(addr, port, guarded, server_class=_ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
