-- What the rescuer's pass probes, one (namespace, queue) at a time, so that an idle or
-- backlogged fleet's pass reads a few index entries, not every unfinished row.

-- Running rows: as many as the fleet runs at once. `lease_until` is left out on purpose:
-- a lease renewal then changes no indexed column and stays a HOT update.
CREATE INDEX jobs_running ON jobs (namespace, queue)
    WHERE status = 'running';

-- Published rows nobody has started yet, by when they were due or published last.
CREATE INDEX jobs_unstarted ON jobs (namespace, queue, (GREATEST(run_at, published_at)))
    WHERE status IN ('queued', 'retrying') AND published_at IS NOT NULL;
