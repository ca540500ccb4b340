//! The chaos run's faults: which ones it injects, when, and the injector that carries them
//! out on the fleet and the servers. A worker is SIGKILLed every 2-5 s (and a replacement
//! started, so 3 keep running); each server fault (the API, RabbitMQ, Redis, PostgreSQL,
//! the run's S3 server) happens once, at its own point of the fault phase, spread evenly
//! over it. Faults happen one at a time — a restart is waited for until the server answers
//! again before the next fault — and each prints a timeline line with its time offset.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use rand::Rng;
use rand::rngs::StdRng;

use super::s3::S3Server;
use super::servers;
use crate::environment::Environment;
use crate::fleet::Fleet;

/// The longest the API's kill waits for the client to have a batch in flight.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(5);

/// The pause between two worker kills, in milliseconds.
const KILL_PAUSE_MS: std::ops::RangeInclusive<u64> = 2_000..=5_000;

/// One kind of fault the run can inject (`--chaos-faults`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL a random worker every 2-5 s and start a replacement.
    Workers,
    /// SIGKILL the API once and start it again on the same port.
    Api,
    /// `rabbitmqctl stop_app` and `start_app`, once.
    Rabbitmq,
    /// `redis-cli shutdown nosave` and `redis-server` again, once.
    Redis,
    /// `pg_ctlcluster ... restart -m immediate`, once.
    Postgres,
    /// SIGKILL the run's own s3s-fs and start it again on the same port and folder, once.
    S3,
}

impl Fault {
    /// The servers restarted once each, in the order they happen.
    const RESTARTS: [Fault; 5] = [
        Fault::Api,
        Fault::Rabbitmq,
        Fault::Redis,
        Fault::Postgres,
        Fault::S3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Workers => "workers",
            Self::Api => "api",
            Self::Rabbitmq => "rabbitmq",
            Self::Redis => "redis",
            Self::Postgres => "postgres",
            Self::S3 => "s3",
        }
    }

    /// Whether the fault takes down a server the whole machine shares.
    pub fn is_shared(self) -> bool {
        matches!(self, Self::Rabbitmq | Self::Redis | Self::Postgres)
    }
}

/// When each chosen server fault happens: the k-th of n at (k + 1) / (n + 1) of the phase.
fn restart_offsets(faults: &[Fault], phase: Duration) -> Vec<(Duration, Fault)> {
    let chosen: Vec<Fault> = Fault::RESTARTS
        .into_iter()
        .filter(|fault| faults.contains(fault))
        .collect();
    let slots = u32::try_from(chosen.len() + 1).unwrap_or(u32::MAX);
    (1..)
        .zip(chosen)
        .map(|(k, fault)| (phase * k / slots, fault))
        .collect()
}

/// One fault as it happened.
pub struct Entry {
    /// From the start of the run (the first submission) to the fault's start, and how long
    /// it took until the fleet or server was back.
    pub at: Duration,
    pub took: Duration,
    pub fault: Fault,
}

/// Everything the fault phase did.
#[derive(Default)]
pub struct FaultLog {
    pub entries: Vec<Entry>,
    /// When the last fault ended (the fleet or server back), by the wall clock, which the
    /// rows' `finished_at` is compared with.
    pub last_fault_end: Option<DateTime<Utc>>,
    /// Why the phase stopped early, if it did.
    pub aborted: Option<anyhow::Error>,
}

impl FaultLog {
    pub fn count(&self, fault: Fault) -> usize {
        self.entries.iter().filter(|e| e.fault == fault).count()
    }
}

/// Injects the faults into one fleet, its S3 server and the machine's servers.
pub struct Injector<'a> {
    pub env: &'a Environment,
    pub fleet: &'a mut Fleet,
    pub s3: &'a mut S3Server,
    /// Which worker dies and the pauses between kills.
    pub rng: StdRng,
    /// The run's start: the timeline's zero.
    pub started: Instant,
    /// Jobs the client has had accepted so far, shown on each timeline line.
    pub accepted: Arc<AtomicUsize>,
    /// The client's requests in flight: the API is killed while one is.
    pub in_flight: Arc<AtomicUsize>,
}

impl Injector<'_> {
    /// Injects `faults` over `phase`, printing a timeline line per fault. A fault that
    /// cannot be carried out (a server that does not come back) ends the phase early; the
    /// error is in the log.
    pub async fn run(mut self, faults: &[Fault], phase: Duration) -> FaultLog {
        let mut log = FaultLog::default();
        let mut restarts = restart_offsets(faults, phase).into_iter().peekable();
        let mut next_kill = faults.contains(&Fault::Workers).then(|| self.pause());
        loop {
            let kill = next_kill.filter(|at| *at < phase);
            let restart = restarts.peek().map(|(at, _)| *at);
            let (at, fault) = match (kill, restart) {
                (Some(kill), Some(restart)) if kill < restart => (kill, Fault::Workers),
                (_, Some(_)) => restarts.next().expect("peeked"),
                (Some(kill), None) => (kill, Fault::Workers),
                (None, None) => break,
            };
            tokio::time::sleep_until((self.started + at).into()).await;
            let began = self.started.elapsed();
            let outcome = self.inject(fault).await;
            let ended = self.started.elapsed();
            match outcome {
                Ok(what) => self.print(began, ended - began, fault, &what),
                Err(error) => {
                    println!(
                        "  {:>7}  {:<9} FAILED: {error:#}",
                        offset(began),
                        fault.name()
                    );
                    log.aborted = Some(error.context(format!("the {} fault", fault.name())));
                    break;
                }
            }
            log.entries.push(Entry {
                at: began,
                took: ended - began,
                fault,
            });
            log.last_fault_end = Some(Utc::now());
            // The next kill comes 2-5 s after this fault ended, never at once after a restart.
            if let Some(kill) = next_kill.as_mut()
                && (fault == Fault::Workers || *kill < ended)
            {
                *kill = ended + self.pause();
            }
        }
        log
    }

    fn pause(&mut self) -> Duration {
        Duration::from_millis(self.rng.random_range(KILL_PAUSE_MS))
    }

    fn print(&self, at: Duration, took: Duration, fault: Fault, what: &str) {
        println!(
            "  {:>7}  {:<9} {what}  [{:.2} s; {} jobs accepted so far]",
            offset(at),
            fault.name(),
            took.as_secs_f64(),
            self.accepted.load(Ordering::Relaxed)
        );
    }

    /// Carries out one fault; returns what happened, for the timeline.
    async fn inject(&mut self, fault: Fault) -> anyhow::Result<String> {
        match fault {
            Fault::Workers => self.kill_worker().await,
            Fault::Api => {
                let during = self.batch_in_flight().await;
                let victim = self.fleet.restart_api(self.env).await?;
                Ok(format!(
                    "SIGKILL {} (pid {}) {}; a new API answering /healthz at {}",
                    victim.name,
                    victim.pid,
                    if during {
                        "with a batch in flight"
                    } else {
                        "(no batch was in flight)"
                    },
                    self.fleet.base_url
                ))
            }
            Fault::Rabbitmq => {
                let amqp = amqp_address(&self.env.amqp_url)?;
                servers::restart_rabbitmq(&self.env.management, &amqp).await
            }
            Fault::Redis => servers::restart_redis().await,
            Fault::Postgres => servers::restart_postgres(self.env.pool()).await,
            Fault::S3 => {
                let away = self.s3.restart().await?;
                Ok(format!(
                    "SIGKILL the run's s3s-fs; answering again on {} after {:.2} s",
                    self.s3.endpoint(),
                    away.as_secs_f64()
                ))
            }
        }
    }

    /// Waits, up to [`IN_FLIGHT_WAIT`], until the client has a batch in flight, then a
    /// random 0-40 ms more (so the kill falls before, during or after the batch's commit):
    /// the client must resend it, and its resend may find the jobs stored. Returns whether
    /// a batch was in flight.
    async fn batch_in_flight(&mut self) -> bool {
        let deadline = Instant::now() + IN_FLIGHT_WAIT;
        while self.in_flight.load(Ordering::Relaxed) == 0 {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let into_it = Duration::from_millis(self.rng.random_range(0..=40));
        tokio::time::sleep(into_it).await;
        true
    }

    /// SIGKILLs a random running worker and starts a replacement, waiting until it consumes.
    async fn kill_worker(&mut self) -> anyhow::Result<String> {
        let running = self.fleet.worker_count();
        anyhow::ensure!(running > 0, "no worker is running");
        let victim = self
            .fleet
            .kill_worker(self.rng.random_range(0..running))
            .await?;
        let what = format!(
            "SIGKILL {} (pid {}); a replacement consuming, {} running",
            victim.name, victim.pid, running
        );
        self.fleet.add_workers(self.env, 1).await?;
        Ok(what)
    }
}

/// `+12.3 s`.
pub fn offset(at: Duration) -> String {
    format!("+{:.1} s", at.as_secs_f64())
}

/// The broker's `host:port` from the AMQP URL.
fn amqp_address(amqp_url: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(amqp_url).context("--amqp-url is not a URL")?;
    Ok(format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5672)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_spread_evenly_in_a_fixed_order() {
        let offsets = restart_offsets(
            &[Fault::S3, Fault::Workers, Fault::Api],
            Duration::from_secs(60),
        );
        let got: Vec<(u64, Fault)> = offsets
            .into_iter()
            .map(|(at, fault)| (at.as_secs(), fault))
            .collect();
        assert_eq!(got, vec![(20, Fault::Api), (40, Fault::S3)]);
    }
}
