-- A role narrower than viewer: the map of defects without the vehicles (who drove where and when: personal data).
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('map', 'viewer', 'manager', 'admin', 'device'));
