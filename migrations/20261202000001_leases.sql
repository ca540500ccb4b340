-- Attempt leases and a fencing token: what lets the rescuer tell a dead attempt from a
-- live one, and a late outcome from the attempt it belongs to.

-- `starts`: +1 on every start, never reset (retry and redrive reset `attempts`, so an
-- attempt number can repeat across lives; this cannot). A start hands it to its worker,
-- and an outcome is recorded only while the row still carries it.
-- `lease_until`: a `running` row's attempt is alive while this is in the future; its worker
-- renews every lease of its running jobs in one statement. An expired lease means the
-- attempt died (its worker was killed or cut off), and the rescuer may hand the job on.
ALTER TABLE jobs
    ADD COLUMN starts bigint NOT NULL DEFAULT 0,
    ADD COLUMN lease_until timestamptz;
