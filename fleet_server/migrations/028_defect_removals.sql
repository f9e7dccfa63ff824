-- Defects deleted outright, not merged: `fleet-server device erase` deletes the defects only the erased device saw
-- (their position and times are where and when it was). A copy kept in step with sync_token must drop them as it
-- drops merged ones (api_defects.removed_since).
CREATE TABLE defect_removals (
    defect_id   bigint PRIMARY KEY,
    removed_xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX defect_removals_xid ON defect_removals (removed_xid);
