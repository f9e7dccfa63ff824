"""road-monitor vehicle agent: camera + GNSS + detector -> geolocated defect events -> outbox -> MQTT."""

__version__ = "0.2.0"
