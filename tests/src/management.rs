//! RabbitMQ's management API's view of one vhost's clients: each AMQP connection with the
//! name its process gave it, and the channels it has open. (Its lists can trail the broker
//! by a moment: wait for what you expect to appear rather than reading once.)

use std::collections::HashMap;

use serde::Deserialize;

use crate::services;

/// One client connection to a vhost, as the broker lists it.
#[derive(Clone, Debug)]
pub struct BrokerConnection {
    /// The broker's name for it, `<client address> -> <broker address>`: one TCP
    /// connection, so a reconnection shows as a new name.
    pub name: String,
    /// The name the client gave it (`tl-engine-api`, `tl-engine-worker <id>`); empty when
    /// it gave none.
    pub client_name: String,
    /// The numbers of its open channels, ascending. A client numbers each new channel
    /// after the last, so a channel closed and opened again shows as a new number.
    pub channels: Vec<u16>,
}

#[derive(Deserialize)]
struct Connection {
    /// The broker's own name for it: `<peer> -> <broker address>`.
    name: String,
    #[serde(default)]
    client_properties: ClientProperties,
}

#[derive(Default, Deserialize)]
struct ClientProperties {
    #[serde(default)]
    connection_name: String,
}

#[derive(Deserialize)]
struct Channel {
    /// `<its connection's name> (<number>)`. (Its `connection_details` would name the
    /// connection too, but stay empty until the broker's next statistics round.)
    name: String,
    number: u16,
}

impl Channel {
    fn connection_name(&self) -> &str {
        self.name
            .strip_suffix(&format!(" ({})", self.number))
            .unwrap_or(&self.name)
    }
}

/// Every connection to `vhost` now, with its channel count.
pub async fn vhost_connections(vhost: &str) -> Vec<BrokerConnection> {
    let connections: Vec<Connection> = list(vhost, "connections").await;
    let mut channels: HashMap<String, Vec<u16>> = HashMap::new();
    for channel in list::<Channel>(vhost, "channels").await {
        channels
            .entry(channel.connection_name().to_owned())
            .or_default()
            .push(channel.number);
    }
    connections
        .into_iter()
        .map(|connection| {
            let mut numbers = channels.remove(&connection.name).unwrap_or_default();
            numbers.sort_unstable();
            BrokerConnection {
                client_name: connection.client_properties.connection_name,
                name: connection.name,
                channels: numbers,
            }
        })
        .collect()
}

/// `GET /api/vhosts/<vhost>/<what>`, decoded.
async fn list<T: for<'de> Deserialize<'de>>(vhost: &str, what: &str) -> Vec<T> {
    let url = format!("{}/api/vhosts/{vhost}/{what}", services::management_url());
    let response = reqwest::Client::new()
        .get(&url)
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ management API unreachable at {url}: {e}"));
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    let body = response.text().await.unwrap_or_default();
    serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {url}: unexpected JSON: {e}: {body}"))
}

/// Closes every connection to `vhost` (their clients must reconnect, and are checked
/// against the vhost's permissions again).
pub async fn close_vhost_connections(vhost: &str) {
    for connection in vhost_connections(vhost).await {
        let url = format!(
            "{}/api/connections/{}",
            services::management_url(),
            urlencoding(&connection.name)
        );
        let _ = reqwest::Client::new()
            .delete(&url)
            .basic_auth("guest", Some("guest"))
            .send()
            .await;
    }
}

/// Percent-encodes a connection name for a URL path (`127.0.0.1:5 -> 127.0.0.1:5672`).
fn urlencoding(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
