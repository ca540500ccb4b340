//! Submitting jobs over HTTP (`noop` unless told otherwise): in batches, one-by-one from
//! many client tasks, or at a fixed rate. Any answer but 202 stops the run with the status
//! and body.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use reqwest::StatusCode;

/// Submits to one fleet's API with its key.
#[derive(Clone)]
pub struct Submitter {
    http: reqwest::Client,
    base_url: String,
    key: String,
    /// The JSON of every job submitted, as `POST /v1/jobs` takes it.
    job: Arc<str>,
}

const NOOP_JOB: &str = r#"{"kind":"noop"}"#;

impl Submitter {
    /// Submits `noop` jobs.
    pub fn new(http: reqwest::Client, base_url: &str, key: &str) -> Self {
        Self {
            http,
            base_url: base_url.to_owned(),
            key: key.to_owned(),
            job: Arc::from(NOOP_JOB),
        }
    }

    /// Submits `job` (a `POST /v1/jobs` body) instead.
    pub fn with_job(self, job: &serde_json::Value) -> Self {
        Self {
            job: Arc::from(job.to_string()),
            ..self
        }
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status();
        if status != StatusCode::ACCEPTED {
            let text = response.text().await.unwrap_or_default();
            anyhow::bail!(
                "POST {path} answered {status}, not 202: {}",
                text.chars().take(500).collect::<String>()
            );
        }
        // Read the body so the connection goes back to the pool.
        response
            .bytes()
            .await
            .with_context(|| format!("reading the answer to POST {path}"))?;
        Ok(())
    }

    /// One job through `POST /v1/jobs`.
    pub async fn submit_one(&self) -> anyhow::Result<()> {
        self.post("/v1/jobs", self.job.to_string()).await
    }

    /// `total` jobs through `POST /v1/jobs/batch`, `batch_size` per request, `concurrency`
    /// requests in flight.
    pub async fn submit_batched(
        &self,
        total: usize,
        batch_size: usize,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        let batch_size = batch_size.max(1);
        let body_of = |size: usize| format!(r#"{{"jobs":[{}]}}"#, vec![&*self.job; size].join(","));
        let full = body_of(batch_size);
        let mut sizes = vec![batch_size; total / batch_size];
        if !total.is_multiple_of(batch_size) {
            sizes.push(total % batch_size);
        }
        let mut requests = futures_util::stream::iter(sizes)
            .map(|size| {
                let body = if size == batch_size {
                    full.clone()
                } else {
                    body_of(size)
                };
                async move { self.post("/v1/jobs/batch", body).await }
            })
            .buffer_unordered(concurrency.max(1));
        while let Some(result) = requests.next().await {
            result?;
        }
        Ok(())
    }

    /// `total` jobs one-by-one from `concurrency` client tasks.
    pub async fn submit_concurrently(
        &self,
        total: usize,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = FuturesUnordered::new();
        for _ in 0..concurrency.max(1) {
            let (submitter, next) = (self.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    submitter.submit_one().await?;
                }
                anyhow::Ok(())
            }));
        }
        while let Some(joined) = tasks.next().await {
            joined.context("a submitting task panicked")??;
        }
        Ok(())
    }

    /// Submits `rate` jobs per second for `duration`, each on its own task so a slow answer
    /// does not delay the next. Returns each request's HTTP round trip and the achieved rate.
    pub async fn submit_paced(&self, rate: u32, duration: Duration) -> anyhow::Result<Paced> {
        let rate = rate.max(1);
        let total = (f64::from(rate) * duration.as_secs_f64()).round() as usize;
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
        let started = tokio::time::Instant::now();
        let mut tasks = FuturesUnordered::new();
        for i in 0..total {
            tokio::time::sleep_until(started + interval * u32::try_from(i).unwrap_or(u32::MAX))
                .await;
            let submitter = self.clone();
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                submitter.submit_one().await.map(|()| sent.elapsed())
            }));
        }
        let sending = started.elapsed();
        let mut http = Vec::with_capacity(total);
        while let Some(joined) = tasks.next().await {
            http.push(joined.context("a submitting task panicked")??);
        }
        Ok(Paced {
            jobs: total,
            // The last submission left (total - 1) intervals after the first.
            achieved_rate: total.saturating_sub(1) as f64 / sending.as_secs_f64().max(1e-9),
            http,
        })
    }
}

/// What a paced submission did.
pub struct Paced {
    pub jobs: usize,
    pub achieved_rate: f64,
    /// HTTP round trip of each submission.
    pub http: Vec<Duration>,
}
