-- no-transaction
-- What an error search (`GET /v1/jobs?error=`, a redrive by `error`) reads instead of every
-- row of a namespace: a trigram index on the error text, so `last_error ILIKE '%text%'`
-- looks up the text's trigrams. Only rows with an error are in it, so a job that never
-- failed costs it nothing. Built CONCURRENTLY (outside a transaction, one statement per
-- migration) so that writes to jobs go on while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_last_error_trgm ON jobs
    USING gin (last_error gin_trgm_ops) WHERE last_error IS NOT NULL;
