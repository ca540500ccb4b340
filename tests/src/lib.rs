//! Test harness for tl-engine's end-to-end tests and benchmark, against real servers.
//!
//! - [`services`]: where PostgreSQL and RabbitMQ are; per-test vhosts via the management API.
//! - [`fleet`]: an API and worker in-process (port 0), and worker processes started for it;
//!   [`TestFleet::builder`] sets one up, and dropping it fails a test that left jobs
//!   unfinished.
//! - [`settings`]: the settings file a fleet runs with, typed, for a test to change.
//! - [`api_process`]: the API as a real child process, its memory read from `/proc`.
//! - [`worker_process`]: a worker as a real child process: signalled, killed, its log read.
//! - [`client`]: one typed HTTP client for the API (`submit::<Kind>(args)` gives a
//!   [`engine_shared::JobId`]); [`scrape`]: a counter from `/metrics`.
//! - [`broker`]: a test's vhost seen directly: raw publishes, dead letters and their reasons.
//! - [`pgbouncer`]: a PgBouncer of the test's own in transaction mode.
//! - [`private_broker`]: a RabbitMQ node of the test's own, for a short consumer timeout.
//! - [`proxy`]: a TCP proxy a test can cut and restore to simulate a server outage.
//! - [`tls_proxy`]: a throwaway certificate authority, and a TLS-terminating proxy with a
//!   certificate it signed, so clients speak TLS to the plain test servers; it counts
//!   handshakes.
//! - [`management`]: RabbitMQ's management API's view of a vhost's connections and channels.
//! - [`wait`]: waiting for a condition with a deadline (never a bare sleep).
//! - [`test_kinds`]: job kinds that exist only for tests (panic, fail, flaky, fatal, snooze,
//!   a switch, and one that aborts its process).

pub mod api_process;
pub mod broker;
pub mod client;
pub mod fleet;
pub mod management;
pub mod pgbouncer;
pub mod private_broker;
pub mod proxy;
pub mod scrape;
pub mod services;
pub mod settings;
pub mod test_kinds;
pub mod tls_proxy;
pub mod wait;
pub mod worker_process;

pub use api_process::ApiProcess;
pub use broker::{DeadLetter, VhostClient};
pub use client::{ApiClient, JobOptions};
pub use fleet::{FleetBuilder, TestFleet, WAIT_DEADLINE};
pub use pgbouncer::{PgBouncer, PgBouncerOptions};
pub use private_broker::PrivateBroker;
pub use proxy::TcpProxy;
pub use settings::{LimitSection, RECEIVER_HOST, TestSettings};
pub use tls_proxy::{TestCa, TlsProxy};
pub use wait::wait_until;
pub use worker_process::{WorkerProcess, binary};
