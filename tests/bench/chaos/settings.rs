//! What the chaos fleet's settings add to the bench's: a short rescue bound (so the
//! rescuer has to act inside the run), a rate and a concurrency limit on `webhook.deliver`,
//! storage on the run's own S3 server, and the namespace's webhook signing secret.

/// `rescue.after_secs` and `rescue.lease_secs`: a job nobody runs is handed back to work
/// within about 30 s, and an attempt whose worker died is seen as dead after 10 s (the
/// settings require the lease to be shorter than the bound).
pub const RESCUE_AFTER_SECS: u64 = 30;
pub const LEASE_SECS: u64 = 10;

/// The limit on `webhook.deliver`, per destination host (all deliveries go to one): at
/// most this many per second after a burst, and this many at once fleet-wide. A killed
/// worker's concurrency slots stay taken until their 10 s lease runs out.
pub const WEBHOOK_RATE_PER_SEC: u32 = 200;
pub const WEBHOOK_BURST: u32 = 50;
pub const WEBHOOK_CONCURRENCY: u32 = 16;

/// Where the fleet keeps its attempt logs.
pub struct Storage<'a> {
    pub endpoint: &'a str,
    pub bucket: &'a str,
    pub access_key: &'a str,
    pub secret_key: &'a str,
    /// `logs.spool_dir`, the run's own: by default every worker on the machine shares one
    /// spool, and would upload other fleets' spooled logs to this run's server.
    pub spool_dir: &'a str,
}

/// The TOML tables appended to the fleet's settings.
pub fn tables(storage: &Storage<'_>) -> String {
    // `defer`: while Redis is away, limited jobs wait in the delay tiers instead of running
    // unlimited, so a Redis restart leaves webhooks that must all come back.
    format!(
        r#"[egress]
allow = ["{receiver}"]

[rescue]
after_secs = {RESCUE_AFTER_SECS}
lease_secs = {LEASE_SECS}

[[limits]]
kind = "webhook.deliver"
rate = {WEBHOOK_RATE_PER_SEC}
period_ms = 1000
burst = {WEBHOOK_BURST}
concurrency = {WEBHOOK_CONCURRENCY}
per_key = true
on_redis_error = "defer"

[storage]
endpoint_url = {endpoint}
access_key_id = {access_key}
secret_access_key = {secret_key}
bucket = {bucket}
force_path_style = true

[logs]
spool_dir = {spool_dir}
"#,
        receiver = super::receiver::RECEIVER_ADDRESS,
        endpoint = quoted(storage.endpoint),
        access_key = quoted(storage.access_key),
        secret_key = quoted(storage.secret_key),
        bucket = quoted(storage.bucket),
        spool_dir = quoted(storage.spool_dir),
    )
}

/// The keys of the namespace's own table.
pub fn namespace_keys(webhook_secret: &str) -> String {
    format!("webhook_signing_secret = {}", quoted(webhook_secret))
}

/// A TOML basic string (JSON string syntax is a subset of it for these values).
fn quoted(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_pass_the_engines_validation() {
        let storage = Storage {
            endpoint: "http://127.0.0.1:9999",
            bucket: "tl-engine-chaos",
            access_key: "key",
            secret_key: "secret",
            spool_dir: "/tmp/spool",
        };
        let text = format!(
            "[database]\nurl = \"postgres://postgres@127.0.0.1/x\"\n[amqp]\nurl = \"amqp://127.0.0.1\"\n\
             [namespaces.chaos-test]\n{}\n\n{}",
            namespace_keys("whsec"),
            tables(&storage)
        );
        let settings = engine_shared::config::Settings::from_toml(&text).unwrap();
        assert_eq!(settings.rescue.lease_secs, LEASE_SECS);
        assert_eq!(settings.limits.len(), 1);
        assert!(settings.storage.is_some());
    }
}
