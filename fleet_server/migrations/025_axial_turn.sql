-- Degrees between two orientations taken as axes (0-90; 10 and 190 are one line), for crack sightings and lines:
-- a transverse crack crossing a longitudinal one joined it, and the defect's line turned across the road.
CREATE OR REPLACE FUNCTION roadmon_axial_turn(a float8, b float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT LEAST(t, 180 - t) FROM (SELECT abs(a - b) - 180 * floor(abs(a - b) / 180) AS t) s
$$;
