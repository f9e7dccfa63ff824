-- Cracks are lines (issue 11): a sighting that says its long axis (size_m.orientation_deg) keeps it as a
-- segment through its position, and a defect made of such sightings keeps the line they span. Point defects
-- (potholes) leave both NULL.
ALTER TABLE sightings ADD COLUMN axis geography(LineString, 4326);
ALTER TABLE defects ADD COLUMN line geography(LineString, 4326);
CREATE INDEX defects_line_gist ON defects USING gist (line);
