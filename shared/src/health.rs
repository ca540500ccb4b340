//! Readiness in the seed documents' format: each dependency `healthy` or
//! `unhealthy: <reason>`, and an overall `healthy` (200), `degraded` or `unhealthy` (503).
//! PostgreSQL holds every job's state, so without it a process is `unhealthy`; without
//! RabbitMQ, Redis or storage it still does part of its work, so it is `degraded`.

use std::future::Future;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use crate::limits::Limiter;
use crate::objects::ObjectStore;
use crate::store::Store;

/// The most one dependency check may take; a slower answer is `unhealthy: no answer`.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What a process depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dependency {
    Postgres,
    RabbitMq,
    Redis,
    Storage,
}

impl Dependency {
    /// The key in the report (the seed documents' names, plus `s3`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::RabbitMq => "rabbitmq",
            Self::Redis => "redis",
            Self::Storage => "s3",
        }
    }

    /// Whether losing it makes the process `unhealthy` rather than `degraded`.
    fn critical(self) -> bool {
        matches!(self, Self::Postgres)
    }
}

/// The overall verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Healthy,
    Degraded,
    Unhealthy,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// The checked dependencies of one readiness probe.
#[derive(Debug, Default)]
pub struct Readiness {
    checks: Vec<(Dependency, Result<(), String>)>,
}

impl Readiness {
    /// Records `dependency` as `result` (an error is its reason).
    pub fn record(&mut self, dependency: Dependency, result: Result<(), String>) {
        self.checks.push((dependency, result));
    }

    /// 200 when healthy, 503 otherwise (the seed documents' rule).
    pub fn http_status(&self) -> u16 {
        if self.verdict() == Verdict::Healthy {
            200
        } else {
            503
        }
    }

    pub fn verdict(&self) -> Verdict {
        self.checks
            .iter()
            .filter_map(|(dependency, result)| {
                result.as_ref().err().map(|_| {
                    if dependency.critical() {
                        Verdict::Unhealthy
                    } else {
                        Verdict::Degraded
                    }
                })
            })
            .max()
            .unwrap_or(Verdict::Healthy)
    }

    /// The report for anyone who can reach the port: the same verdicts, but every reason
    /// is `unavailable`, because reasons name namespaces, buckets, hosts and users.
    pub fn to_public_json(&self) -> Value {
        let mut report = self.to_json();
        if let Some(dependencies) = report["dependencies"].as_object_mut() {
            for state in dependencies.values_mut() {
                if state.as_str().is_some_and(|s| s.starts_with("unhealthy")) {
                    *state = Value::String("unhealthy: unavailable".into());
                }
            }
        }
        report
    }

    /// `{status, timestamp, dependencies: {name: "healthy" | "unhealthy: reason"}}`.
    pub fn to_json(&self) -> Value {
        let dependencies: Map<String, Value> = self
            .checks
            .iter()
            .map(|(dependency, result)| {
                let state = match result {
                    Ok(()) => "healthy".to_owned(),
                    Err(reason) => format!("unhealthy: {reason}"),
                };
                (dependency.name().to_owned(), Value::String(state))
            })
            .collect();
        json!({
            "status": self.verdict().as_str(),
            "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            "dependencies": dependencies,
        })
    }
}

/// Runs `check` for at most [`CHECK_TIMEOUT`]: `Err` carries the reason, the error's chain
/// cut to 200 characters (errors here never carry secrets: URLs are held as secrets and
/// lapin's errors are redacted).
pub async fn checked<F>(check: F) -> Result<(), String>
where
    F: Future<Output = anyhow::Result<()>>,
{
    checked_within(CHECK_TIMEOUT, check).await
}

async fn checked_within<F>(limit: Duration, check: F) -> Result<(), String>
where
    F: Future<Output = anyhow::Result<()>>,
{
    match tokio::time::timeout(limit, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("{error:#}").chars().take(200).collect()),
        Err(_) => Err(format!("no answer within {:?}", limit)),
    }
}

/// Checks, concurrently, what every process shares — PostgreSQL, Redis and (when
/// configured) storage — and `rabbitmq`, whose meaning differs between the API (a channel
/// to each vhost) and a worker (its consumers), into one report.
pub async fn check_dependencies<B>(
    store: &Store,
    limiter: &Limiter,
    objects: Option<&ObjectStore>,
    rabbitmq: B,
) -> Readiness
where
    B: Future<Output = Result<(), String>>,
{
    let storage = async {
        match objects {
            Some(objects) => Some(checked(objects.ping()).await),
            None => None,
        }
    };
    let (postgres, rabbitmq, redis, storage) = tokio::join!(
        checked(store.ping()),
        rabbitmq,
        checked(limiter.ping()),
        storage
    );
    let mut readiness = Readiness::default();
    readiness.record(Dependency::Postgres, postgres);
    readiness.record(Dependency::RabbitMq, rabbitmq);
    readiness.record(Dependency::Redis, redis);
    if let Some(storage) = storage {
        readiness.record(Dependency::Storage, storage);
    }
    readiness
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_down_is_unhealthy_anything_else_degraded() {
        let mut all_up = Readiness::default();
        all_up.record(Dependency::Postgres, Ok(()));
        all_up.record(Dependency::Redis, Ok(()));
        assert_eq!(all_up.verdict(), Verdict::Healthy);

        let mut redis_down = Readiness::default();
        redis_down.record(Dependency::Postgres, Ok(()));
        redis_down.record(Dependency::Redis, Err("refused".into()));
        assert_eq!(redis_down.verdict(), Verdict::Degraded);
        assert_eq!(
            redis_down.to_json()["dependencies"]["redis"],
            "unhealthy: refused"
        );

        let mut both_down = Readiness::default();
        both_down.record(Dependency::Postgres, Err("refused".into()));
        both_down.record(Dependency::Redis, Err("refused".into()));
        assert_eq!(both_down.verdict(), Verdict::Unhealthy);
        assert_eq!(both_down.to_json()["status"], "unhealthy");
    }

    #[tokio::test]
    async fn a_check_that_hangs_is_unhealthy_after_the_timeout() {
        let mut readiness = Readiness::default();
        let hung = checked_within(Duration::from_millis(10), std::future::pending()).await;
        readiness.record(Dependency::Storage, hung);
        assert_eq!(readiness.verdict(), Verdict::Degraded);
        assert!(
            readiness.to_json()["dependencies"]["s3"]
                .as_str()
                .unwrap()
                .contains("no answer")
        );
    }
}
