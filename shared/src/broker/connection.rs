//! Connections to a namespace's vhost: the URL, timeouts, and a small pool per vhost.

use std::time::Duration;

use anyhow::Context;
use deadpool_lapin::{Pool, PoolConfig, Runtime, Timeouts};
use lapin::{Connection, ConnectionProperties};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};

/// Connecting to a broker that accepts TCP but never answers must not hang a caller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `base` with its vhost replaced by `vhost` (percent-encoded, so `/` becomes `%2F`).
pub fn vhost_url(base: &SecretString, vhost: &str) -> anyhow::Result<SecretString> {
    let mut url = url::Url::parse(base.expose_secret()).context("AMQP_URL is not a URL")?;
    let encoded = utf8_percent_encode(vhost, NON_ALPHANUMERIC).to_string();
    url.set_path(&format!("/{encoded}"));
    Ok(SecretString::from(url.to_string()))
}

/// How a process reaches the broker: the base URL and the name it shows in the
/// management UI (so a person can tell API connections from worker connections).
#[derive(Clone, Debug)]
pub struct Broker {
    base_url: SecretString,
    connection_name: String,
}

impl Broker {
    pub fn new(base_url: SecretString, connection_name: impl Into<String>) -> Self {
        Self {
            base_url,
            connection_name: connection_name.into(),
        }
    }

    fn properties(name: &str) -> ConnectionProperties {
        ConnectionProperties::default().with_connection_name(name.to_owned().into())
    }

    /// One dedicated connection to `vhost` (workers hold one per namespace for consuming).
    pub async fn connect(&self, vhost: &str) -> anyhow::Result<Connection> {
        let url = vhost_url(&self.base_url, vhost)?;
        let connect =
            Connection::connect(url.expose_secret(), Self::properties(&self.connection_name));
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| anyhow::anyhow!("connecting to vhost {vhost:?} timed out"))?
            // lapin's errors may quote the URI; only its kind is reported.
            .map_err(|e| anyhow::anyhow!("connecting to vhost {vhost:?}: {}", redact(&e)))
    }

    /// A pool of connections to `vhost`; broken connections are replaced on checkout.
    pub fn pool(&self, vhost: &str, max_size: usize) -> anyhow::Result<Pool> {
        let url = vhost_url(&self.base_url, vhost)?;
        let name = self.connection_name.clone();
        let config = deadpool_lapin::Config {
            url: Some(url.expose_secret().to_owned()),
            pool: Some(PoolConfig {
                max_size,
                timeouts: Timeouts {
                    wait: Some(CONNECT_TIMEOUT),
                    create: Some(CONNECT_TIMEOUT),
                    recycle: Some(CONNECT_TIMEOUT),
                },
                ..PoolConfig::default()
            }),
        };
        config
            .create_pool(move || Self::properties(&name), Runtime::Tokio1)
            .map_err(|e| anyhow::anyhow!("creating the AMQP pool for vhost {vhost:?}: {e}"))
    }
}

/// A lapin error as text without anything that could be a credential.
pub(crate) fn redact(error: &lapin::Error) -> String {
    let text = error.to_string();
    match text.find("://") {
        Some(_) => "connection failed (details withheld: they contain the URL)".to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhost_replaces_the_path_and_is_encoded() {
        let base = SecretString::from("amqps://u:p@host:5671/engine".to_owned());
        let url = vhost_url(&base, "acme/prod").unwrap();
        assert_eq!(url.expose_secret(), "amqps://u:p@host:5671/acme%2Fprod");
    }
}
