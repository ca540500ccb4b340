-- pg_trgm, for the trigram index on job errors (next migration). A trusted extension since
-- PostgreSQL 13, so the database's owner may create it; Neon provides it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
