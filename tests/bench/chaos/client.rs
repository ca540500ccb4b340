//! The chaos run's client, a careful user: it submits the run's jobs in batches
//! (`POST /v1/jobs/batch`), paced over the fault phase, each job with its idempotency
//! key, and resends a batch that got no answer (a refused or cut connection, a timeout, a
//! 5xx or a 429) with the same keys, with a bounded backoff, until it is answered. Every
//! accepted job id is recorded, in the order of the run's indexes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde::Deserialize;

use super::mix::Mix;

/// How long one request may go unanswered before it counts as lost and is resent.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause before the first resend, doubled per resend up to the most.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MOST_PAUSE: Duration = Duration::from_secs(2);

/// Batches in flight at once: a batch stuck resending does not hold back the schedule.
const IN_FLIGHT: usize = 4;

/// How the run's jobs are submitted.
pub struct Plan {
    pub jobs: usize,
    pub batch_size: usize,
    /// The span the batches' departures are spread over, evenly.
    pub spread: Duration,
    /// How long one batch may go on being resent before the run gives up on it.
    pub give_up_after: Duration,
}

/// What the submission came to.
#[derive(Default)]
pub struct Submission {
    /// The id of every job, by index.
    pub ids: Vec<String>,
    pub batches: usize,
    /// Batches sent more than once, and the requests that got no answer, by cause.
    pub resent_batches: usize,
    pub unanswered: Unanswered,
    /// Jobs a resend found already stored (their first send had been committed, but its
    /// answer was lost).
    pub found_on_resend: usize,
    /// Jobs the first send of their batch found already stored: none, unless keys clash.
    pub found_on_first_send: usize,
    /// From the start of the submission to the last answer.
    pub took: Duration,
}

/// Requests that got no answer, by cause.
#[derive(Clone, Copy, Default)]
pub struct Unanswered {
    pub connection: usize,
    pub timeout: usize,
    pub server_error: usize,
    pub throttled: usize,
}

impl Unanswered {
    pub fn total(&self) -> usize {
        self.connection + self.timeout + self.server_error + self.throttled
    }

    fn add(&mut self, other: Unanswered) {
        self.connection += other.connection;
        self.timeout += other.timeout;
        self.server_error += other.server_error;
        self.throttled += other.throttled;
    }
}

/// One batch's answer and how it was got.
struct Answered {
    first: usize,
    ids: Vec<String>,
    sends: usize,
    unanswered: Unanswered,
    /// Jobs answered `created: false`.
    existing: usize,
}

#[derive(Deserialize)]
struct BatchAnswer {
    jobs: Vec<AcceptedJob>,
}

#[derive(Deserialize)]
struct AcceptedJob {
    id: String,
    created: bool,
}

/// Submits to one fleet's API with its key.
pub struct CarefulClient {
    http: reqwest::Client,
    url: String,
    key: String,
    /// Jobs accepted so far, for the timeline.
    pub accepted: Arc<AtomicUsize>,
    /// Requests sent and not yet answered, so the API can be killed with one in flight.
    pub in_flight: Arc<AtomicUsize>,
}

impl CarefulClient {
    pub fn new(base_url: &str, key: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .context("building the chaos client")?;
        Ok(Self {
            http,
            url: format!("{base_url}/v1/jobs/batch"),
            key: key.to_owned(),
            accepted: Arc::new(AtomicUsize::new(0)),
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Submits every job of `plan`, built by `mix`; fails only if the API refuses a batch
    /// (a 4xx other than 429: the harness is wrong) or a batch stays unanswered too long.
    pub async fn submit(&self, mix: &Mix, plan: &Plan) -> anyhow::Result<Submission> {
        let started = tokio::time::Instant::now();
        let batch_size = plan.batch_size.max(1);
        let firsts: Vec<usize> = (0..plan.jobs).step_by(batch_size).collect();
        let pace = plan.spread / u32::try_from(firsts.len().max(1)).unwrap_or(u32::MAX);
        let mut answers = futures_util::stream::iter(firsts.into_iter().enumerate())
            .map(|(number, first)| async move {
                tokio::time::sleep_until(started + pace * u32::try_from(number)?).await;
                let last = (first + batch_size).min(plan.jobs);
                let jobs: Vec<_> = (first..last).map(|index| mix.job(index)).collect();
                let body = serde_json::json!({ "jobs": jobs }).to_string();
                self.send_until_answered(first, body, last - first, plan.give_up_after)
                    .await
            })
            .buffer_unordered(IN_FLIGHT);
        let mut ids = vec![String::new(); plan.jobs];
        let mut submission = Submission::default();
        while let Some(answered) = answers.next().await {
            let answered = answered?;
            submission.batches += 1;
            submission.unanswered.add(answered.unanswered);
            if answered.sends > 1 {
                submission.resent_batches += 1;
                submission.found_on_resend += answered.existing;
            } else {
                submission.found_on_first_send += answered.existing;
            }
            for (offset, id) in answered.ids.into_iter().enumerate() {
                ids[answered.first + offset] = id;
            }
        }
        submission.ids = ids;
        submission.took = started.elapsed();
        Ok(submission)
    }

    /// Sends one batch until it is answered, with the same body (and so the same keys).
    async fn send_until_answered(
        &self,
        first: usize,
        body: String,
        expected: usize,
        give_up_after: Duration,
    ) -> anyhow::Result<Answered> {
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        let mut unanswered = Unanswered::default();
        for sends in 1.. {
            match self.send(&body).await {
                Sent::Answered(answer) => {
                    anyhow::ensure!(
                        answer.jobs.len() == expected,
                        "the batch of jobs {first}.. was answered with {} jobs, not {expected}",
                        answer.jobs.len()
                    );
                    self.accepted.fetch_add(expected, Ordering::Relaxed);
                    return Ok(Answered {
                        first,
                        existing: answer.jobs.iter().filter(|job| !job.created).count(),
                        ids: answer.jobs.into_iter().map(|job| job.id).collect(),
                        sends,
                        unanswered,
                    });
                }
                Sent::Refused(why) => {
                    anyhow::bail!("the batch of jobs {first}.. was refused: {why}")
                }
                Sent::Unanswered(cause) => cause.count(&mut unanswered),
            }
            anyhow::ensure!(
                started.elapsed() < give_up_after,
                "the batch of jobs {first}.. got no answer in {give_up_after:?} ({} sends)",
                sends
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MOST_PAUSE);
        }
        unreachable!("the resend loop only ends by returning")
    }

    async fn send(&self, body: &str) -> Sent {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let sent = self.send_counted(body).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        sent
    }

    async fn send_counted(&self, body: &str) -> Sent {
        let sent = self
            .http
            .post(&self.url)
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) if error.is_timeout() => return Sent::Unanswered(Cause::Timeout),
            Err(_) => return Sent::Unanswered(Cause::Connection),
        };
        let status = response.status();
        if status.is_server_error() {
            return Sent::Unanswered(Cause::ServerError);
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Sent::Unanswered(Cause::Throttled);
        }
        if !matches!(status, StatusCode::OK | StatusCode::ACCEPTED) {
            let text = response.text().await.unwrap_or_default();
            return Sent::Refused(format!(
                "{status}: {}",
                text.chars().take(500).collect::<String>()
            ));
        }
        match response.json::<BatchAnswer>().await {
            Ok(answer) => Sent::Answered(answer),
            // The answer was cut off mid-body (the API died while sending it).
            Err(error) if error.is_timeout() => Sent::Unanswered(Cause::Timeout),
            Err(error) if error.is_decode() => Sent::Refused(format!("{status}, but {error}")),
            Err(_) => Sent::Unanswered(Cause::Connection),
        }
    }
}

/// One send's result.
enum Sent {
    Answered(BatchAnswer),
    Unanswered(Cause),
    Refused(String),
}

#[derive(Clone, Copy)]
enum Cause {
    Connection,
    Timeout,
    ServerError,
    Throttled,
}

impl Cause {
    fn count(self, unanswered: &mut Unanswered) {
        match self {
            Self::Connection => unanswered.connection += 1,
            Self::Timeout => unanswered.timeout += 1,
            Self::ServerError => unanswered.server_error += 1,
            Self::Throttled => unanswered.throttled += 1,
        }
    }
}
