-- Misses judged by the way the vehicle went (issue 15).
--
-- Most defects on a two-lane street are seen from both lanes, some only from one: a pass counts as a miss when
-- some vehicle going its way (within aggregate.miss_same_way_deg) has seen the defect, and how much it proves
-- depends on how often vehicles going that way find it. So a miss keeps the bearing of its pass.
ALTER TABLE defect_misses ADD COLUMN bearing_deg real;

-- Whether bearings A and B (degrees) differ by at most TOL degrees; an unknown one matches every way.
CREATE FUNCTION roadmon_same_way(a double precision, b double precision, tol double precision)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT a IS NULL OR b IS NULL OR abs(mod((a - b + 540)::numeric, 360) - 180) <= tol
$$;

-- How likely the misses of DEFECT since LAST_SEEN are while it is still there: the product, over those misses,
-- of the chance that a pass going that miss's way misses it, judged from the passes going that way that saw it
-- and those that missed it before LAST_SEEN (Laplace: one unseen miss more). A pass is one device's sightings
-- with no gap longer than GAP; its way is its first sighting's heading. A defect every northbound pass finds is
-- repaired after 2 northbound misses; southbound passes that find it one time in three prove little each.
CREATE FUNCTION roadmon_still_there_chance(defect bigint, last_seen timestamptz, tol double precision,
                                           gap interval)
RETURNS double precision LANGUAGE sql STABLE AS $$
    WITH s AS (
        SELECT heading_deg,
               captured_at - lag(captured_at) OVER (PARTITION BY device_id ORDER BY captured_at) AS since
        FROM sightings WHERE defect_id = defect
    ), passes AS (SELECT heading_deg FROM s WHERE since IS NULL OR since > gap),
    m AS (SELECT bearing_deg, started_at > last_seen AS after FROM defect_misses WHERE defect_id = defect),
    judged AS (
        SELECT (SELECT count(*) FROM passes p WHERE roadmon_same_way(p.heading_deg, a.bearing_deg, tol))::float8
                   AS found,
               (SELECT count(*) FROM m b WHERE NOT b.after AND roadmon_same_way(b.bearing_deg, a.bearing_deg, tol))
                   AS missed
        FROM m a WHERE a.after
    )
    SELECT exp(coalesce(sum(ln(greatest(1 - found / (found + missed + 1), 1e-9))), 0)) FROM judged
$$;
