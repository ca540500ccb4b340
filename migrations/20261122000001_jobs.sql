-- The state of every job, and the API keys that map a caller to its namespace.

CREATE TYPE job_status AS ENUM (
    'scheduled', 'queued', 'running', 'retrying', 'succeeded', 'dead', 'cancelled'
);

CREATE TABLE jobs (
    id                  uuid PRIMARY KEY,           -- UUIDv7: time-ordered
    namespace           text NOT NULL,
    kind                text NOT NULL,
    queue               text NOT NULL,
    args                jsonb NOT NULL,
    status              job_status NOT NULL,
    priority            smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9),
    attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts        integer NOT NULL CHECK (max_attempts >= 1),
    timeout_ms          integer NOT NULL CHECK (timeout_ms > 0),
    idempotency_key     text,
    run_at              timestamptz NOT NULL,       -- when it may first run
    created_at          timestamptz NOT NULL DEFAULT now(),
    published_at        timestamptz,                -- NULL: still in the outbox
    started_at          timestamptz,                -- start of the latest attempt
    finished_at         timestamptz,
    cancel_requested_at timestamptz,
    result              jsonb,
    last_error          text
);

-- One job per (namespace, idempotency key): a resubmission finds the first.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (namespace, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The outbox: what the relay still has to publish or release. Small, because published
-- rows leave it.
CREATE INDEX jobs_outbox ON jobs (run_at)
    WHERE published_at IS NULL AND status IN ('queued', 'scheduled');

-- Keyset pagination of a namespace's jobs, newest first, optionally by status.
CREATE INDEX jobs_by_namespace ON jobs (namespace, id DESC);
CREATE INDEX jobs_by_status ON jobs (namespace, status, id DESC);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    namespace   text NOT NULL,
    label       text NOT NULL DEFAULT '',
    key_hash    bytea NOT NULL UNIQUE,              -- SHA-256 of the key; the key itself is never stored
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
