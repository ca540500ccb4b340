-- Job history archive: finished jobs older than archive.after_days move to object storage
-- as gzipped JSON lines, then leave PostgreSQL.

-- The manifest of archive batches between "chosen" and "deleted". A row is written (and
-- committed) before its object is uploaded, and deleted in the same transaction as the
-- jobs it archived, so a row that is still here means a pass stopped in between: the next
-- pass uploads that batch again to the same key (an idempotent overwrite) and deletes its
-- jobs. Nothing is lost and no second object is made. Normally empty.
CREATE TABLE archive_batches (
    id          uuid PRIMARY KEY,       -- UUIDv7; also the object's file name
    namespace   text NOT NULL,
    object_key  text NOT NULL,          -- <ns>/archive/jobs/YYYY/MM/DD/<id>.jsonl.gz
    bucket      text,                   -- NULL: the fleet's storage.bucket
    job_ids     uuid[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX archive_batches_by_namespace ON archive_batches (namespace, created_at);

-- What the archiver claims: a namespace's finished jobs, oldest first. Without it every
-- batch would sort all of a namespace's finished rows.
CREATE INDEX jobs_archivable ON jobs (namespace, finished_at, id)
    WHERE status IN ('succeeded', 'dead', 'cancelled');
