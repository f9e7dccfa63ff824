"""MQTT uplink settings (owned by the uplink module). Secrets are read from files, never from the config
itself or the command line; a relative file name is looked up in systemd's $CREDENTIALS_DIRECTORY
(LoadCredential=) when that holds it, else beside the config file (edge_agent/config/paths.py)."""

from __future__ import annotations

from pydantic import Field, model_validator

from roadmon_contract.config_base import Section


class UplinkConfig(Section):
    enabled: bool = Field(True, description="Drain the outbox to the broker; false keeps everything on disk")
    host: str = Field("localhost", description="Broker host name")
    port: int = Field(8883, gt=0, lt=65536, description="Broker port (8883 = MQTT over TLS)")
    tls: bool = Field(True, description="Use TLS; false only for a broker on loopback or in a test")
    ca_file: str | None = Field(None, description="CA bundle that signed the broker's certificate (PEM); unset = "
                                                  "the system's CAs; relative: in $CREDENTIALS_DIRECTORY, else "
                                                  "beside the config file")
    cert_file: str | None = Field(None, description="Client certificate (PEM) for certificate login; relative: "
                                                    "in $CREDENTIALS_DIRECTORY, else beside the config file")
    key_file: str | None = Field(None, description="Private key of cert_file (PEM); relative: in "
                                                   "$CREDENTIALS_DIRECTORY, else beside the config file")
    username: str | None = Field(None, description="MQTT user name; unset = the device id")
    password_file: str | None = Field("mqtt-password",
                                      description="File holding the MQTT password (first line); unset for "
                                                  "certificate-only login; relative: in $CREDENTIALS_DIRECTORY, "
                                                  "else beside the config file")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive, seconds")
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0,
                                  description="How long the broker keeps this device's session (its "
                                              "subscriptions and queued acks/commands) while it is offline, s")
    connect_timeout_s: float = Field(10, gt=0, description="Wait this long for the broker's CONNACK, s")
    window: int = Field(1000, ge=1, le=20000,
                        description="Most messages sent but not yet confirmed by the server at any time; the "
                                    "window starts at window_initial and grows as acks return (link/flow.py)")
    window_initial: int = Field(10, ge=1, le=20000,
                                description="In-flight window at connect; doubles per round trip up to window, "
                                            "halves when acks time out")
    batch: int = Field(200, ge=1, le=5000, description="Rows read from the outbox per drain step")
    ack_timeout_s: float = Field(60, gt=0,
                                 description="Shortest wait for the server's confirmation before a row is sent "
                                             "again, s; it grows with the measured ack latency and doubles after "
                                             "each timeout (link/flow.py)")
    adaptive: bool = Field(True, description="Adapt the in-flight window and the ack timeout to the server's ack "
                                             "latency; false keeps a fixed window and a fixed ack_timeout_s")
    ack_timeout_max_s: float = Field(1800, gt=0,
                                     description="Longest wait for the server's confirmation before a row is sent "
                                                 "again, s (a server draining a fleet-wide backlog)")
    backoff_initial_s: float = Field(1, gt=0, description="First reconnect delay, s (doubles, with jitter)")
    backoff_max_s: float = Field(60, gt=0, description="Longest reconnect delay, s")
    auth_retry_s: float = Field(300, gt=0,
                                description="After bad credentials or not-authorised, wait this long before "
                                            "trying again, s (never hammer a broker that said no)")
    heartbeat_s: float = Field(30, gt=0, description="Publish the retained status heartbeat every N seconds")
    status_file: str = Field("agent-status.json",
                             description="Status snapshot for `edge-agent status`, written in device.state_dir")

    @model_validator(mode="after")
    def _timeouts_in_order(self) -> UplinkConfig:
        if self.ack_timeout_max_s < self.ack_timeout_s:
            raise ValueError("ack_timeout_max_s must be at least ack_timeout_s")
        return self

    @model_validator(mode="after")
    def _key_with_cert(self) -> UplinkConfig:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self
