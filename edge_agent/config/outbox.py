"""Outbox settings (owned by the outbox module)."""

from __future__ import annotations

from pydantic import Field

from edge_agent.config.base import Section


class OutboxConfig(Section):
    budget_mb: float = Field(512, gt=0, description="Most disk the outbox may use, MB")
