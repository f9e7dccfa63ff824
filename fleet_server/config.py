"""The fleet server's configuration: one TOML file, validated at start (unknown keys are errors).

Secrets never come from the command line: the database DSN and the MQTT password are read from files
(systemd `LoadCredential=`) or from the environment (`ROADMON_DATABASE_DSN`, `ROADMON_MQTT_PASSWORD`). A relative
file name is a credential's: looked up in $CREDENTIALS_DIRECTORY, then in `credentials/` beside the config file
(where systemd/install.sh keeps them), so the CLI finds them from a root shell too.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
from datetime import date
from ipaddress import ip_network
from pathlib import Path

from pydantic import Field, IPvAnyNetwork, PrivateAttr, field_validator, model_validator

from roadmon_contract.config_base import ConfigError, Section, load_toml, validate

EXAMPLE = Path(__file__).with_name("example.toml")
__all__ = ["ConfigError", "ServerConfig", "load", "parse"]
DSN_ENV = "ROADMON_DATABASE_DSN"
READ_DSN_ENV = "ROADMON_READ_DATABASE_DSN"
MQTT_PASSWORD_ENV = "ROADMON_MQTT_PASSWORD"
INSTANCE_ENV = "ROADMON_INSTANCE"
OLD_DEFAULT_GROUP = "ingest"  # what example.toml set before the group's name became a secret

log = logging.getLogger(__name__)


# Where systemd/install.sh keeps the files that the units' LoadCredential= hands them, beside server.toml: the
# CLI run from a root shell has no $CREDENTIALS_DIRECTORY, so it looks there itself (as `edge-agent doctor` does).
CREDENTIALS_FOLDER = "credentials"


def secret_places(path: Path, config_dirs: tuple[Path, ...] = ()) -> list[Path]:
    """Where a secret file named PATH is looked for, in order. A relative name is a systemd credential's:
    $CREDENTIALS_DIRECTORY (LoadCredential=), then the credentials folder beside the config, then the working
    directory (the units run in their credentials directory)."""
    if path.is_absolute():
        return [path]
    dirs = [Path(d) for d in (os.environ.get("CREDENTIALS_DIRECTORY"),) if d]
    dirs += [d / CREDENTIALS_FOLDER for d in config_dirs]
    return [d / path for d in dirs] + [path]


def _exists(path: Path) -> bool:
    try:
        return path.is_file()
    except PermissionError:  # a root-only credentials folder, as another user: reading it says so, by name
        return True
    except OSError:
        return False


def read_secret(path: Path, config_dirs: tuple[Path, ...] = ()) -> str:
    """The secret in PATH, found as `secret_places` says; a missing one raises FileNotFoundError naming every
    place looked in."""
    places = secret_places(path, config_dirs)
    found = next((p for p in places if _exists(p)), None)
    if found is None:
        looked = ", ".join(str(p if p.is_absolute() else Path.cwd() / p) for p in places)
        unset = "" if os.environ.get("CREDENTIALS_DIRECTORY") or path.is_absolute() else \
            " ($CREDENTIALS_DIRECTORY is not set)"
        raise FileNotFoundError(errno.ENOENT, f"no such file; looked in {looked}{unset}", str(path))
    return found.read_text(encoding="utf-8").strip()


class SecretSection(Section):
    """A section with secret files: it knows the folder of the config it came from, to find them there."""

    _config_dirs: tuple[Path, ...] = PrivateAttr(default=())

    def read_secret(self, path: Path) -> str:
        return read_secret(path, self._config_dirs)


class DatabaseConfig(SecretSection):
    dsn_file: Path | None = Field(None, description="File holding the PostGIS connection string (with password)")
    dsn: str | None = Field(None, description="Connection string without a secret (e.g. peer auth); prefer dsn_file "
                                              f"or the {DSN_ENV} environment variable when it holds a password")
    pool_min: int = Field(1, ge=1, le=100, description="API connection pool: connections kept open")
    pool_max: int = Field(8, ge=1, le=200, description="API connection pool: most connections at once")
    connect_timeout_s: float = Field(5.0, gt=0, description="Seconds to wait for a new database connection")
    read_dsn_file: Path | None = Field(None, description="File holding a streaming read replica's connection string: "
                                                         "the API's GET routes read there; writes, logins and "
                                                         "ingest stay on the primary")
    read_dsn: str | None = Field(None, description="A read replica's connection string without a secret; prefer "
                                                   f"read_dsn_file or {READ_DSN_ENV}")
    read_max_lag_s: float = Field(10.0, gt=0, description="Seconds behind the primary past which the replica serves "
                                                          "no reads (they go to the primary)")
    read_retry_s: float = Field(10.0, gt=0, description="Seconds the primary serves reads after the replica failed "
                                                        "to answer, before the replica is tried again")

    def resolve_dsn(self) -> str:
        if self.dsn_file is not None:
            return self.read_secret(self.dsn_file)
        if os.environ.get(DSN_ENV):
            return os.environ[DSN_ENV].strip()
        if self.dsn:
            return self.dsn
        raise ConfigError("database", [f"no database DSN: set database.dsn_file or {DSN_ENV}"])

    def resolve_read_dsn(self) -> str | None:
        """The read replica's DSN, or None when reads go to the primary."""
        if self.read_dsn_file is not None:
            return self.read_secret(self.read_dsn_file)
        return os.environ.get(READ_DSN_ENV, "").strip() or self.read_dsn or None


class MqttConfig(SecretSection):
    host: str = Field("127.0.0.1", description="Broker host name")
    port: int = Field(1883, gt=0, lt=65536, description="Broker port")
    username: str = Field("roadmon-server", description="The server's broker login (reads/writes roadmon/#)")
    password_file: Path | None = Field(None, description=f"File holding the broker password; else {MQTT_PASSWORD_ENV}")
    tls: bool = Field(False, description="Connect with TLS")
    ca_file: Path | None = Field(None, description="CA bundle for TLS; the system store when empty")
    client_id_prefix: str = Field("roadmon-ingest", description="Worker client ids are "
                                                                "<prefix>-<role>-<instance>-<group>-<n>")
    instance: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,64}$",
                                 description=f"This process's name among the fleet server's processes, part of its "
                                             f"workers' client ids; else {INSTANCE_ENV} (a pod name), else the host "
                                             "name. Two processes must never share one")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive")
    session_expiry_s: int = Field(10, ge=0, description="How long the broker keeps a worker's session after the "
                                                        "worker vanished without a clean stop (a crash, a lost "
                                                        "network): long enough for a quick restart, short, since "
                                                        "the broker keeps routing that worker's share of messages to "
                                                        "it (a clean stop ends the session at once)")
    leave_group_on_stop: bool = Field(True, description="A clean stop leaves the shared group at once: it stores "
                                                        "what it was delivered (ingest.drain_s) and ends its "
                                                        "session, so its share goes to the other workers (right with "
                                                        "several workers, and on Kubernetes, where a restarted pod has "
                                                        "a new name). false: the session is kept for "
                                                        "session_expiry_s, so a lone worker restarting under the same "
                                                        "name gets what arrived meanwhile")
    reconnect_min_s: float = Field(1.0, ge=1, description="First reconnect delay after a broker outage (whole seconds)")
    reconnect_max_s: float = Field(30.0, ge=1, description="Longest reconnect delay (doubling backoff, whole seconds)")

    def resolve_instance(self) -> str:
        """INSTANCE, else $ROADMON_INSTANCE, else the host name: stable across restarts, unique per process."""
        return self.instance or os.environ.get(INSTANCE_ENV) or socket.gethostname()

    def resolve_password(self) -> str | None:
        if self.password_file is not None:
            return self.read_secret(self.password_file)
        return os.environ.get(MQTT_PASSWORD_ENV) or None


class BrokerFilesConfig(Section):
    passwd_file: Path | None = Field(None, description="Mosquitto password file that `device add` writes")
    acl_file: Path | None = Field(None, description="Mosquitto ACL file; `device add` makes sure the per-device "
                                                    "patterns are in it")
    pid_file: Path | None = Field(None, description="Mosquitto pid file, to reload the broker (SIGHUP) after a change")


# The port a vehicle uses when devices.broker names none: the TLS listener (deploy/mosquitto.conf).
VEHICLE_TLS_PORT = 8883


class DevicesConfig(Section):
    broker: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$",
                               description="The broker address handed to vehicles in the credentials that `device "
                                           "add` and `device import` print, HOST[:PORT] (port 8883, TLS, when "
                                           "left out): the broker's public TLS name, as `systemd/install.sh agent "
                                           "--broker` takes it. Unset: they show mqtt.host and mqtt.port, the "
                                           "server's own way to its broker, and say so")

    @field_validator("broker")
    @classmethod
    def _port_in_range(cls, value: str | None) -> str | None:
        port = (value or "").partition(":")[2]
        if port and not 0 < int(port) < 65536:
            raise ValueError(f"port {port} is not 1-65535")
        return value

    def vehicle_address(self, mqtt: MqttConfig) -> tuple[str, int, bool]:
        """(host, port, whether it is the public address set in devices.broker) for a vehicle's credentials."""
        if self.broker is None:
            return mqtt.host, mqtt.port, False
        host, _, port = self.broker.partition(":")
        return host, int(port or VEHICLE_TLS_PORT), True


class IngestConfig(Section):
    share_group: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$",
                                    description="Shared-subscription group: workers in one group split the messages. "
                                                "Unset: derived from the server's broker password, so every worker "
                                                "of one server agrees and no device can guess it (Mosquitto does "
                                                "not check subscriptions against the ACL: a device that joined the "
                                                "group would be handed messages it may not read, which the broker "
                                                "then drops). A name set here must be as hard to guess")
    devices: list[str] = Field(["+"], min_length=1, description="Device ids to subscribe to; '+' means all")
    batch_size: int = Field(5000, ge=1, le=20000, description="Most messages stored in one transaction")
    batch_wait_s: float = Field(0.1, ge=0, le=10, description="How long a batch waits to fill before it is stored")
    queue_max: int = Field(20000, ge=100, description="Messages held in memory before the worker stops reading "
                                                      "(the broker keeps the rest)")
    max_message_bytes: int = Field(2_500_000, ge=1024, description="Larger messages are rejected")
    max_result_bytes: int = Field(65_536, ge=1024, description="Larger command results are rejected")
    rejected_keep_bytes: int = Field(4096, ge=0, description="Raw bytes kept of each rejected message (dead letter)")
    rejected_per_device_hour: int = Field(100, ge=0, description="Dead letters kept per device per hour; the rest "
                                                                  "are only counted (the device still gets the reason)")
    rejected_retention_days: float = Field(30.0, gt=0, description="Dead letters older than this are deleted")
    stall_after_s: float = Field(60.0, gt=0, description="/health is degraded when messages wait and ingest has not "
                                                         "committed for this long")
    horizon_days: float = Field(30.0, gt=0, description="Events captured longer ago than this are rejected")
    future_tolerance_s: float = Field(86400.0, ge=0, description="Events from further in the future are rejected")
    stale_after_s: float = Field(600.0, gt=0, description="An online device not heard from this long is 'stale'")
    db_retry_max_s: float = Field(30.0, gt=0, description="Longest wait between retries while PostGIS is down")
    drain_s: float = Field(5.0, ge=0, le=300, description="At a clean stop: seconds a worker keeps storing and "
                                                          "acknowledging what the broker had already delivered to "
                                                          "it, after leaving the shared group")
    defer_busy_s: float = Field(10.0, ge=0, le=60,
                                description="Events whose map area another worker's transaction holds go to the "
                                            "worker's next batch instead of waiting for it, for at most this long "
                                            "(then the batch waits; keep it well under the agents' ack timeout); "
                                            "0 = always wait")
    last_seen_resolution_s: float = Field(30.0, ge=0, le=3600,
                                          description="devices.last_seen is moved forward only when it is older "
                                                      "than this: every batch writing the same device rows made "
                                                      "concurrent workers queue on their row locks")


class AggregateConfig(Section):
    merge_radius_m: float = Field(5.0, gt=0, le=100, description="A sighting joins the nearest open defect of its "
                                                                 "class within this distance")
    accuracy_gate: float = Field(3.0, ge=0, le=10, description="...or within this many times the sighting's "
                                                               "h_accuracy_m, when that is larger")
    max_gate_m: float = Field(12.0, gt=0, le=200, description="Upper bound of the accuracy-widened radius")
    pass_gap_s: float = Field(600.0, gt=0, description="Sightings of one device further apart than this are "
                                                       "separate passes")
    same_view_s: float = Field(20.0, ge=0, le=3600,
                               description="Two pothole-like (point, ground-projected) sightings of one device "
                                           "this close in time share their GNSS error, so their distance is "
                                           "measured to a metre: farther apart than same_view_split_m they are "
                                           "two defects, however near the gate would call them (0: off)")
    same_view_split_m: float = Field(2.0, gt=0, le=20,
                                     description="See same_view_s: the agent's own tracker.merge_radius_m")
    confirm_sightings: int = Field(2, ge=1, description="Sightings needed for new -> confirmed")
    confirm_passes: int = Field(2, ge=1, description="Distinct passes needed for new -> confirmed")
    repair_misses: int = Field(2, ge=1, description="Fewest misses since the last sighting for -> likely_repaired")
    repair_chance: float = Field(0.001, gt=0, le=1,
                                 description="...and only once the misses are this unlikely for a defect still "
                                             "there, each judged by how often passes going its way found the "
                                             "defect before and by the fleet's detection rate at its offset "
                                             "beside the path; 1 = the miss counts alone")
    repair_vehicles: int = Field(2, ge=1, description="Distinct vehicles among those misses")
    miss_prior_passes: float = Field(4.0, ge=0, le=100,
                                     description="How many passes' worth the fleet's detection rate at a defect's "
                                                 "offset beside the path counts for against the defect's own "
                                                 "record when a miss is judged; 0 = its own record alone")
    offset_bin_m: float = Field(0.5, gt=0, le=5, description="Width of the offset bins of the detection curve "
                                                             "(metres beside the vehicle's path)")
    offset_bin_min_passes: int = Field(30, ge=1, description="Fewest passes in an offset bin before the curve is "
                                                             "used there (else the defect's own record alone)")
    detection_curve_refresh_s: float = Field(600.0, ge=0,
                                             description="How often an ingest worker learns the detection curve "
                                                         "again from the stored sightings and misses; 0 = never")
    detection_curve_days: float = Field(14.0, gt=0, le=365, description="The curve is learned from defects seen "
                                                                        "within this many days")
    blind_days: float = Field(7.0, gt=0, le=90, description="A box's misses since its last finding are counted "
                                                            "over at most this many days (problem "
                                                            "`finds_nothing`; judged with the detection curve)")
    blind_share: float = Field(0.5, gt=0, le=1, description="`finds_nothing` when the box's misses since its last "
                                                            "finding would be unlikely for a box finding this "
                                                            "share of what the fleet finds...")
    blind_chance: float = Field(0.001, gt=0, lt=1, description="...less likely than this")
    blind_min_defects: int = Field(5, ge=1, description="...and they were misses of at least this many defects "
                                                        "(one pothole by the kerb missed every day proves little)")
    footprint_half_width_m: float = Field(3.5, gt=0, description="Half width of the camera's view on the road "
                                                                 "when a coverage record does not say")
    miss_reach_m: float = Field(6.0, gt=0, le=100,
                                description="A pass counts as a miss only when its line comes this close to the "
                                            "defect (or the coverage record's footprint half width, when smaller): "
                                            "the footprint reaches the camera's view 20 m ahead, the detector finds "
                                            "defects near the vehicle's path")
    miss_same_way_deg: float = Field(60.0, ge=0, le=180,
                                     description="A pass counts as a miss only when some vehicle that went within "
                                                 "this many degrees of its way saw the defect, and weighs as much "
                                                 "as passes going that way find it (crossing streets are in view "
                                                 "but out of the detector's reach)")
    outlier_sigma: float = Field(3.0, gt=0, description="Sightings further than this many accuracies from the "
                                                        "mean are left out of a defect's position")
    max_sightings_for_position: int = Field(500, ge=10, description="Newest sightings used for the position")
    max_crack_turn_deg: float = Field(45.0, gt=0, le=90,
                                      description="A crack sighting joins a crack defect (and two crack defects "
                                                  "merge) only when their orientations differ by at most this, "
                                                  "degrees: a transverse crack across a longitudinal one is its own")
    max_line_m: float = Field(50.0, gt=0, le=500, description="How far along its line from a crack defect's centre "
                                                             "a sighting may join it, as the area a batch locks is "
                                                             "sized (joining itself measures the whole line)")
    lock_cell_m: float = Field(2000.0, ge=50, le=100_000,
                               description="Side of the map cells that concurrent batches lock before they aggregate "
                                           "(raised to twice the reach of one sighting, 3 x (max_gate_m + "
                                           "max_line_m), when smaller): batches in different cells do not wait "
                                           "for each other")
    max_area_locks: int = Field(1024, ge=8, le=8192,
                                description="Most cell locks one batch takes; a batch spread wider locks 16x16 "
                                            "coarser cells, then the whole map. Each lock takes a slot of "
                                            "PostgreSQL's shared lock table (max_locks_per_transaction x "
                                            "max_connections)")


class RetentionConfig(Section):
    sightings_months: int = Field(0, ge=0, le=1200,
                                  description="Monthly partitions of sightings wholly older than this many months "
                                              "(before the current one) are dropped by `fleet-server partitions`; "
                                              "0 keeps every sighting. A defect touched later is recounted from "
                                              "the sightings kept, so keep them longer than defects stay open")
    coverage_months: int = Field(0, ge=0, le=1200,
                                 description="The same for coverage (where and when each vehicle drove), and for "
                                             "the misses it caused (a vehicle's pass by a defect, with its time); "
                                             "0 keeps all")
    audit_days: float = Field(365, ge=0, description="API audit-log rows (who called what, from which address) "
                                                     "older than this are deleted; 0 keeps all")
    command_results_days: float = Field(90, ge=0, description="Boxes' answers to remote commands older than this "
                                                              "are deleted; 0 keeps all")
    premake_months: int = Field(3, ge=0, le=36, description="Monthly partitions made ahead of the current month")


class ApiConfig(Section):
    host: str = Field("127.0.0.1", description="HTTP listen address")
    port: int = Field(8080, gt=0, lt=65536, description="HTTP port")
    cors_origins: list[str] = Field([], description="Browser origins allowed to call the API (CORS); empty = none")
    rate_limit_per_hour: int = Field(100, ge=1, description="Accepted or duplicate POST /detections per device per "
                                                            "hour before 429 (refused ones, 400, do not count: "
                                                            "their dead letters have their own cap, "
                                                            "ingest.rejected_per_device_hour)")
    trusted_proxies: list[IPvAnyNetwork] = Field(
        [ip_network("127.0.0.1"), ip_network("::1")],
        description="Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For names the client: the "
                    "audit log and the failed-authentication throttle then see the client's address, not the "
                    "proxy's. A request from any other address is taken at its own address (the header would "
                    "be forged). List the ingress controller's or proxy's network, no wider")
    max_image_bytes: int = Field(6_000_000, ge=1024, le=20_000_000,
                                 description="Largest image_base64 (decoded) a phone may send with detections: a "
                                             "camera photo as the guide's SDKs send it; the server keeps a "
                                             "640 px JPEG thumbnail of it")
    unprojected_sigma_m: float = Field(10.0, ge=0, le=100,
                                       description="Added (in quadrature) to a phone's GPS accuracy: it reports "
                                                   "its own position, the defect lies somewhere ahead of it")
    device_token_days: int = Field(90, ge=1, description="Lifetime of a device's HTTP token (`device add`, "
                                                         "`token rotate`)")
    user_token_days: int = Field(365, ge=1, description="Default lifetime of a person's token (`token create`)")
    audit_flush_s: float = Field(0.5, gt=0, le=60, description="How often queued audit-log rows are written")
    page_size: int = Field(100, ge=1, le=5000, description="Default page size of list endpoints")
    max_page_size: int = Field(5000, ge=1, le=100000, description="Largest page a client may ask for")
    token_cache_s: float = Field(60.0, ge=0, description="Seconds a verified token's argon2 check is remembered "
                                                         "(revocation still takes effect at once)")
    max_body_bytes: int = Field(9_000_000, ge=1024, description="Larger request bodies are refused (413) before "
                                                                "they are read")
    compress_min_bytes: int = Field(1400, ge=0, description="Answers at least this long go gzip-compressed to "
                                                            "clients that accept it (JSON, GeoJSON, CSV, the "
                                                            "dashboard's files; not pictures or models); 0 = never")
    auth_failures_per_minute: int = Field(20, ge=1, description="Failed authentications one source address may make "
                                                                "per minute; then 429 with Retry-After for tokens "
                                                                "that cannot be valid (valid ones still get in). "
                                                                "Also the wrong secrets one token's lookup may come "
                                                                "with per minute, from anywhere, before it is 429 "
                                                                "too (its holder's remembered token still gets in)")
    max_concurrent_requests: int | None = Field(None, ge=1, le=1000,
                                                description="API requests (/api/, /v1/) in progress at once; the "
                                                            "rest wait their turn without holding a thread. Unset: "
                                                            "database.pool_max (each request may hold one "
                                                            "connection)")
    queue_wait_s: float = Field(10.0, gt=0, le=300, description="Longest wait for a turn; then 503 with "
                                                                "Retry-After")
    max_concurrent_verifications: int = Field(2, ge=1, description="argon2 token checks running at once (each takes "
                                                                   "~20 MB and a core for ~20 ms)")
    static_dir: Path | None = Field(None, description="Dashboard files served at /; the bundled one when empty")


class DashboardConfig(Section):
    tile_url: str | None = Field(None, description="Basemap tile URL template; ROADMON_TILE_URL or OpenStreetMap "
                                                   "when unset, empty for no basemap")
    tile_attribution: str | None = Field(None, description="Basemap attribution (HTML); OpenStreetMap's by default")
    tile_max_zoom: int | None = Field(None, ge=1, le=24, description="Deepest zoom of the basemap (19 by default)")


class ModelsConfig(SecretSection):
    dir: Path = Field(Path("/var/lib/fleet-server/models"), description="Folder of ONNX models offered to devices "
                                                                         "(<sha256>.onnx)")
    url_base: str = Field("", pattern=r"^(https?://[^?#\s]+)?$",
                          description="Public base URL devices fetch models from: the API's https address behind "
                                      "its TLS proxy. Required by `model push` (or its --url-base); an http:// one "
                                      "is refused by agents unless their model_update.allow_http is on (lab only)")
    url_secret_file: Path | None = Field(None, description="File holding the secret that signs model download links "
                                                           "(a systemd credential or a mounted secret); unset: one is "
                                                           "made on first use as <dir>/.url-secret, which every API "
                                                           "process sees through the models folder")
    max_size_mb: float = Field(500.0, gt=0, description="`model push` refuses a larger file (the agents refuse a "
                                                        "download over their model_update.max_size_mb, also 500)")


class MetricsConfig(SecretSection):
    token_file: Path | None = Field(None, description="File holding the bearer token a scraper must send for /metrics "
                                                      "(the API's and the ingest processes' --metrics-port): "
                                                      "Prometheus's authorization.credentials_file. Read at each "
                                                      "scrape, so a new token needs no restart. Unset: /metrics "
                                                      "answers anyone who can reach it (keep it off the Ingress)")

    def resolve_token(self) -> str | None:
        """The scrape token, None when /metrics is open; raises FileNotFoundError or ConfigError (an empty file)."""
        if self.token_file is None:
            return None
        token = self.read_secret(self.token_file)
        if not token:
            raise ConfigError("metrics", [f"metrics.token_file {self.token_file} is empty"])
        return token


class CommandsConfig(Section):
    expire_after_h: float = Field(24.0, gt=0, le=8760,
                                  description="Commands carry an expires_at this many hours after they are sent: an "
                                              "agent answers `expired` instead of acting on an older one (a push "
                                              "kept by the broker for a vehicle parked for a week). A model's "
                                              "signed download link lasts as long")


class ServerConfig(Section):
    database: DatabaseConfig = Field(default_factory=DatabaseConfig, description="PostGIS")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="The broker the ingest workers read")
    broker_files: BrokerFilesConfig = Field(default_factory=BrokerFilesConfig,
                                            description="Broker files written by device provisioning")
    devices: DevicesConfig = Field(default_factory=DevicesConfig, description="What vehicles are handed when they "
                                                                              "are provisioned")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="MQTT ingest workers")
    aggregate: AggregateConfig = Field(default_factory=AggregateConfig, description="Sightings -> defects")
    retention: RetentionConfig = Field(default_factory=RetentionConfig,
                                       description="Monthly partitions of sightings and coverage")
    api: ApiConfig = Field(default_factory=ApiConfig, description="HTTP API")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="Remote model updates")
    commands: CommandsConfig = Field(default_factory=CommandsConfig, description="Commands to devices")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Who may scrape the Prometheus metrics")
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig, description="The browser dashboard at /")

    @model_validator(mode="after")
    def _retention_keeps_what_ingest_accepts(self) -> ServerConfig:
        # An event inside the horizon but in a month retention had dropped was stored, acked to the box, and
        # deleted by the next `partitions` run: lost without a word (after February, even with the defaults' 30
        # days against 1 month).
        for key, months in (("sightings_months", self.retention.sightings_months),
                            ("coverage_months", self.retention.coverage_months)):
            if months and self.ingest.horizon_days > fewest_days_kept(months):
                raise ValueError(
                    f"ingest.horizon_days ({self.ingest.horizon_days:g}) is longer than retention.{key} ({months}) "
                    f"keeps at the least ({fewest_days_kept(months)} days, on the first of a month): events the "
                    f"ingest accepts would be deleted by the next `fleet-server partitions`; lower horizon_days to "
                    f"{fewest_days_kept(months)} or keep {months + 1} months")
        return self

    def find_secrets_beside(self, config_dir: Path) -> None:
        """Let relative secret names also be found in CONFIG_DIR/credentials (where the installer puts them)."""
        for section in (self.database, self.mqtt, self.models, self.metrics):
            section._config_dirs = (config_dir,)

    def share_group(self) -> str:
        """`ingest.share_group`, else one derived from the broker password (the same in every worker)."""
        if self.ingest.share_group == OLD_DEFAULT_GROUP:
            log.warning("ingest.share_group = %r is the old default, which any device can guess and join (the broker "
                        "then drops its turn of the fleet's messages): using the name derived from the broker "
                        "password instead; remove the line", OLD_DEFAULT_GROUP)
        elif self.ingest.share_group:
            return self.ingest.share_group
        password = self.mqtt.resolve_password()
        if not password:
            return "ingest"
        return "ingest-" + hashlib.sha256(b"roadmon share group\0" + password.encode()).hexdigest()[:16]


def fewest_days_kept(months: int) -> int:
    """Days back to the oldest day `retention` keeps MONTHS whole months before the current one, at its fewest: on
    the first of a month, the shortest run of MONTHS calendar months (February's 28 days for 1)."""
    firsts = [date(2025 + k // 12, k % 12 + 1, 1) for k in range(12 + months)]  # 2025-26: no leap day
    return min((firsts[k + months] - firsts[k]).days for k in range(12))


def parse(data: dict, source: Path | str = "<config>") -> ServerConfig:
    return validate(ServerConfig, data, source)


def load(path: Path | str | None) -> ServerConfig:
    """Read and validate a TOML config (defaults when PATH is None); raises ConfigError naming every bad key."""
    if path is None:
        return ServerConfig()
    cfg = load_toml(ServerConfig, path)
    cfg.find_secrets_beside(Path(path).absolute().parent)
    return cfg
