-- What a likely_repaired flag rests on, and a manager's word that a defect is there (issue 15; docs/server.md).
--
-- checked_at: when a manager last set the defect `new` or `confirmed` (on site: it is there). Misses before it
--   no longer count towards a repair, as misses before the last sighting do not.
-- flag_misses_from: when the first of the misses that made it `likely_repaired` began. Only a sighting captured
--   after that takes the flag back; an old sighting uploaded late, or a curve learned again, does not.
ALTER TABLE defects ADD COLUMN checked_at timestamptz, ADD COLUMN flag_misses_from timestamptz;

-- The bin width is compared with the configured one: a real (4 bytes) read back 0.3 as 0.300000012.
ALTER TABLE detection_by_offset ALTER COLUMN bin_m TYPE double precision;
