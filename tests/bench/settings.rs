//! The settings file one scenario's fleet (API and workers) is started with.

use engine_shared::config::Pooler;

/// What varies between fleets; everything else keeps the production defaults.
pub struct FleetSettings<'a> {
    pub database_url: &'a str,
    /// What `database_url` points at: PostgreSQL, or a transaction-mode pooler.
    pub pooler: Pooler,
    pub amqp_url: &'a str,
    pub namespace: &'a str,
    pub worker_concurrency: u16,
    pub max_connections: u32,
    /// 0: any free port (the API logs the one it got).
    pub api_port: u16,
    /// Keys of the namespace's own table, e.g. its `webhook_signing_secret`.
    pub namespace_settings: &'a str,
    /// Appended verbatim (tables only: top-level keys must come first in TOML).
    pub extra: &'a str,
}

impl FleetSettings<'_> {
    /// TOML for `engine-api --config` and `engine-worker --config`. The API listens on
    /// loopback (on a free port unless told which; it logs the address); logs are JSON so
    /// the benchmark can read them.
    pub fn toml(&self) -> String {
        format!(
            r#"log_format = "json"

[database]
url = {database_url}
max_connections = {max_connections}
pooler = "{pooler}"

[amqp]
url = {amqp_url}

[api]
listen = "127.0.0.1:{api_port}"
# Benchmarks measure the engine's throughput, not the per-key submission limit.
submit_rate_per_sec = 0

[worker]
concurrency = {concurrency}
grace_period_secs = 10

[namespaces.{namespace}]
{namespace_settings}

{extra}
"#,
            database_url = quoted(self.database_url),
            pooler = match self.pooler {
                Pooler::None => "none",
                Pooler::Transaction => "transaction",
            },
            amqp_url = quoted(self.amqp_url),
            max_connections = self.max_connections,
            concurrency = self.worker_concurrency,
            namespace = self.namespace,
            api_port = self.api_port,
            namespace_settings = self.namespace_settings,
            extra = self.extra,
        )
    }
}

/// A TOML basic string (JSON string syntax is a subset of it for these values).
fn quoted(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}
