-- Boxes that drive past defects the rest of the fleet finds and report none of them (fleet_server/blind_boxes.py):
-- the last judgement of each, NULL while it finds what it should. Written by the ingest worker that learns the
-- detection curve, read by the devices API, `device ls` and the road_device_problems metric.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS finds_nothing jsonb;

-- A box's misses since its last finding, by device and time (the misses had only their defect's key).
CREATE INDEX IF NOT EXISTS defect_misses_device_time ON defect_misses (device_id, started_at);
