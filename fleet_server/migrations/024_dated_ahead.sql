-- How far ahead of their arrival a device's newest future-dated sightings were, and when: a phone whose clock
-- (or time zone) was 11 h ahead posted sightings the server took (up to ingest.future_tolerance_s ahead) without
-- a word anywhere; a box says its clock in its status, a phone sends no status. Written only for such batches.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS dated_ahead_s real;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS dated_ahead_at timestamptz;
