-- Which defects table this database was migrated beside. A restore from pg_dump creates every table anew (another
-- oid) and brings this row along with the old value, so `fleet-server migrate` can tell a restored database from
-- the one it was made as and move ids past those the lost rows had: an operator who forgot
-- `migrate --after-restore` got defect ids that work orders name for other potholes, and nothing said so.
-- NULL: not known yet (a database from before this migration, or a dump of one); the next migrate fills it in.
CREATE TABLE database_origin (
    one           boolean PRIMARY KEY DEFAULT true CHECK (one),
    defects_table oid,
    marked_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO database_origin (defects_table) VALUES (NULL);
