-- Dead letters are capped per device per hour (fleet_server/store.py: store_rejected counts them here).
CREATE INDEX rejected_device_time ON rejected (device_id, received_at);
