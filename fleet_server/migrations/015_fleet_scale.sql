-- Fleet scale (issue 15): device groups for bulk provisioning (`fleet-server device import`).
ALTER TABLE devices ADD COLUMN groups text[] NOT NULL DEFAULT '{}';
