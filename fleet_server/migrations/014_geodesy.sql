-- The project's one Earth model (roadmon_contract/geodesy.py) in SQL: metres per degree of latitude and of
-- longitude on WGS84 at a latitude, for the aggregation's local east/north arithmetic. PostGIS geography
-- (also WGS84) measures distances; these serve where the aggregation needs east/north components.
CREATE OR REPLACE FUNCTION m_per_deg_lat(lat float8) RETURNS float8
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    RETURN 6378137.0 * (1 - 6.69437999014e-3) / power(1 - 6.69437999014e-3 * sin(radians(lat)) ^ 2, 1.5)
           * pi() / 180;

CREATE OR REPLACE FUNCTION m_per_deg_lon(lat float8) RETURNS float8
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    RETURN GREATEST(6378137.0 / sqrt(1 - 6.69437999014e-3 * sin(radians(lat)) ^ 2) * cos(radians(lat)), 1.0)
           * pi() / 180;
