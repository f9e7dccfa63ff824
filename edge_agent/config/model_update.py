"""Remote model update settings (owned by edge_agent/detect/model_update.py)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from roadmon_contract.config_base import Section


class ModelUpdateConfig(Section):
    enabled: bool = Field(True, description="Accept cmd/model-update from the fleet server")
    models_dir: str = Field(
        "", description="Where models live (current.onnx -> <sha256>.onnx, previous.onnx); "
                        "empty: <device.state_dir>/models; a relative path is taken beside the config file")
    ca_file: str | None = Field(
        None, description="PEM CA bundle that signs the fleet server's HTTPS certificate (None: system CAs); a "
                          "relative path is taken beside the config file")
    public_key: str | None = Field(
        None, description="Ed25519 public key (PEM file path, or the PEM text) that must have signed every model; "
                          "when set, an update without a valid signature is refused; a relative path is taken "
                          "beside the config file")
    url_prefix: str = Field(
        "", description="Only download from URLs starting with this, e.g. 'https://fleet.example.org/api/v1/models/' "
                        "(empty: any https URL)")
    @field_validator("url_prefix")
    @classmethod
    def _a_whole_folder(cls, value: str) -> str:
        # A text prefix without its host's end and a folder's "/" let https://fleet.example.org.evil.net/ and
        # https://fleet.example.org@evil.net/ through.
        parts = urlsplit(value)
        if value and (parts.scheme not in ("https", "http") or not parts.hostname or "@" in parts.netloc
                      or not parts.path.endswith("/") or parts.query or parts.fragment):
            raise ValueError(f"{value!r} must be an https URL of a folder on one host, ending in '/', e.g. "
                             "'https://fleet.example.org/api/v1/models/'")
        return value

    allow_http: bool = Field(False, description="Allow plain http:// downloads (never in the field; for lab setups)")
    max_size_mb: float = Field(500, gt=0, description="Refuse a download larger than this, MB")
    timeout_s: float = Field(30, gt=0, le=600, description="Network timeout per connect/read, seconds")
    attempts: int = Field(
        4, ge=1, le=20, description="Download attempts; each resumes where the last one broke off (HTTP Range)")
    keep: int = Field(3, ge=2, le=20, description="Model files kept on disk (current, previous and older)")
