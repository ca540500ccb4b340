//! The chaos run's webhook receiver: an HTTP server in this process on 127.0.0.1 that
//! answers 500 to a fixed share of deliveries and 200 to the rest, and records per job
//! (`X-TL-Job-Id`) how many requests it got and how many it answered 2xx. Delivery is
//! at-least-once, so a job answered 2xx twice is a duplicate the receiver would have had
//! to drop. Which deliveries fail is a hash of the seed, the job's index in the run (the
//! body carries it) and `X-TL-Attempt`, so the same run fails the same deliveries in any
//! order. Each signature is checked against the namespace's secret too.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The field of each webhook body that names the job's index in the run.
pub const INDEX_FIELD: &str = "chaos_index";

/// A running receiver; its server stops when it is dropped.
pub struct Receiver {
    /// Where `webhook.deliver` posts: a loopback address, never anything else.
    pub url: String,
    state: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

/// What the server's handler shares with the harness.
struct Shared {
    failure_percent: u8,
    seed: u64,
    /// The namespace's `webhook_signing_secret`, to verify `X-TL-Signature`.
    secret: String,
    /// Per job id, what it received and answered.
    deliveries: Mutex<HashMap<String, Deliveries>>,
    /// Requests it could not tie to a job of the run (no job id or no index): answered 400.
    unidentified: AtomicU64,
    /// Requests whose signature did not verify (answered as any other).
    bad_signatures: AtomicU64,
}

/// What one job's deliveries came to.
#[derive(Clone, Debug, Default)]
pub struct Deliveries {
    pub requests: u32,
    /// The `X-TL-Attempt` of each request answered 2xx, in arrival order.
    pub delivered: Vec<u32>,
}

/// Everything the receiver saw, summed.
pub struct Tally {
    /// Per job id.
    pub per_job: HashMap<String, Deliveries>,
    pub requests: u64,
    /// Requests answered 500 on purpose.
    pub failed: u64,
    /// Jobs answered 2xx more than once, and the 2xx answers beyond the first of each job.
    pub duplicated_jobs: usize,
    pub extra_deliveries: u64,
    pub unidentified: u64,
    pub bad_signatures: u64,
}

/// Loopback, but not the services' 127.0.0.1, which the egress policy always refuses; the
/// fleet's `egress.allow` opens exactly this address.
pub const RECEIVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

impl Receiver {
    /// Starts the receiver on a free port of [`RECEIVER_ADDRESS`].
    pub async fn start(failure_percent: u8, seed: u64, secret: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((RECEIVER_ADDRESS, 0)))
            .await
            .context("binding the webhook receiver")?;
        let address = listener
            .local_addr()
            .context("reading the receiver's address")?;
        anyhow::ensure!(
            address.ip().is_loopback(),
            "the receiver must listen on loopback, not {address}"
        );
        let state = Arc::new(Shared {
            failure_percent,
            seed,
            secret: secret.to_owned(),
            deliveries: Mutex::new(HashMap::new()),
            unidentified: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("engine-bench: the webhook receiver stopped: {error}");
            }
        });
        Ok(Self {
            url: format!("http://{address}/hook"),
            state,
            server,
        })
    }

    /// What it has seen so far.
    pub fn tally(&self) -> Tally {
        let per_job = self
            .state
            .deliveries
            .lock()
            .expect("no handler panics holding the lock")
            .clone();
        let duplicated_jobs = per_job
            .values()
            .filter(|job| job.delivered.len() > 1)
            .count();
        let extra_deliveries = per_job
            .values()
            .map(|job| job.delivered.len().saturating_sub(1) as u64)
            .sum();
        let requests = per_job.values().map(|job| u64::from(job.requests)).sum();
        let delivered = per_job
            .values()
            .map(|job| job.delivered.len() as u64)
            .sum::<u64>();
        Tally {
            requests,
            failed: requests - delivered,
            duplicated_jobs,
            extra_deliveries,
            unidentified: self.state.unidentified.load(Ordering::Relaxed),
            bad_signatures: self.state.bad_signatures.load(Ordering::Relaxed),
            per_job,
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(state): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let index = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|json| json[INDEX_FIELD].as_u64());
    let (Some(job), Some(index)) = (header("x-tl-job-id"), index) else {
        state.unidentified.fetch_add(1, Ordering::Relaxed);
        return StatusCode::BAD_REQUEST;
    };
    if !signature_valid(&state.secret, header("x-tl-signature"), &body) {
        state.bad_signatures.fetch_add(1, Ordering::Relaxed);
    }
    let attempt = header("x-tl-attempt")
        .and_then(|attempt| attempt.parse().ok())
        .unwrap_or(0);
    let fails = fails(state.seed, index, attempt, state.failure_percent);
    let mut deliveries = state
        .deliveries
        .lock()
        .expect("no handler panics holding the lock");
    let entry = deliveries.entry(job.to_owned()).or_default();
    entry.requests += 1;
    if fails {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        entry.delivered.push(attempt);
        StatusCode::OK
    }
}

/// Whether the delivery of attempt `attempt` of the run's job `index` is answered 500: the
/// first 8 bytes of SHA-256(seed, index, attempt), modulo 100, below `percent`.
fn fails(seed: u64, index: u64, attempt: u32, percent: u8) -> bool {
    let digest = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(index.to_le_bytes())
        .chain_update(attempt.to_le_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first) % 100 < u64::from(percent)
}

/// `X-TL-Signature: t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` verifies.
fn signature_valid(secret: &str, header: Option<&str>, body: &[u8]) -> bool {
    let Some((timestamp, signature)) = header
        .and_then(|header| header.split_once(','))
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1.strip_prefix("v1=")?)))
    else {
        return false;
    };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes()) == signature
}

#[cfg(test)]
mod tests {
    use super::fails;

    #[test]
    fn about_the_asked_share_of_deliveries_fails() {
        let failed = (0..10_000).filter(|index| fails(11, *index, 1, 15)).count();
        assert!((1_300..1_700).contains(&failed), "{failed} of 10000 failed");
    }
}
