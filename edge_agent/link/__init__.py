"""Store and forward: `outbox` keeps every event and coverage record in SQLite until the server acknowledges
it (`outbox_schema` for its tables and their migrations, `outbox_file` for opening its file, telling a refusing
disk from a damaged file, and moving a damaged one aside), `disk_guard` keeps the disk from filling, `uplink`
sends over MQTT 5 (`mqtt_tls` for its TLS settings), `command_desk` carries out the server's commands for it and
keeps their answers until the server acks them, `heartbeat` publishes the device status, `broker_probe` checks a
broker for the doctor.
May import: edge_agent.config, edge_agent.health, edge_agent.durable (unanswered command results kept across a power
cut), roadmon_contract. Nothing else of the agent.
"""
