-- no-transaction
-- What the rescuer's pass probes for expired leases, one (namespace, queue) at a time, so
-- that a pass reads a few index entries, not every unfinished row. Running rows are as many
-- as the fleet runs at once. `lease_until` is left out on purpose: a lease renewal then
-- changes no indexed column and stays a HOT update. Built CONCURRENTLY (outside a
-- transaction, one statement per migration) so that writes to jobs, lease renewals among
-- them, go on while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_running ON jobs (namespace, queue)
    WHERE status = 'running';
