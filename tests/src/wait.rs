//! Waiting on a condition with a deadline: poll, and fail with what was awaited.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `probe` every 20 ms until it returns `Some`, or panics after `deadline` naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
