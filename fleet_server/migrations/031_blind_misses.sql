-- The misses of a box while it was named as finding nothing (fleet_server/blind_boxes.py), marked for good: they
-- prove nothing about the defects after the box is fixed or revoked either (its verdict is then cleared, and
-- repair_odds counted them again, flagging the potholes it had been blind to `likely_repaired`).
ALTER TABLE defect_misses ADD COLUMN IF NOT EXISTS blind boolean NOT NULL DEFAULT false;
