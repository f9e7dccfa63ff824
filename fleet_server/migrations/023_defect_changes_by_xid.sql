-- What changed since an earlier answer (GET /api/v1/defects?since_token=...): a dashboard with a city's 100,000
-- defects open fetched all of them every 30 s (~50 MB a tab).
--
-- This replaces 022's time stamps. (For a while 022 itself was edited to say what this file says, so a server
-- that had applied the first 022 never got these columns and answered since_token with 500: every statement
-- here tolerates a database that ran either 022. A released migration is never edited again: migrate refuses
-- a file that differs from what it applied.)
--
-- Changes are marked with the id of the transaction that wrote them (xid8: 64 bits, never wraps), not a time:
-- a time is the transaction's start, so a write that waited on a lock for longer than any margin committed
-- with a stamp older than the copy's last answer and was never seen (an outside test, with a session holding a
-- defect's row for 90 s). An answer's sync_token is the oldest transaction still running when it was read
-- (pg_snapshot_xmin): whatever it could not see has an id at or above it.
--
-- Existing rows keep NULL: a copy that holds them loaded them whole. Nullable columns with a default added
-- separately rewrite nothing (a volatile default in ADD COLUMN would rewrite a year of coverage).
DROP TRIGGER IF EXISTS defects_stamp_change ON defects;
DROP FUNCTION IF EXISTS defects_stamp_change();
DROP INDEX IF EXISTS defects_updated_at;
DROP INDEX IF EXISTS defect_merges_merged_at;
DROP INDEX IF EXISTS coverage_stored_at;
ALTER TABLE coverage DROP COLUMN IF EXISTS stored_at;

ALTER TABLE defects ADD COLUMN IF NOT EXISTS change_xid xid8;
ALTER TABLE defects ALTER COLUMN change_xid SET DEFAULT pg_current_xact_id();

-- Every write that changes a defect is marked, whichever statement makes it (the miss recount and several
-- status paths set no stamp of their own); a write that changes nothing (a recount to the same number) is not.
-- Rows compare as text: geography's `=` need not see a small move.
CREATE OR REPLACE FUNCTION defects_mark_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.change_xid := pg_current_xact_id();
    NEW.updated_at := now();
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS defects_mark_change ON defects;
CREATE TRIGGER defects_mark_change BEFORE UPDATE ON defects FOR EACH ROW
    WHEN (OLD::text IS DISTINCT FROM NEW::text) EXECUTE FUNCTION defects_mark_change();
CREATE INDEX IF NOT EXISTS defects_change_xid ON defects (change_xid);

-- Defects leave the map only by a merge (aggregate._fold): a changes answer lists those from here.
ALTER TABLE defect_merges ADD COLUMN IF NOT EXISTS merged_xid xid8;
ALTER TABLE defect_merges ALTER COLUMN merged_xid SET DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS defect_merges_merged_xid ON defect_merges (merged_xid);

-- Coverage never changes once stored, but arrives late (a van offline for a day sends yesterday's drive).
ALTER TABLE coverage ADD COLUMN IF NOT EXISTS stored_xid xid8;
ALTER TABLE coverage ALTER COLUMN stored_xid SET DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS coverage_stored_xid ON coverage (stored_xid);
