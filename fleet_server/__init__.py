"""Fleet server: MQTT ingest into PostGIS, defect aggregation, HTTP API and dashboard."""

__version__ = "0.3.0"
