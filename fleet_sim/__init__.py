"""Fleet simulator: many vehicles over simulated days, without rendering video.

A city road network (`network`), a defect field that evolves day by day (`defects`), vehicles on routes and
shifts (`vehicles`), the receiver's wandering GNSS error (`gnss`, the drift model of edge_agent.lab.sim.gnss_noise),
a per-pass detection model calibrated on the real pipeline's replays of rendered drives (`detection`,
constants and their sources in `calibration`), the agent's messages (`messages`), its outbox semantics
(`outbox`) over per-device MQTT 5 logins (`client`), and the map-quality measures (`metrics`). `world` puts the
simulated side together; `runner` drives it against a real fleet server. See docs/fleet_sim.md.
"""
