//! Waiting, with a deadline, until a condition holds: a restarted server answering again,
//! a stopped one gone. Never a bare sleep as the wait.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(100);

/// Checks `holds` every 100 ms until it returns true, and returns how long that took;
/// fails naming `what` once `deadline` has passed.
pub async fn until<F, Fut>(what: &str, deadline: Duration, mut holds: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if holds().await {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}
