//! Admission: may this job start now under its kind's limits? Decided before the job moves
//! to `running`, so a limited job is deferred without touching PostgreSQL and without
//! using an attempt.
//!
//! A rate limit *reserves*: the first check takes the job's turn in the GCRA queue and
//! says how long until it comes. The message then waits in delay tiers (never in worker
//! memory) carrying its turn in the `x-tl-not-before` header, and is not checked again, so
//! a backlog behind a slow limit costs one Redis call per job, not one per retry. The last
//! stretch of a wait, shorter than the shortest tier, is waited here holding the delivery,
//! so turns keep their spacing. A concurrency limit leases a slot for the job's run (10 s,
//! renewed every 3 s); a full limit defers with backoff, but never past the end of the
//! earliest lease, so a killed worker's slots hold jobs back for seconds, not a backoff.
//! A namespace's fleet-wide cap (`fleet_max_running`) is such a slot too, taken first, for
//! every job of the namespace.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::message::Delivery;
use lapin::types::AMQPValue;
use tokio::task::AbortHandle;

use engine_shared::envelope::Envelope;
use engine_shared::limits::{
    KeyClass, Limit, Limiter, LimiterError, RateOutcome, RedisErrorPolicy, redis_key,
};
use engine_shared::namespace::NamespaceSpec;

use crate::context::WorkerContext;

/// The header holding a deferred job's reserved turn (milliseconds since the epoch).
pub const NOT_BEFORE_HEADER: &str = "x-tl-not-before";
/// The header counting a job's deferrals, for the backoff of concurrency deferrals.
pub const DEFERRALS_HEADER: &str = "x-tl-deferrals";

/// A slot's lease: long enough to survive two failed renewals, short enough that a killed
/// worker's slots free themselves within seconds (the tail of a recovery after a crash).
const SLOT_LEASE: Duration = Duration::from_secs(10);
/// A running job renews its slot this often (a job shorter than this never renews).
const SLOT_RENEWAL: Duration = Duration::from_secs(3);
/// The longest a concurrency (or Redis outage) deferral waits.
const MAX_DEFERRAL: Duration = Duration::from_secs(30);

/// What admission decided.
pub enum Admission {
    /// Start it. The leased slots (the namespace's fleet-wide cap, the kind's concurrency
    /// limit) must be released when the job ends.
    Run(Vec<Slot>),
    /// Not now: park the message for `delay`; `not_before` is its reserved rate turn.
    Defer {
        delay: Duration,
        not_before: Option<u64>,
    },
}

/// A leased concurrency slot, renewed in the background until released.
pub struct Slot {
    key: String,
    holder: String,
    renewal: AbortHandle,
}

/// A slot dropped without `release` (its execution was abandoned at the end of a shutdown
/// grace period) stops being renewed, so its lease runs out and frees it.
impl Drop for Slot {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

impl Slot {
    /// Stops renewing and gives the slot back (a failure leaves it to expire).
    pub async fn release(self, limiter: &Limiter) {
        self.renewal.abort();
        if let Err(error) = limiter.release_slot(&self.key, &self.holder).await {
            tracing::debug!(%error, "could not release a concurrency slot; it will expire");
        }
    }
}

/// The deferrals this delivery already had, and its reserved turn.
struct Marks {
    deferrals: u32,
    not_before: Option<u64>,
}

fn marks(delivery: &Delivery) -> Marks {
    let mut marks = Marks {
        deferrals: 0,
        not_before: None,
    };
    if let Some(headers) = delivery.properties.headers() {
        for (key, value) in headers.inner() {
            let number = match value {
                AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
                AMQPValue::LongUInt(n) => Some(u64::from(*n)),
                AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
                _ => None,
            };
            match key.as_str() {
                NOT_BEFORE_HEADER => marks.not_before = number,
                DEFERRALS_HEADER => {
                    marks.deferrals = number.and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
                }
                _ => {}
            }
        }
    }
    marks
}

/// Deferrals of this delivery so far (0 for a fresh message).
pub fn deferrals(delivery: &Delivery) -> u32 {
    marks(delivery).deferrals
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Decides whether `envelope`'s job may start now: first under its namespace's fleet-wide
/// cap, then under its kind's limits (a slot taken for a job that is deferred anyway is
/// given back at once).
pub async fn admit(
    worker: &WorkerContext,
    spec: &NamespaceSpec,
    envelope: &Envelope,
    delivery: &Delivery,
) -> Admission {
    let marks = marks(delivery);
    let fleet = match fleet_slot(worker, spec, envelope, &marks).await {
        Ok(slot) => slot,
        Err(defer) => return defer,
    };
    match admit_kind(worker, spec, envelope, marks).await {
        Admission::Run(mut slots) => {
            slots.extend(fleet);
            Admission::Run(slots)
        }
        defer => {
            if let Some(slot) = fleet {
                slot.release(&worker.limiter).await;
            }
            defer
        }
    }
}

/// A slot under the namespace's `fleet_max_running`, if it has one; `Err` defers the job
/// while the cap is full. Redis unreachable: the job runs without the cap (logged and
/// counted) — a quota is not worth stopping every job of a namespace for.
async fn fleet_slot(
    worker: &WorkerContext,
    spec: &NamespaceSpec,
    envelope: &Envelope,
    marks: &Marks,
) -> Result<Option<Slot>, Admission> {
    let Some(cap) = spec.share.fleet_max_running else {
        return Ok(None);
    };
    let key = redis_key(spec, KeyClass::Running, "fleet", None);
    match take_slot(worker, key, cap, envelope).await {
        Ok(Ok(slot)) => Ok(Some(slot)),
        Ok(Err(earliest_end)) => Err(Admission::Defer {
            delay: full_limit_wait(deferral_backoff(worker, marks.deferrals), earliest_end),
            not_before: marks.not_before,
        }),
        Err(error) => {
            worker
                .limiter
                .report_failure(&error, "allow: running without the fleet-wide cap")
                .await;
            Ok(None)
        }
    }
}

/// Decides under the kind's rate and concurrency limits.
async fn admit_kind(
    worker: &WorkerContext,
    spec: &NamespaceSpec,
    envelope: &Envelope,
    marks: Marks,
) -> Admission {
    // A job under a kind's old name (an alias) is held to the kind's limits and shares its
    // budget: `[[limits]]` rules and Redis keys name the current kind.
    let kind = worker
        .registry
        .resolve(&envelope.kind)
        .unwrap_or(&envelope.kind)
        .as_str();
    let declared = worker.registry.limit(&envelope.kind);
    let Some(limit) = worker.limiter.limit_for(&spec.name, kind, declared) else {
        return Admission::Run(Vec::new());
    };
    let key = if limit.per_key {
        worker.registry.limit_key(&envelope.kind, &envelope.args)
    } else {
        None
    };
    let backoff = deferral_backoff(worker, marks.deferrals);

    // The job's rate turn once it has one: kept through concurrency deferrals, so waiting
    // for a slot never books (and wastes) another turn.
    let turn = match rate_turn(worker, spec, &limit, key.as_deref(), kind, &marks, backoff).await {
        Ok(turn) => turn,
        Err(defer) => return defer,
    };

    let Some(concurrency) = limit.concurrency else {
        return Admission::Run(Vec::new());
    };
    let slot_key = redis_key(spec, KeyClass::Slots, kind, key.as_deref());
    match take_slot(worker, slot_key, concurrency, envelope).await {
        Ok(Ok(slot)) => Admission::Run(vec![slot]),
        Ok(Err(earliest_end)) => Admission::Defer {
            delay: full_limit_wait(backoff, earliest_end),
            not_before: turn,
        },
        Err(error) => match on_redis_error(worker, &limit, &error, backoff).await {
            Some(defer) => defer,
            None => Admission::Run(Vec::new()),
        },
    }
}

/// The job's turn under the kind's rate limit (`limit.rate`): the one its message carries,
/// or one reserved now; `None` without one. A turn that is near is waited for here; `Err`
/// defers the job (its turn is far, the rate refused it, or Redis failed and the limit
/// defers then).
async fn rate_turn(
    worker: &WorkerContext,
    spec: &NamespaceSpec,
    limit: &Limit,
    key: Option<&str>,
    kind: &str,
    marks: &Marks,
    backoff: Duration,
) -> Result<Option<u64>, Admission> {
    let Some(rate) = &limit.rate else {
        return Ok(marks.not_before);
    };
    if let Some(at) = marks.not_before {
        let wait = Duration::from_millis(at.saturating_sub(now_ms()));
        wait_for_turn(worker, at, wait).await?;
        return Ok(Some(at));
    }
    let rate_key = redis_key(spec, KeyClass::Rate, kind, key);
    match worker.limiter.take_rate(&rate_key, rate, 1, true).await {
        Ok(RateOutcome::Reserved(wait)) => {
            let at = now_ms() + wait.as_millis() as u64;
            wait_for_turn(worker, at, wait).await?;
            Ok(Some(at))
        }
        Ok(RateOutcome::Refused(wait)) => Err(Admission::Defer {
            delay: wait,
            not_before: None,
        }),
        Err(error) => match on_redis_error(worker, limit, &error, backoff).await {
            Some(defer) => Err(defer),
            None => Ok(None),
        },
    }
}

/// Waits `wait` for the turn at `at` here if it is short enough (see [`wait_in_memory`]);
/// `Err` defers the job until then.
async fn wait_for_turn(worker: &WorkerContext, at: u64, wait: Duration) -> Result<(), Admission> {
    if !wait.is_zero() && !wait_in_memory(worker, wait).await {
        return Err(Admission::Defer {
            delay: wait,
            not_before: Some(at),
        });
    }
    Ok(())
}

/// Takes one of `cap` leased slots under `key` for this admission: the slot (renewed until
/// released), or when the earliest lease held there ends.
async fn take_slot(
    worker: &WorkerContext,
    key: String,
    cap: u32,
    envelope: &Envelope,
) -> Result<Result<Slot, Duration>, LimiterError> {
    // Unique per admission: a duplicate delivery of the same job must neither count as the
    // running copy's slot nor release it.
    let holder = format!("{}:{:016x}", envelope.id, rand::random::<u64>());
    Ok(
        match worker
            .limiter
            .acquire_slot(&key, cap, &holder, SLOT_LEASE)
            .await?
        {
            None => Ok(lease(worker, key, holder, cap)),
            Some(earliest_end) => Err(earliest_end),
        },
    )
}

/// A wait shorter than the shortest delay tier is waited here, holding the delivery (at
/// most that tier, 1 s by default): parking it would round it up to the whole tier and
/// bunch up jobs whose turns fall within it, breaking the configured spacing. `false` when
/// the wait is too long for that, and the message must be parked.
async fn wait_in_memory(worker: &WorkerContext, wait: Duration) -> bool {
    let shortest = Duration::from_millis(worker.retry.tiers_ms[0]);
    if wait >= shortest {
        return false;
    }
    tokio::time::sleep(wait).await;
    true
}

/// Fail open (`None`: run unlimited) or closed (defer), as the limit says; counted and
/// logged either way.
async fn on_redis_error(
    worker: &WorkerContext,
    limit: &Limit,
    error: &LimiterError,
    backoff: Duration,
) -> Option<Admission> {
    match limit.on_redis_error {
        RedisErrorPolicy::Allow => {
            worker
                .limiter
                .report_failure(error, "allow: running unlimited")
                .await;
            None
        }
        RedisErrorPolicy::Defer => {
            worker
                .limiter
                .report_failure(error, "defer: holding jobs back")
                .await;
            Some(Admission::Defer {
                delay: backoff,
                not_before: None,
            })
        }
    }
}

/// Concurrency and outage deferrals back off: the smallest delay tier, doubling with each
/// deferral of the same message, up to [`MAX_DEFERRAL`]. A saturated limit therefore costs
/// a few Redis calls per job per minute, not a hot loop.
fn deferral_backoff(worker: &WorkerContext, deferrals: u32) -> Duration {
    let smallest = Duration::from_millis(worker.retry.tiers_ms[0]);
    smallest
        .saturating_mul(1u32 << deferrals.min(16))
        .min(MAX_DEFERRAL.max(smallest))
}

/// How long a job waits for a full concurrency limit: its backoff, but never past the
/// moment the earliest lease ends. Live holders release their slots when their jobs end;
/// a killed worker's slots free themselves only when their leases run out, and a job
/// parked for a whole 30 s backoff just before that would stretch a crash's recovery by
/// as much. So a waiting job is looked at again within one lease (rounded down to a
/// delay tier) of any slot's last renewal.
fn full_limit_wait(backoff: Duration, earliest_end: Duration) -> Duration {
    backoff.min(earliest_end + Duration::from_millis(50))
}

/// Starts renewing a leased slot while its job runs.
fn lease(worker: &WorkerContext, key: String, holder: String, concurrency: u32) -> Slot {
    let limiter = worker.limiter.clone();
    let (renew_key, renew_holder) = (key.clone(), holder.clone());
    let renewal = tokio::spawn(async move {
        loop {
            tokio::time::sleep(SLOT_RENEWAL).await;
            if let Err(error) = limiter
                .acquire_slot(&renew_key, concurrency, &renew_holder, SLOT_LEASE)
                .await
            {
                tracing::warn!(%error, "could not renew a concurrency slot");
            }
        }
    })
    .abort_handle();
    Slot {
        key,
        holder,
        renewal,
    }
}
