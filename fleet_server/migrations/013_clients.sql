-- Phones and third-party clients: token expiry and rotation, and an audit log of authenticated API calls.
-- (Numbered after its issue so that migrations written in parallel do not take the same number.)

ALTER TABLE api_tokens ADD COLUMN expires_at timestamptz;
ALTER TABLE api_tokens ADD COLUMN replaced_by bigint REFERENCES api_tokens (id);

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    token_id    bigint REFERENCES api_tokens (id) ON DELETE SET NULL,
    who         text NOT NULL,          -- the token's name, or 'anonymous' / 'invalid token'
    role        text,
    method      text NOT NULL,
    path        text NOT NULL,
    status      integer NOT NULL,
    client      text                    -- the peer address
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_who ON audit_log (who, at);
