-- A defect's extent, its line (a crack) or else its point, indexed as the queries name it: coalesce(line, geom).
--
-- Misses (aggregate.RECORD_MISSES), merging neighbours and matching a sighting all ask for defects within some
-- metres of coalesce(line, geom). Without an index on that expression the misses of each coverage record read
-- every open defect: 8.5 ms a record on a map of 10,000 defects (and ten times that at 100,000), twelve times
-- what an event costs, so a fleet's coverage records, one a minute per vehicle, took most of the database's CPU
-- (bench/bench_steady.py: acks 30 s late at 10,000 vehicles). With it: 0.5 ms.
CREATE INDEX defects_extent_gist ON defects USING gist ((coalesce(line, geom)));
