//! Prometheus metrics: one registry per process, served as text on `/metrics` by the API and
//! by each worker. Names follow Prometheus conventions (`tl_` prefix, `_total` counters,
//! `_seconds` histograms); labels are bounded sets (namespace, kind, queue, dependency),
//! never ids.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::{Kind, Namespace, QueueName};

/// A job's labels: which tenant, what it does, where it waits.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub namespace: String,
    pub kind: String,
    pub queue: String,
}

impl JobLabels {
    /// The labels of a job of `kind` in `namespace`'s `queue`.
    pub fn new(namespace: &Namespace, kind: &Kind, queue: &QueueName) -> Self {
        Self {
            namespace: namespace.as_str().to_owned(),
            kind: kind.as_str().to_owned(),
            queue: queue.as_str().to_owned(),
        }
    }
}

/// One queue of one namespace (vhost).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub namespace: String,
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

/// Jobs the rescuer handed back to work, and why (`lease_expired`, `unstarted`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RescueLabels {
    pub namespace: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabels {
    /// `postgres`, `rabbitmq`, `redis` or `s3`.
    pub dependency: String,
}

/// Builds each labelled histogram with the same buckets.
#[derive(Clone)]
pub struct Buckets(fn() -> Histogram);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        (self.0)()
    }
}

/// 1 ms … ~65 s, doubling: handler durations and queue waits alike.
fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric of the fleet. Processes fill the ones that concern them (the API submits,
/// workers run), so each family appears where it is meaningful.
pub struct Metrics {
    pub submitted: Family<JobLabels, Counter>,
    pub started: Family<JobLabels, Counter>,
    pub succeeded: Family<JobLabels, Counter>,
    pub retried: Family<JobLabels, Counter>,
    pub dead: Family<JobLabels, Counter>,
    pub cancelled: Family<JobLabels, Counter>,
    /// Handler run time of each attempt.
    pub duration: Family<JobLabels, Histogram, Buckets>,
    /// From submission (the id's time) to the first attempt's start.
    pub start_latency: Family<JobLabels, Histogram, Buckets>,
    pub limit_deferrals: Family<JobLabels, Counter>,
    /// Job messages refused because their body disagrees with their job's row.
    pub forged_messages: Family<NamespaceLabels, Counter>,
    pub queue_messages: Family<QueueLabels, Gauge>,
    pub queue_consumers: Family<QueueLabels, Gauge>,
    pub outbox_backlog: Family<NamespaceLabels, Gauge>,
    pub dependency_errors: Family<DependencyLabels, Counter>,
    pub rescued: Family<RescueLabels, Counter>,
    /// 1 while the relay leaves a namespace out because its vhost refuses publishes.
    pub publish_blocked: Family<NamespaceLabels, Gauge>,
    /// Readiness checks actually run (the rest were answered from the cached result).
    pub readiness_checks: Counter,
    /// A worker's jobs of each namespace holding a slot now.
    pub namespace_running: Family<NamespaceLabels, Gauge>,
    /// A worker's deliveries of each namespace received (prefetched) and waiting for a slot.
    pub namespace_waiting: Family<NamespaceLabels, Gauge>,
    /// Slot-seconds each namespace's jobs held on a worker, added as each slot is given back.
    pub namespace_job_seconds: Family<NamespaceLabels, Counter<f64, AtomicU64>>,
    /// API keys looked up in PostgreSQL (cache misses): a flood of unknown keys shows here.
    pub key_lookups: Counter,
    registry: Registry,
}

impl Metrics {
    /// Every family, then one registration per metric (name, help, family) in the order of
    /// the fields. Longer than a screen on purpose: it is a table to read top to bottom, and
    /// cutting it in parts would only scatter the metric names.
    fn new() -> Self {
        let buckets = || Family::new_with_constructor(Buckets(seconds_buckets));
        let mut metrics = Self {
            submitted: Family::default(),
            started: Family::default(),
            succeeded: Family::default(),
            retried: Family::default(),
            dead: Family::default(),
            cancelled: Family::default(),
            duration: buckets(),
            start_latency: buckets(),
            limit_deferrals: Family::default(),
            forged_messages: Family::default(),
            queue_messages: Family::default(),
            queue_consumers: Family::default(),
            outbox_backlog: Family::default(),
            dependency_errors: Family::default(),
            rescued: Family::default(),
            publish_blocked: Family::default(),
            readiness_checks: Counter::default(),
            namespace_running: Family::default(),
            namespace_waiting: Family::default(),
            namespace_job_seconds: Family::default(),
            key_lookups: Counter::default(),
            registry: Registry::default(),
        };
        let registry = &mut metrics.registry;
        registry.register(
            "tl_jobs_submitted",
            "Jobs accepted by the API (new ones, not idempotent repeats)",
            metrics.submitted.clone(),
        );
        registry.register(
            "tl_jobs_started",
            "Attempts started by workers",
            metrics.started.clone(),
        );
        registry.register(
            "tl_jobs_succeeded",
            "Jobs that finished successfully",
            metrics.succeeded.clone(),
        );
        registry.register(
            "tl_jobs_retried",
            "Failed attempts that will be retried",
            metrics.retried.clone(),
        );
        registry.register(
            "tl_jobs_dead",
            "Jobs out of attempts, fatal, poison or crash-looping",
            metrics.dead.clone(),
        );
        registry.register(
            "tl_jobs_cancelled",
            "Jobs cancelled: waiting ones by the API, running ones by their worker",
            metrics.cancelled.clone(),
        );
        registry.register(
            "tl_job_duration_seconds",
            "Handler run time per attempt",
            metrics.duration.clone(),
        );
        registry.register(
            "tl_job_start_latency_seconds",
            "Submission to the first attempt's start",
            metrics.start_latency.clone(),
        );
        registry.register(
            "tl_limit_deferrals",
            "Jobs parked because a rate or concurrency limit held them back",
            metrics.limit_deferrals.clone(),
        );
        registry.register(
            "tl_forged_messages",
            "Job messages refused unrun: their kind or queue disagrees with the job's row",
            metrics.forged_messages.clone(),
        );
        registry.register(
            "tl_queue_messages",
            "Messages ready in a work queue (read at scrape time)",
            metrics.queue_messages.clone(),
        );
        registry.register(
            "tl_queue_consumers",
            "Consumers of a work queue (read at scrape time)",
            metrics.queue_consumers.clone(),
        );
        registry.register(
            "tl_outbox_backlog",
            "Due jobs in PostgreSQL not yet published (read at scrape time)",
            metrics.outbox_backlog.clone(),
        );
        registry.register(
            "tl_dependency_errors",
            "Failed calls to PostgreSQL, RabbitMQ, Redis or S3",
            metrics.dependency_errors.clone(),
        );
        registry.register(
            "tl_jobs_rescued",
            "Jobs the rescuer handed back to work: a running attempt whose lease expired, or a due job nobody started",
            metrics.rescued.clone(),
        );
        registry.register(
            "tl_namespace_publish_blocked",
            "1 while the relay skips a namespace whose vhost refuses publishes (the others carry on)",
            metrics.publish_blocked.clone(),
        );
        registry.register(
            "tl_readiness_checks",
            "Readiness checks run against the dependencies (concurrent and repeated /readyz calls share one)",
            metrics.readiness_checks.clone(),
        );
        registry.register(
            "tl_namespace_running",
            "A worker's running jobs of a namespace (each holds one of its slots)",
            metrics.namespace_running.clone(),
        );
        registry.register(
            "tl_namespace_waiting",
            "A worker's deliveries of a namespace received and not started: waiting for a slot",
            metrics.namespace_waiting.clone(),
        );
        registry.register(
            "tl_namespace_job_seconds",
            "Seconds of worker slots a namespace's jobs used, counted as each slot is given back",
            metrics.namespace_job_seconds.clone(),
        );
        registry.register(
            "tl_api_key_lookups",
            "API key checks that reached PostgreSQL (the rest were answered from memory)",
            metrics.key_lookups.clone(),
        );
        metrics
    }

    /// Counts one failed call to `dependency`.
    pub fn dependency_error(&self, dependency: &str) {
        self.dependency_errors
            .get_or_create(&DependencyLabels {
                dependency: dependency.to_owned(),
            })
            .inc();
    }

    /// Observes `took` in `histogram` for `labels`.
    pub fn observe(
        histogram: &Family<JobLabels, Histogram, Buckets>,
        labels: &JobLabels,
        took: Duration,
    ) {
        histogram.get_or_create(labels).observe(took.as_secs_f64());
    }

    /// The text exposition format (OpenMetrics text, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_encode_with_their_labels() {
        let metrics = Metrics::new();
        let labels = JobLabels::new(
            &Namespace::parse("acme").unwrap(),
            &Kind::parse("noop").unwrap(),
            &QueueName::parse("default").unwrap(),
        );
        metrics.submitted.get_or_create(&labels).inc();
        Metrics::observe(&metrics.duration, &labels, Duration::from_millis(3));
        metrics.dependency_error("redis");
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"tl_jobs_submitted_total{namespace="acme",kind="noop",queue="default"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"tl_job_duration_seconds_count{namespace="acme",kind="noop",queue="default"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"tl_dependency_errors_total{dependency="redis"} 1"#),
            "{text}"
        );
    }
}
