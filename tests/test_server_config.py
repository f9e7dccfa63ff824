"""The server's TOML config: the bundled example is valid, bad keys are named, secrets come from files/env."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleet_server import config
from fleet_server.cli import app


def test_example_is_valid_and_documents_every_section() -> None:
    cfg = config.load(config.EXAMPLE)
    text = config.EXAMPLE.read_text()
    for name in config.ServerConfig.model_fields:
        assert f"[{name}]" in text, name
    assert cfg.ingest.batch_size == 5000 and cfg.api.rate_limit_per_hour == 100
    from tests.example_keys import undocumented

    assert undocumented(config.ServerConfig, text) == []  # docs/server.md: "every key with its default"


def test_every_field_has_a_description() -> None:
    def walk(model: type) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, config.Section):
                walk(sub)

    walk(config.ServerConfig)


def test_bad_keys_are_named(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[ingest]\nbatch_sise = 3\n[api]\nport = -1\n[nope]\nx = 1\n')
    with pytest.raises(config.ConfigError) as info:
        config.load(bad)
    joined = "\n".join(info.value.problems)
    assert "ingest.batch_sise" in joined and "api.port" in joined and "nope" in joined
    result = CliRunner().invoke(app, ["-c", str(bad), "migrate"])
    assert result.exit_code == 1 and "ingest.batch_sise" in result.output


def test_secrets_from_files_env_and_credentials_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(config.DSN_ENV, raising=False)
    with pytest.raises(config.ConfigError):
        config.DatabaseConfig().resolve_dsn()
    monkeypatch.setenv(config.DSN_ENV, "postgresql://from-env/db")
    assert config.DatabaseConfig().resolve_dsn() == "postgresql://from-env/db"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "database-dsn").write_text("postgresql://from-credential/db\n")
    (creds / "mqtt-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = config.parse({"database": {"dsn_file": "database-dsn"}, "mqtt": {"password_file": "mqtt-password"}})
    assert cfg.database.resolve_dsn() == "postgresql://from-credential/db"
    assert cfg.mqtt.resolve_password() == "s3cret"


def test_relative_secrets_are_found_beside_the_config_from_a_root_shell(tmp_path, monkeypatch) -> None:
    """The installer's server.toml names systemd credentials (dsn_file = "database-dsn"); run from a shell there
    is no $CREDENTIALS_DIRECTORY, so <config dir>/credentials/ (where install.sh keeps them) is looked in."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    etc = tmp_path / "etc" / "fleet-server"
    (etc / "credentials").mkdir(parents=True)
    (etc / "credentials" / "database-dsn").write_text("postgresql://beside/db\n")
    (etc / "server.toml").write_text('[database]\ndsn_file = "database-dsn"\n'
                                     '[mqtt]\npassword_file = "mqtt-password"\n')
    cfg = config.load(etc / "server.toml")
    assert cfg.database.resolve_dsn() == "postgresql://beside/db"
    with pytest.raises(FileNotFoundError) as missing:
        cfg.mqtt.resolve_password()
    looked = missing.value.strerror
    assert str(etc / "credentials" / "mqtt-password") in looked and str(tmp_path / "mqtt-password") in looked
    assert "$CREDENTIALS_DIRECTORY is not set" in looked and missing.value.filename == "mqtt-password"
    # Under the unit, $CREDENTIALS_DIRECTORY comes first.
    creds = tmp_path / "run-credentials"
    creds.mkdir()
    (creds / "database-dsn").write_text("postgresql://from-unit/db")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert cfg.database.resolve_dsn() == "postgresql://from-unit/db"
    assert config.secret_places(Path("mqtt-password"), (etc,))[:2] == [creds / "mqtt-password",
                                                                        etc / "credentials" / "mqtt-password"]


def test_missing_credential_from_the_cli_names_where_it_looked(tmp_path) -> None:
    etc = tmp_path / "fleet-server"
    (etc / "credentials").mkdir(parents=True)
    (etc / "server.toml").write_text('[database]\ndsn_file = "database-dsn"\n')
    environ = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", config.DSN_ENV)}
    done = subprocess.run([sys.executable, "-m", "fleet_server", "-c", str(etc / "server.toml"), "device", "ls"],
                          env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "database-dsn" in done.stderr and str(etc / "credentials" / "database-dsn") in done.stderr


@pytest.mark.parametrize(("broker", "address"), [(None, ("10.0.0.5", 1883, False)),
                                                 ("mqtt.example.org", ("mqtt.example.org", 8883, True)),
                                                 ("mqtt.example.org:18883", ("mqtt.example.org", 18883, True))])
def test_vehicles_are_handed_the_public_broker(broker, address) -> None:
    cfg = config.parse({"mqtt": {"host": "10.0.0.5"}, "devices": {"broker": broker}} if broker else
                       {"mqtt": {"host": "10.0.0.5"}})
    assert cfg.devices.vehicle_address(cfg.mqtt) == address


@pytest.mark.parametrize("bad", ["mqtts://mqtt.example.org", "mqtt.example.org:99999", "host name", "h:"])
def test_public_broker_must_be_host_and_port(bad: str) -> None:
    with pytest.raises(config.ConfigError, match=r"devices\.broker"):
        config.parse({"devices": {"broker": bad}})
