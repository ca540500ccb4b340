//! The common library of tl-engine (the crate `engine-shared`, folder `shared/`): every type,
//! rule and connection that more than one binary needs lives here, so the API, the worker
//! and the job kinds agree on them by construction. It runs nothing by itself.
//!
//! Three names to keep apart: [`store`] is PostgreSQL, [`objects`] is S3, [`broker`] is
//! RabbitMQ.
//!
//! Module map:
//! - [`config`]: layered settings (defaults → file → environment), secrets wrapped.
//! - [`namespace`]: a tenant and what it owns (vhost, key prefix, object prefix, rows).
//! - [`job_id`], [`kind`], [`queue`], [`status`], [`idempotency`]: typed job values.
//! - [`envelope`]: the message a job travels in through RabbitMQ.
//! - [`fair_share`]: a namespace's weight and cap on a worker shared with others.
//! - [`payload`]: the size of args and results as JSON text, which their caps measure.
//! - [`egress`]: where jobs' outbound requests may connect (the SSRF policy).
//! - [`retry`]: backoff with jitter and the delay tiers it rounds up to.
//! - [`limits`]: rate and concurrency limits in Redis, per namespace key prefix.
//! - [`group_commit`]: batches concurrent writes into one statement (one fsync).
//! - [`objects`]: the S3-compatible object store (client built for B2, object keys).
//! - [`store`]: every SQL statement the fleet runs, and the pools they run on.
//! - [`backup`]: consistent database backups to storage, kept to the last N, and restore.
//! - [`broker`]: AMQP connections per vhost, the topology, and confirmed publishing.
//! - [`metrics`]: the Prometheus metrics every process exports on `/metrics`.
//! - [`health`]: readiness reports (each dependency, and the overall verdict).
//! - [`trace`]: the W3C `traceparent` that follows a job from its HTTP request to its logs.
//! - [`telemetry`] and [`tls`]: process set-up every binary does first.
//! - [`shutdown`]: the one stop signal every long-running service obeys.

pub mod backup;
pub mod broker;
pub mod config;
pub mod egress;
pub mod envelope;
pub mod fair_share;
pub mod group_commit;
pub mod health;
pub mod idempotency;
pub mod job_id;
pub mod kind;
pub mod limits;
pub mod metrics;
pub mod namespace;
pub mod objects;
pub mod payload;
pub mod queue;
pub mod quota;
pub mod retry;
pub mod shutdown;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod trace;

pub use idempotency::IdempotencyKey;
pub use job_id::JobId;
pub use kind::Kind;
pub use namespace::Namespace;
pub use queue::QueueName;
pub use status::JobStatus;
