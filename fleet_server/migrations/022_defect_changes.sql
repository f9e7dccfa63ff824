-- What changed since a time (GET /api/v1/defects?changed_since=...): a dashboard with a city's 100,000 defects
-- open fetched all of them every 30 s (~100 MB a tab). updated_at is now stamped by the database on every write
-- that changes a defect, whichever statement makes it (the miss count and several status paths did not set it);
-- a write that changes nothing (the miss count recounted to the same number) leaves it alone. Rows compare as
-- text: geography's `=` compares bounding boxes, so a small move of a defect would not count as a change.
CREATE FUNCTION defects_stamp_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER defects_stamp_change BEFORE UPDATE ON defects FOR EACH ROW
    WHEN (OLD::text IS DISTINCT FROM NEW::text) EXECUTE FUNCTION defects_stamp_change();

CREATE INDEX defects_updated_at ON defects (updated_at);
-- Defects leave the map only by a merge (aggregate._fold): the changes list them from here.
CREATE INDEX defect_merges_merged_at ON defect_merges (merged_at);

-- Coverage never changes once stored, but arrives late (a van offline for a day sends yesterday's drive): what
-- is new since a time is what was stored since, by the database's clock (received_at is the ingest worker's).
-- now() is evaluated once here, so the column is added without rewriting a year of coverage.
ALTER TABLE coverage ADD COLUMN stored_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX coverage_stored_at ON coverage (stored_at);
