-- A line defect's bearing, degrees clockwise from north, from its first point to its last: one definition for
-- joining a crack sighting to a crack defect and for merging two.
CREATE OR REPLACE FUNCTION roadmon_line_bearing(line geography) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT degrees(ST_Azimuth(ST_StartPoint(line::geometry)::geography, ST_EndPoint(line::geometry)::geography))
$$;
