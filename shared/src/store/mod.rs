//! The state store: every SQL statement of the fleet lives in this module's files.
//!
//! Three pools: `durable` commits wait for the WAL flush (accepted jobs, final states);
//! `relaxed` commits do not (`synchronous_commit = off`) and carry only writes a crash may
//! lose harmlessly — the move to `running` (a redelivery re-runs the job) and the
//! `published_at` stamp (the sweeper republishes, the worker skips the duplicate);
//! `searches` carries the scans a tenant steers, bounded in time and number (see
//! [`search`]).
//!
//! The calls the API answers for return a [`StoreError`], which sorts an unreachable
//! database from a refused job, a refused search and the rest; calls whose callers only
//! log their failures return `anyhow`.

mod api_keys;
mod archive;
mod cancel;
mod columns;
mod dead;
mod error;
mod error_history;
mod execution;
mod lease;
mod outbox;
mod pending;
mod query;
mod refusal;
mod rescue;
mod search;
mod start;
mod submit;
mod unit;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use api_keys::{ApiKey, LiveKey, NewApiKey};
pub use archive::{ArchiveBatch, ArchivePass, ArchivedJob, Chosen};
pub use cancel::CancelOutcome;
pub use dead::{Burial, DeadFilter, Redriven, RetryOutcome};
pub use error::{StoreError, chain_is_unavailable, is_unavailable};
pub use error_history::{AttemptError, ErrorKind, UnknownErrorKind};
pub use execution::{AttemptOutcome, FinishRequest, FinishedJob};
pub use lease::{LeaseRenewal, RunningAttempt};
pub use outbox::{OutboxClaim, OutboxJob};
pub use query::{JobFilter, JobPage, JobRecord};
pub use refusal::{EachOutcome, NotStored, Refused};
pub use rescue::{RescueReason, RescueScope, Rescued, StaleQueue};
pub use search::{MIN_ERROR_FILTER_CHARS, SearchRefused};
pub use start::{StartOutcome, StartRequest, StartedJob};
pub use submit::{NewJob, Submitted};

use crate::config::{DEFAULT_READ_TIMEOUT_MS, DatabaseSettings, Pooler};
use error::SqlContext;
use unit::{Commit, Statements, Unit};

/// Round trips to PostgreSQL made by this process, for the benchmark's per-job figure.
static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

fn count_round_trips(n: u64) {
    ROUND_TRIPS.fetch_add(n, Ordering::Relaxed);
}

/// PostgreSQL round trips this process has made through the store so far.
pub fn round_trips() -> u64 {
    ROUND_TRIPS.load(Ordering::Relaxed)
}

/// Handles to the state database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    /// Commits that must survive a crash before anyone is told they happened.
    durable: PgPool,
    /// Commits a crash may lose harmlessly; see the module docs.
    relaxed: PgPool,
    /// Scans a tenant steers (job listings, redrives by filter): a pool of their own, so
    /// however many run they cannot take the connections submissions and key lookups
    /// need, and every statement on it stops after `search_timeout_ms`.
    searches: PgPool,
    search_timeout_ms: u64,
    /// How statements are sent; see [`unit`].
    pooler: Pooler,
}

impl Store {
    /// Creates the pools lazily: the first query connects, so a process can start (and
    /// answer 503) while PostgreSQL is still down. Searches stop after the default
    /// `api.read_timeout_ms`.
    pub fn connect_lazy(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        Self::connect_lazy_with_read_timeout(settings, DEFAULT_READ_TIMEOUT_MS)
    }

    /// [`Store::connect_lazy`] with searches stopped after `read_timeout_ms` (the API's).
    pub fn connect_lazy_with_read_timeout(
        settings: &DatabaseSettings,
        read_timeout_ms: u64,
    ) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(settings.url.expose_secret())
            .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL: {e}"))?;
        // An `application_name` in the URL wins, so an operator (or a test) can tell one
        // process's connections from another's in `pg_stat_activity`.
        let options = match options.get_application_name() {
            Some(_) => options,
            None => options.application_name("tl-engine"),
        };
        let timeout = read_timeout_ms.to_string();
        let (durable_options, relaxed_options, search_options) = match settings.pooler {
            // Set at connection start-up, so a search costs no round trip more.
            Pooler::None => (
                options.clone(),
                options.clone().options([("synchronous_commit", "off")]),
                options.options([("statement_timeout", timeout.as_str())]),
            ),
            // PgBouncer refuses start-up parameters it does not track (`options`,
            // `extra_float_digits`), and no statement is cached by name (see `unit`).
            Pooler::Transaction => {
                let options = options.extra_float_digits(None).statement_cache_capacity(0);
                (options.clone(), options.clone(), options)
            }
        };
        let pool = |max_connections: u32| {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(settings.acquire_timeout);
            match settings.pooler {
                Pooler::None => pool,
                Pooler::Transaction => pool
                    .after_connect(|connection, _| Box::pin(unit::learn_custom_types(connection))),
            }
        };
        let durable = pool(settings.max_connections).connect_lazy_with(durable_options);
        let relaxed =
            pool((settings.max_connections / 3).max(2)).connect_lazy_with(relaxed_options);
        let searches =
            pool((settings.max_connections / 3).max(2)).connect_lazy_with(search_options);
        Ok(Self {
            durable,
            relaxed,
            searches,
            search_timeout_ms: read_timeout_ms,
            pooler: settings.pooler,
        })
    }

    /// Runs one statement in a unit of its own, in autocommit where the pooler allows it.
    async fn one<T>(
        &self,
        commit: Commit,
        statement: impl AsyncFnOnce(Statements<'_>) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        let mut unit = Unit::autocommit(self.pool_for(commit), self.pooler, commit).await?;
        let output = statement(unit.statements()).await?;
        unit.commit().await?;
        Ok(output)
    }

    /// A unit of work in one transaction on the pool for `commit`.
    async fn transaction(&self, commit: Commit) -> Result<Unit, sqlx::Error> {
        Unit::transaction(self.pool_for(commit), self.pooler, commit).await
    }

    fn pool_for(&self, commit: Commit) -> &PgPool {
        match commit {
            Commit::Durable => &self.durable,
            Commit::Relaxed => &self.relaxed,
            Commit::Search { .. } => &self.searches,
        }
    }

    /// Applies the migrations in `migrations/` (idempotent; concurrent callers serialize on
    /// sqlx's advisory lock, which is held by the session: a direct connection only).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        if self.pooler == Pooler::Transaction {
            anyhow::bail!(
                "migrations need a direct connection (they hold a session lock a transaction \
                 pooler does not keep): run them with DATABASE_URL set to the direct endpoint \
                 and database.pooler unset"
            );
        }
        sqlx::migrate!("../migrations")
            .run(&self.durable)
            .await
            .map_err(|e| anyhow::anyhow!("applying migrations: {e}"))
    }

    /// A pool for callers outside the store that need raw access (tests, benchmarks, the
    /// backup). Behind a transaction pooler their statements must be unnamed
    /// (`persistent(false)`) and inside a transaction, as the backup's are.
    pub fn pool(&self) -> &PgPool {
        &self.durable
    }

    /// Due jobs not yet published, per namespace (metrics). Uses the outbox's partial
    /// index, which holds only unpublished rows.
    pub async fn outbox_backlog(&self) -> anyhow::Result<Vec<(String, i64)>> {
        count_round_trips(1);
        self.one(Commit::Durable, async |statements| {
            sqlx::query_as(
                "SELECT namespace, count(*) FROM jobs
                 WHERE published_at IS NULL AND status IN ('queued', 'scheduled', 'retrying')
                   AND run_at <= now()
                 GROUP BY namespace",
            )
            .fetch_all(statements)
            .await
        })
        .await
        .map_err(|e| anyhow::anyhow!("counting the outbox backlog: {e}"))
    }

    /// One `SELECT 1`: PostgreSQL answers (readiness).
    pub async fn ping(&self) -> anyhow::Result<()> {
        // A simple query: no statement to prepare, so it passes any pooler whole.
        sqlx::raw_sql("SELECT 1")
            .execute(&self.durable)
            .await
            .map(drop)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    pub async fn close(&self) {
        self.durable.close().await;
        self.relaxed.close().await;
        self.searches.close().await;
    }
}
