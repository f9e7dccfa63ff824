-- Where a merged defect went. Early sightings can start two defects for one pothole; aggregate.merge_neighbours
-- folds them into one and deletes the other. A work order, a bookmark or an analyst's table that names the
-- deleted id must still find the defect: the API answers that id with a redirect to the one that survived.
-- kept_id is always a defect that exists (a chain A -> B -> C is rewritten to A -> C when B is merged).
CREATE TABLE defect_merges (
    dropped_id bigint PRIMARY KEY,
    kept_id    bigint NOT NULL REFERENCES defects (id) ON DELETE CASCADE,
    merged_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX defect_merges_kept ON defect_merges (kept_id);
