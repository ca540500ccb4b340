//! One tl-engine scenario from start to finish: a fresh fleet, a small warm-up load (so
//! lazily opened connections and channels are not measured), the load, the wait until
//! every job has succeeded, then the measures — and the fleet stopped whatever happened.
//! The warm-up and the measured phase are also the `--scale` mode's, on its own fleet.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};

use engine_shared::Namespace;

use crate::cli::Args;
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
    pub fn jobs(&self) -> usize {
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

/// One of the scenarios the flags ask for: its namespace label, its title in the report,
/// and its load.
pub struct Planned {
    pub label: &'static str,
    pub title: String,
    pub load: Load,
}

/// The batched, one-by-one and paced scenarios, in that order, less those skipped.
pub fn planned(args: &Args) -> Vec<Planned> {
    let mut planned = Vec::new();
    if !args.skip_batched {
        planned.push(Planned {
            label: "batch",
            title: format!(
                "batched: POST /v1/jobs/batch, {} per request, {} in flight",
                args.batch_size, args.batch_concurrency
            ),
            load: Load::Batched {
                jobs: args.jobs,
                batch_size: args.batch_size,
                concurrency: args.batch_concurrency,
            },
        });
    }
    if !args.skip_single {
        planned.push(Planned {
            label: "single",
            title: format!(
                "one-by-one: POST /v1/jobs from {} client tasks",
                args.single_concurrency
            ),
            load: Load::Single {
                jobs: args.single_jobs,
                concurrency: args.single_concurrency,
            },
        });
    }
    if !args.skip_latency {
        planned.push(Planned {
            label: "paced",
            title: format!(
                "paced latency: POST /v1/jobs at {}/s for {} s",
                args.latency_rate, args.latency_secs
            ),
            load: Load::Paced {
                rate: args.latency_rate,
                duration: Duration::from_secs(args.latency_secs),
            },
        });
    }
    planned
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
    /// The instant just before the first measured submission: the measured jobs are the
    /// namespace's rows created since.
    pub measured_since: DateTime<Utc>,
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
pub struct Driven {
    /// First submission → last 202.
    pub accepted_in: Duration,
    /// First submission → last `finished_at`.
    pub end_to_end: Duration,
    pub outcome: Outcome,
    /// The instant just before the first submission (see [`ScenarioResult`]).
    pub measured_since: DateTime<Utc>,
    pub cpu: CpuUsage,
    /// Only for [`Load::Paced`].
    pub paced: Option<Paced>,
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
        measured_since: driven.measured_since,
        fleet: report?,
        cpu: driven.cpu,
        paced: driven.paced,
    })
}

async fn drive(env: &Environment, fleet: &Fleet, load: Load) -> anyhow::Result<Driven> {
    let submitter = Submitter::new(env.http.clone(), &fleet.base_url, &fleet.key);
    warm_up(env, &fleet.namespace, &submitter, load).await?;
    let (api_pid, worker_pids) = fleet.pids();
    let (driven, ()) = measure(
        env,
        &fleet.namespace,
        &submitter,
        load,
        (api_pid, &worker_pids),
        async { Ok(()) },
    )
    .await?;
    Ok(driven)
}

/// Submits `--warmup-jobs` jobs the way `load` does and waits until they have succeeded
/// (nothing when 0), so that connections, channels and the topology, all opened lazily, are
/// not measured.
pub async fn warm_up(
    env: &Environment,
    namespace: &Namespace,
    submitter: &Submitter,
    load: Load,
) -> anyhow::Result<()> {
    if env.warmup_jobs == 0 {
        return Ok(());
    }
    let since = Utc::now();
    submit_within(env, submitter, load.warm_up(env.warmup_jobs))
        .await
        .context("warming up")?;
    outcome::wait_all_succeeded(
        env.pool(),
        namespace,
        Some(since),
        env.warmup_jobs,
        env.deadline,
    )
    .await
    .context("warming up")
}

/// Submits `load` and waits until every job of it has succeeded, while `alongside` runs
/// too (the scale mode kills a worker there); CPU is read for `pids` (the API's, the
/// workers') around it. Measured jobs are the namespace's rows created from the first
/// submission on, so earlier jobs of the namespace must have finished.
pub async fn measure<T>(
    env: &Environment,
    namespace: &Namespace,
    submitter: &Submitter,
    load: Load,
    (api_pid, worker_pids): (i32, &[i32]),
    alongside: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(Driven, T)> {
    let jobs = load.jobs();
    let before = CpuSnapshot::take(Some(api_pid), worker_pids);
    // Measured jobs are those created from here on (created_at is PostgreSQL's clock, the
    // same machine's).
    let first_submit = Utc::now();
    let started = Instant::now();
    let loaded = async {
        let paced = submit_within(env, submitter, load).await?;
        let accepted_in = started.elapsed();
        outcome::wait_all_succeeded(
            env.pool(),
            namespace,
            Some(first_submit),
            jobs,
            env.deadline,
        )
        .await?;
        anyhow::Ok((paced, accepted_in))
    };
    let ((paced, accepted_in), beside) = tokio::try_join!(loaded, alongside)?;
    let after = CpuSnapshot::take(Some(api_pid), worker_pids);
    let outcome = outcome::summarise(env.pool(), namespace, first_submit).await?;
    let end_to_end = (outcome.last_finished - first_submit)
        .to_std()
        .map_err(|_| {
            anyhow::anyhow!("the last job finished before the first was submitted (clock skew?)")
        })?;
    let driven = Driven {
        accepted_in,
        end_to_end,
        outcome,
        measured_since: first_submit,
        cpu: before.usage_until(&after),
        paced,
    };
    Ok((driven, beside))
}

/// Submits `load`, failing if that takes longer than `--deadline-secs`.
async fn submit_within(
    env: &Environment,
    submitter: &Submitter,
    load: Load,
) -> anyhow::Result<Option<Paced>> {
    tokio::time::timeout(env.deadline, load.submit(submitter))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "submitting {} jobs took longer than {:?}",
                load.jobs(),
                env.deadline
            )
        })?
}
