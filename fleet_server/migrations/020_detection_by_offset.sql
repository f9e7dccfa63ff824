-- Misses judged with the fleet's detection rate by offset beside the path (issue 15; fleet_server/repair_odds.py).
--
-- How often the fleet's passes find a defect of a class lying so far beside their path, learned from the
-- server's own sightings and misses and rewritten by the ingest workers every aggregate.detection_curve_refresh_s.
CREATE TABLE detection_by_offset (
    class        text NOT NULL,
    offset_bin   integer NOT NULL,   -- floor(offset / bin_m)
    bin_m        real NOT NULL,
    found        bigint NOT NULL,
    passes       bigint NOT NULL,
    refreshed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (class, offset_bin)
);

-- The chance of a defect's misses is computed in Python now (repair_odds.still_there_chance), with the curve.
DROP FUNCTION roadmon_still_there_chance(bigint, timestamptz, double precision, interval);
