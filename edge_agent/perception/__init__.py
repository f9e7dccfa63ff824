"""From boxes to defects on the map: `tracker` follows a defect over frames, `geolocate` projects boxes onto
the road and places them with the vehicle's pose, `events` builds the event messages, `coverage` records
which stretch of road the camera saw (for `likely_repaired` on the server).
May import: edge_agent.config, edge_agent.health, edge_agent.gnss (poses, motion), calibration,
roadmon_contract. Nothing else of the agent: it gets detections and poses handed in, it does not know where
they came from.
"""
