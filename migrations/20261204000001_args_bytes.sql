-- The size of each job's args as JSON text, kept by PostgreSQL itself, so the relay's
-- claims, listing pages and archive batches can stop at a number of bytes with a running
-- sum over a column they already read, without detoasting args to measure them.
-- A stored generated column: this rewrites the table once, under an ACCESS EXCLUSIVE lock.
ALTER TABLE jobs
    ADD COLUMN args_bytes integer NOT NULL
        GENERATED ALWAYS AS (octet_length(args::text)) STORED;
