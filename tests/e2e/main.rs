//! End-to-end tests: the API and workers against real PostgreSQL and RabbitMQ, each test in
//! its own namespace (vhost, rows, key) so they run in parallel.

mod cancel;
mod command_line;
mod errors;
mod isolation;
mod lifecycle;
mod outage;
mod processes;
mod retries;
mod webhook;
