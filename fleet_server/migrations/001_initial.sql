-- road-monitor fleet server: initial schema. Positions are geography(Point, 4326) (metres in ST_DWithin);
-- the GiST index on the geometry cast serves bounding-box map queries.
CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE devices (
    id              text PRIMARY KEY,
    name            text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    last_seen       timestamptz,
    state           text NOT NULL DEFAULT 'unknown',
    state_at        timestamptz,
    queue_depth     integer,
    inference_ms    real,
    last_fix        jsonb,
    last_status     jsonb,
    last_seq        bigint
);

CREATE TABLE api_tokens (
    id          bigserial PRIMARY KEY,
    lookup      text NOT NULL UNIQUE,
    token_hash  text NOT NULL,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('viewer', 'manager', 'admin', 'device')),
    device_id   text REFERENCES devices (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK ((role = 'device') = (device_id IS NOT NULL))
);

CREATE TABLE defects (
    id                bigserial PRIMARY KEY,
    class             text NOT NULL,
    geom              geography(Point, 4326) NOT NULL,
    h_accuracy_m      real,
    first_seen        timestamptz NOT NULL,
    last_seen         timestamptz NOT NULL,
    sighting_count    integer NOT NULL DEFAULT 0,
    vehicle_count     integer NOT NULL DEFAULT 0,
    pass_count        integer NOT NULL DEFAULT 0,
    miss_count        integer NOT NULL DEFAULT 0,
    severity          real,
    confidence        real,
    size_width_m      real,
    size_length_m     real,
    status            text NOT NULL DEFAULT 'new'
                      CHECK (status IN ('new', 'confirmed', 'scheduled', 'likely_repaired', 'repaired', 'dismissed')),
    status_changed_at timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX defects_geog_gist ON defects USING gist (geom);
CREATE INDEX defects_geom_gist ON defects USING gist ((geom::geometry));
CREATE INDEX defects_last_seen ON defects (last_seen);
CREATE INDEX defects_status ON defects (status);

CREATE TABLE sightings (
    event_id        uuid PRIMARY KEY,
    device_id       text NOT NULL,
    seq             bigint NOT NULL,
    captured_at     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    source          text NOT NULL DEFAULT 'mqtt',
    class           text NOT NULL,
    confidence      real NOT NULL,
    geom            geography(Point, 4326) NOT NULL,
    h_accuracy_m    real NOT NULL,
    vehicle_geom    geography(Point, 4326),
    vehicle_h_accuracy_m real,
    speed_mps       real,
    heading_deg     real,
    size_width_m    real,
    size_length_m   real,
    severity        real,
    frames          integer,
    bbox            real[],
    model           jsonb,
    thumbnail       bytea,
    payload         jsonb NOT NULL,
    defect_id       bigint REFERENCES defects (id) ON DELETE SET NULL
);
CREATE INDEX sightings_geog_gist ON sightings USING gist (geom);
CREATE INDEX sightings_defect ON sightings (defect_id, captured_at);
CREATE INDEX sightings_device_time ON sightings (device_id, captured_at);

CREATE TABLE coverage (
    coverage_id     uuid PRIMARY KEY,
    device_id       text NOT NULL,
    started_at      timestamptz NOT NULL,
    ended_at        timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    line            geography(LineString, 4326) NOT NULL,
    detector_active boolean NOT NULL,
    model_sha256    text,
    half_width_m    real,
    payload         jsonb NOT NULL
);
CREATE INDEX coverage_line_gist ON coverage USING gist (line);
CREATE INDEX coverage_line_geom_gist ON coverage USING gist ((line::geometry));
CREATE INDEX coverage_time ON coverage (ended_at);

-- One row per (defect, coverage record) that looked at the defect with the detector on and saw nothing.
CREATE TABLE defect_misses (
    defect_id   bigint NOT NULL REFERENCES defects (id) ON DELETE CASCADE,
    coverage_id uuid NOT NULL REFERENCES coverage (coverage_id),
    device_id   text NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL,
    PRIMARY KEY (defect_id, coverage_id)
);

CREATE TABLE defect_history (
    id          bigserial PRIMARY KEY,
    defect_id   bigint NOT NULL REFERENCES defects (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    from_status text,
    to_status   text NOT NULL,
    note        text
);
CREATE INDEX defect_history_defect ON defect_history (defect_id, at);

CREATE TABLE rejected (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    source      text NOT NULL,
    topic       text,
    device_id   text,
    reason      text NOT NULL,
    raw         bytea NOT NULL
);
CREATE INDEX rejected_time ON rejected (received_at);

CREATE TABLE command_results (
    id          bigserial PRIMARY KEY,
    device_id   text NOT NULL,
    name        text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    payload     jsonb NOT NULL
);
CREATE INDEX command_results_device ON command_results (device_id, received_at);

-- POST /detections per device, for the hourly rate limit (shared by every API process).
CREATE TABLE http_submissions (
    device_id text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX http_submissions_device_time ON http_submissions (device_id, at);
