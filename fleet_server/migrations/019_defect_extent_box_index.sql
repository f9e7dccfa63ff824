-- The list's bbox filter meets a defect's extent (a crack's line, else its point) as a planar box test: a crack
-- whose line reaches into the box is in it, though its point is not. Indexed as the filter names it.
CREATE INDEX defects_extent_box_gist ON defects USING gist ((coalesce(line, geom)::geometry));
