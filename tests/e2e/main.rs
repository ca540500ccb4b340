//! End-to-end tests: the API and workers against real PostgreSQL and RabbitMQ, each test in
//! its own namespace (vhost, rows, key) so they run in parallel.

mod archive;
mod artifacts;
mod backup;
mod bad_submissions;
mod cancel;
mod command_line;
mod connections;
mod crash_windows;
mod dead;
mod egress;
mod errors;
mod forgery;
mod health;
mod heavy_reads;
mod isolation;
mod job_logs;
mod lifecycle;
mod limits;
mod manifests;
mod metrics;
mod outage;
mod payload_caps;
mod poison;
mod pooler;
mod processes;
mod reconnection;
mod rescue;
mod retries;
mod scheduler;
mod storage;
mod store_races;
mod store_submit;
mod tls;
mod trace;
mod webhook;
