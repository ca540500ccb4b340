//! Reads one counter's value from a process's Prometheus `/metrics`, for tests that count
//! what the process did (checks run, lookups made).

use std::net::SocketAddr;

/// The value of the unlabelled sample `name` (e.g. `tl_readiness_checks_total`) served at
/// `address`; panics with the whole text if there is none.
pub async fn counter(address: SocketAddr, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}
