-- Retry policy per job, snoozes, redrives, the error of every failed attempt, and retries
-- held in PostgreSQL when their delay is longer than the largest delay tier.

-- NULL: the fleet's retry settings apply (retry.base_delay_ms / retry.max_delay_ms).
ALTER TABLE jobs
    ADD COLUMN backoff_min_ms integer CHECK (backoff_min_ms > 0),
    ADD COLUMN backoff_max_ms integer CHECK (backoff_max_ms > 0),
    ADD COLUMN snoozes integer NOT NULL DEFAULT 0,   -- runs that asked to be retried later, uncounted
    ADD COLUMN redrives integer NOT NULL DEFAULT 0;  -- times a person sent it back from `dead`

-- One row per failed attempt (and per poison or crash verdict). Kept across redrives: a
-- redriven job starts with fresh attempts but its history stays.
CREATE TABLE job_errors (
    job_id          uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt         integer NOT NULL,
    redrive         integer NOT NULL DEFAULT 0,  -- jobs.redrives when it happened
    kind            text NOT NULL CHECK (kind IN ('error', 'fatal', 'timeout', 'panic', 'poison', 'crashed')),
    message         text NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    duration_ms     integer,                     -- NULL when the handler never ran
    worker_id       text,
    retry_delay_ms  bigint,                      -- the wait before the next attempt, if one follows
    retry_via       text                         -- the delay-tier queue, or 'scheduler' (PostgreSQL)
);
CREATE INDEX job_errors_by_job ON job_errors (job_id, at);

-- Retries longer than the largest tier wait here as `retrying` rows with published_at NULL:
-- the outbox now covers them too.
DROP INDEX jobs_outbox;
CREATE INDEX jobs_outbox ON jobs (run_at)
    WHERE published_at IS NULL AND status IN ('queued', 'scheduled', 'retrying');
