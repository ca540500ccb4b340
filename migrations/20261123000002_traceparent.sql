-- The W3C traceparent of the request that submitted each job: it travels with the job's
-- messages (republished by the outbox sweeper and the scheduler from this column) and
-- into every log line of its attempts. NULL for jobs submitted before it existed.
ALTER TABLE jobs ADD COLUMN traceparent text;
