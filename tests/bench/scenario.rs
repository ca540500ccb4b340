//! One tl-engine scenario from start to finish: a fresh fleet, a small warm-up load (so
//! lazily opened connections and channels are not measured), the load, the wait until
//! every job has succeeded, then the measures — and the fleet stopped whatever happened.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;

use engine_shared::Namespace;

use crate::cpu::{CpuSnapshot, CpuUsage};
use crate::environment::Environment;
use crate::fleet::{Fleet, FleetReport};
use crate::outcome::{self, Outcome};
use crate::submit::{Paced, Submitter};

/// How a scenario submits its jobs.
#[derive(Clone, Copy)]
pub enum Load {
    /// `jobs` through `POST /v1/jobs/batch`, `batch_size` per request, `concurrency` in flight.
    Batched {
        jobs: usize,
        batch_size: usize,
        concurrency: usize,
    },
    /// `jobs` through `POST /v1/jobs` from `concurrency` client tasks.
    Single { jobs: usize, concurrency: usize },
    /// `rate` jobs per second through `POST /v1/jobs` for `duration`.
    Paced { rate: u32, duration: Duration },
}

impl Load {
    fn jobs(&self) -> usize {
        match *self {
            Self::Batched { jobs, .. } | Self::Single { jobs, .. } => jobs,
            Self::Paced { rate, duration } => {
                (f64::from(rate.max(1)) * duration.as_secs_f64()).round() as usize
            }
        }
    }

    /// `jobs` submitted the same way (a paced load warms up one-by-one, 8 at a time).
    fn warm_up(self, jobs: usize) -> Self {
        match self {
            Self::Batched {
                batch_size,
                concurrency,
                ..
            } => Self::Batched {
                jobs,
                batch_size,
                concurrency,
            },
            Self::Single { concurrency, .. } => Self::Single { jobs, concurrency },
            Self::Paced { .. } => Self::Single {
                jobs,
                concurrency: 8,
            },
        }
    }

    /// Submits the load; a paced one reports its pacing and HTTP round trips.
    async fn submit(self, submitter: &Submitter) -> anyhow::Result<Option<Paced>> {
        match self {
            Self::Batched {
                jobs,
                batch_size,
                concurrency,
            } => submitter
                .submit_batched(jobs, batch_size, concurrency)
                .await
                .map(|()| None),
            Self::Single { jobs, concurrency } => submitter
                .submit_concurrently(jobs, concurrency)
                .await
                .map(|()| None),
            Self::Paced { rate, duration } => {
                submitter.submit_paced(rate, duration).await.map(Some)
            }
        }
    }
}

/// Everything one scenario measured.
pub struct ScenarioResult {
    pub namespace: Namespace,
    pub jobs: usize,
    /// Jobs run before the measured ones; they count in the round trips' denominator.
    pub warmup_jobs: usize,
    /// First submission → last 202.
    pub accepted_in: Duration,
    /// First submission → last `finished_at`.
    pub end_to_end: Duration,
    pub outcome: Outcome,
    pub fleet: FleetReport,
    pub cpu: CpuUsage,
    /// Only for [`Load::Paced`].
    pub paced: Option<Paced>,
}

impl ScenarioResult {
    pub fn jobs_per_second(&self) -> f64 {
        self.jobs as f64 / self.end_to_end.as_secs_f64()
    }

    pub fn round_trips_per_job(&self) -> f64 {
        // The servers report one total at exit, so the warm-up's jobs are counted too.
        self.fleet.round_trips() as f64 / (self.jobs + self.warmup_jobs) as f64
    }
}

/// What the load phase produced, before the fleet is stopped.
struct Driven {
    accepted_in: Duration,
    end_to_end: Duration,
    outcome: Outcome,
    cpu: CpuUsage,
    paced: Option<Paced>,
}

/// Runs `load` against a fresh fleet labelled `label`.
pub async fn run(env: &Environment, label: &str, load: Load) -> anyhow::Result<ScenarioResult> {
    let fleet = Fleet::start(env, label).await?;
    let namespace = fleet.namespace.clone();
    let jobs = load.jobs();
    let driven = drive(env, &fleet, load).await;
    // Stop the fleet (and delete its vhost) whether or not the load succeeded.
    let report = fleet.stop(env).await;
    let driven = driven?;
    Ok(ScenarioResult {
        namespace,
        jobs,
        warmup_jobs: env.warmup_jobs,
        accepted_in: driven.accepted_in,
        end_to_end: driven.end_to_end,
        outcome: driven.outcome,
        fleet: report?,
        cpu: driven.cpu,
        paced: driven.paced,
    })
}

async fn drive(env: &Environment, fleet: &Fleet, load: Load) -> anyhow::Result<Driven> {
    let submitter = Submitter::new(env.http.clone(), &fleet.base_url, &fleet.key);
    let (api_pid, worker_pids) = fleet.pids();
    let jobs = load.jobs();
    let submitter = &submitter;
    let submitting = |load: Load| async move {
        tokio::time::timeout(env.deadline, load.submit(submitter))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "submitting {} jobs took longer than {:?}",
                    load.jobs(),
                    env.deadline
                )
            })?
    };
    if env.warmup_jobs > 0 {
        submitting(load.warm_up(env.warmup_jobs))
            .await
            .context("warming up")?;
        outcome::wait_all_succeeded(
            env.pool(),
            &fleet.namespace,
            None,
            env.warmup_jobs,
            env.deadline,
        )
        .await
        .context("warming up")?;
    }
    let before = CpuSnapshot::take(Some(api_pid), &worker_pids);
    // Measured jobs are those created from here on (created_at is PostgreSQL's clock, the
    // same machine's).
    let first_submit = Utc::now();
    let started = Instant::now();
    let paced = submitting(load).await?;
    let accepted_in = started.elapsed();
    outcome::wait_all_succeeded(
        env.pool(),
        &fleet.namespace,
        Some(first_submit),
        jobs,
        env.deadline,
    )
    .await?;
    let after = CpuSnapshot::take(Some(api_pid), &worker_pids);
    let outcome = outcome::summarise(env.pool(), &fleet.namespace, first_submit).await?;
    let end_to_end = (outcome.last_finished - first_submit)
        .to_std()
        .map_err(|_| {
            anyhow::anyhow!("the last job finished before the first was submitted (clock skew?)")
        })?;
    Ok(Driven {
        accepted_in,
        end_to_end,
        outcome,
        cpu: before.usage_until(&after),
        paced,
    })
}
