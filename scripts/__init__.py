"""Project scripts: the local services (PostGIS, Mosquitto) and the demo. Run as `python -m scripts.NAME`."""
