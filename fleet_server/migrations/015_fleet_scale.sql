-- Fleet scale (issue 15).
--
-- 1. Device groups, written by `fleet-server device import`.
ALTER TABLE devices ADD COLUMN groups text[] NOT NULL DEFAULT '{}';

-- 2. The two tables that grow with the fleet, `sightings` and `coverage`, partitioned by month, natively.
-- The partition key is the row's own id: event_id and coverage_id are UUIDv7 (the contract's schemas insist),
-- whose first 48 bits are the Unix time in ms at which the vehicle made them. So the primary key stays the id
-- alone (a partitioned table's unique keys must contain the partition key), every ON CONFLICT (event_id) /
-- (coverage_id) stays as it was, and the id stays unique across all months. A month is the id range from
-- the month's first millisecond (UTC) to the next month's. Ids outside every monthly partition (a box whose
-- clock was wrong when it made them, or rows seeded with random UUIDs) land in the DEFAULT partition; making a
-- month's partition moves its rows out of it first. Retention drops whole months (`fleet-server partitions`).

-- The first id of the millisecond T (its UUIDv7 prefix, the rest zero).
CREATE FUNCTION roadmon_uuid7_floor(t timestamptz) RETURNS uuid LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT (lpad(to_hex(floor(extract(epoch FROM t) * 1000)::bigint), 12, '0') || repeat('0', 20))::uuid
$$;

-- The time an id was made (UUIDv7), or NULL for ids of another version.
CREATE FUNCTION roadmon_uuid7_time(id uuid) RETURNS timestamptz LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE WHEN substr(id::text, 15, 1) = '7'
                THEN to_timestamp(('x' || substr(replace(id::text, '-', ''), 1, 12))::bit(48)::bigint / 1000.0)
           END
$$;

-- Create PARENT's partition for the month starting at MONTH (UTC), named <parent>_pYYYY_MM, unless it exists;
-- rows of that month already in the default partition move into it. Returns whether it was created.
CREATE FUNCTION roadmon_create_month_partition(parent text, month date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    name text := format('%s_p%s', parent, to_char(month, 'YYYY_MM'));
    key text := CASE parent WHEN 'sightings' THEN 'event_id' WHEN 'coverage' THEN 'coverage_id' END;
    lo uuid := roadmon_uuid7_floor(month::timestamp AT TIME ZONE 'UTC');
    hi uuid := roadmon_uuid7_floor((month + interval '1 month')::timestamp AT TIME ZONE 'UTC');
BEGIN
    IF key IS NULL THEN
        RAISE EXCEPTION 'not a partitioned table of road-monitor: %', parent;
    END IF;
    -- Every ingest worker makes the coming months: one at a time (until this transaction ends).
    PERFORM pg_advisory_xact_lock(hashtext('roadmon_create_month_partition'));
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    -- Attach rather than CREATE ... PARTITION OF: the latter fails when the default partition holds rows of
    -- the month, and attaching after moving them works in every case.
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name, parent);
    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *) '
                   'INSERT INTO %I SELECT * FROM moved', parent || '_pdefault', key, lo, key, hi, name);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', parent, name, lo, hi);
    RETURN true;
END
$$;

-- sightings: a new partitioned table with the same columns, the rows copied, then the keys and indexes.
ALTER TABLE sightings RENAME TO sightings_unpartitioned;
CREATE TABLE sightings (LIKE sightings_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (event_id);
CREATE TABLE sightings_pdefault PARTITION OF sightings DEFAULT;

-- coverage likewise. defect_misses keeps coverage_id without a foreign key: a miss carries the device and
-- times it needs, and a month of coverage must be droppable without first deleting the misses it explains.
ALTER TABLE defect_misses DROP CONSTRAINT defect_misses_coverage_id_fkey;
ALTER TABLE coverage RENAME TO coverage_unpartitioned;
CREATE TABLE coverage (LIKE coverage_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (coverage_id);
CREATE TABLE coverage_pdefault PARTITION OF coverage DEFAULT;

-- Months from the oldest stored row (by its id's time) to three months ahead.
DO $$
DECLARE
    oldest timestamptz;
    m date;
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sightings', 'coverage'] LOOP
        EXECUTE format('SELECT min(roadmon_uuid7_time(%I)) FROM %I',
                       CASE t WHEN 'sightings' THEN 'event_id' ELSE 'coverage_id' END, t || '_unpartitioned')
            INTO oldest;
        m := date_trunc('month', least(coalesce(oldest, now()), now()) AT TIME ZONE 'UTC');
        WHILE m <= date_trunc('month', now() AT TIME ZONE 'UTC') + interval '3 months' LOOP
            PERFORM roadmon_create_month_partition(t, m);
            m := m + interval '1 month';
        END LOOP;
    END LOOP;
END
$$;

INSERT INTO sightings SELECT * FROM sightings_unpartitioned;
INSERT INTO coverage SELECT * FROM coverage_unpartitioned;
DROP TABLE sightings_unpartitioned;
DROP TABLE coverage_unpartitioned;

-- Keys and indexes once the rows are in (faster than keeping them up row by row), with the names they had.
ALTER TABLE sightings ADD CONSTRAINT sightings_pkey PRIMARY KEY (event_id);
ALTER TABLE sightings ADD CONSTRAINT sightings_defect_id_fkey FOREIGN KEY (defect_id) REFERENCES defects (id)
    ON DELETE SET NULL;
CREATE INDEX sightings_geog_gist ON sightings USING gist (geom);
CREATE INDEX sightings_defect ON sightings (defect_id, captured_at);
CREATE INDEX sightings_device_time ON sightings (device_id, captured_at);

ALTER TABLE coverage ADD CONSTRAINT coverage_pkey PRIMARY KEY (coverage_id);
CREATE INDEX coverage_line_gist ON coverage USING gist (line);
CREATE INDEX coverage_line_geom_gist ON coverage USING gist ((line::geometry));
CREATE INDEX coverage_time ON coverage (ended_at);
