//! Loopback ports: picking a free one for a server of the run (which keeps it across its
//! restarts), and telling whether something listens on one.

use std::time::Duration;

use anyhow::Context;

/// A loopback port nothing listens on now (the kernel's pick for port 0).
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener
        .local_addr()
        .context("reading a bound port")?
        .port())
}

/// Whether something accepts TCP connections on `address` (`host:port`) within a second.
pub async fn port_open(address: &str) -> bool {
    let connect = tokio::net::TcpStream::connect(address);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), connect).await,
        Ok(Ok(_))
    )
}
