-- no-transaction
-- What the rescuer's pass probes for lost messages: published rows nobody has started yet,
-- by when they were due or published last (see 20261203000001 for why CONCURRENTLY).
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_unstarted
    ON jobs (namespace, queue, (GREATEST(run_at, published_at)))
    WHERE status IN ('queued', 'retrying') AND published_at IS NOT NULL;
