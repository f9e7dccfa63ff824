"""The server's TOML config: the bundled example is valid, bad keys are named, secrets come from files/env."""

from __future__ import annotations

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
