//! tl-engine's worker: a stateless process that runs jobs.
//!
//! Module map:
//! - [`runtime`]: build from settings, run until stopped, drain on SIGTERM.
//! - [`context`]: what every execution shares, each served namespace's context, and the
//!   [`context::NamespaceIndex`] every per-namespace table goes by.
//! - [`consumer`]: per namespace, a connection to its vhost, one consumer per queue, and
//!   reconnection with backoff.
//! - [`dispatch`]: picks the next delivery (namespace, then queue) and gives it a slot.
//! - [`fair_share`]: which namespace a free slot goes to: weights, caps, headroom.
//! - [`received`]: the broker's clock on a delivery (its consumer timeout), from receipt.
//! - [`admission`]: rate and concurrency limits checked before a job starts (defer, not fail).
//! - [`execution`]: one delivery's way: screening → admission → start → handler → final
//!   state → ack/retry/dead (one file per step).
//! - [`transitions`]: the group-committed state writes executions share.
//! - [`log_shipper`]: uploads attempt logs in the background; a bounded spool while
//!   storage is down.
//! - [`health`]: consumer states, and `/healthz` + `/readyz` on `worker.health_listen`.
//! - [`in_flight`]: the deliveries being worked on: cancellation tokens and start tokens.
//! - [`leases`]: renews the leases of running attempts; learns missed cancels from it.
//! - [`redelivery`]: earlier deliveries without an outcome, carried across republishes.
//! - [`control`]: listens for cancel requests broadcast by the API.

pub mod admission;
pub mod consumer;
pub mod context;
pub mod control;
pub mod dispatch;
pub mod execution;
pub mod fair_share;
pub mod health;
pub mod in_flight;
pub mod leases;
pub mod log_shipper;
pub mod received;
pub mod redelivery;
pub mod runtime;
pub mod transitions;

pub use runtime::Worker;
