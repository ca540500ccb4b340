//! A unit of work: one PostgreSQL connection, and statements sent so that a
//! transaction-mode pooler cannot split them.
//!
//! sqlx prepares a statement in one exchange (Parse, Describe, Sync) and runs it in a second
//! (Bind, Execute, Sync). A transaction-mode pooler (PgBouncer, Neon's `-pooler` endpoint)
//! hands the server connection back after every Sync that leaves no transaction open, so
//! outside a transaction the second exchange may reach another server connection: a named
//! statement is missing there, or is another client's under the same name, and the unnamed
//! one is whatever that connection parsed last. Behind such a pooler
//! ([`Pooler::Transaction`]) every unit therefore runs inside `BEGIN … COMMIT`, which keeps
//! one server connection for the whole unit, and its statements are unnamed, so nothing of
//! ours outlives the transaction on a server connection another client gets next. That costs
//! three round trips more per unit of one statement (`BEGIN`, the Parse, `COMMIT`).
//!
//! Without a pooler, a unit is a pooled connection in autocommit and statements keep sqlx's
//! per-connection cache of named statements: one round trip each.
//!
//! One more trap behind a pooler: the first time a connection meets a result column of a
//! custom type (`job_status`), sqlx looks the type up with a simple query between the Parse
//! and the Bind, and PostgreSQL drops the unnamed statement on any simple query. So each
//! new connection learns the store's custom types first ([`learn_custom_types`]).

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::error::BoxDynError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Acquire, Either, Execute, Executor, PgConnection, PgPool, Postgres};

use super::count_round_trips;
use crate::JobStatus;
use crate::config::Pooler;

/// Which pool a unit runs on, and so how its commit is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Commit {
    /// Waits for the WAL flush.
    Durable,
    /// Does not (`synchronous_commit = off`); see the store's module docs.
    Relaxed,
    /// Waits for the WAL flush, on the searches pool, whose statements stop after
    /// `timeout_ms` (`statement_timeout`).
    Search { timeout_ms: u64 },
}

/// One connection for a few statements; [`Unit::commit`] or [`Unit::rollback`] ends it.
///
/// Transactions are begun and ended here with plain statements rather than through sqlx's
/// `Transaction`: sqlx 0.9 counts a transaction only once `BEGIN` has answered, so a future
/// dropped while waiting for that answer (a timeout, a client gone, a shutdown; behind a
/// pooler, the wait for a server connection) hands the connection back to the pool inside
/// a transaction (launchbadge/sqlx#4385). A unit marks itself open before it sends `BEGIN`,
/// and a unit dropped while open closes its connection, which ends the transaction on the
/// server, instead of returning it to the pool.
pub(super) struct Unit {
    connection: PoolConnection<Postgres>,
    /// A transaction is, or may be, open on the connection.
    open: bool,
    pooler: Pooler,
}

impl Unit {
    /// A unit whose statements commit one by one without a pooler, and together behind one.
    /// Use it for a single statement, or for statements that need no atomicity.
    pub(super) async fn autocommit(
        pool: &PgPool,
        pooler: Pooler,
        commit: Commit,
    ) -> Result<Self, sqlx::Error> {
        match pooler {
            Pooler::None => Ok(Self {
                connection: pool.acquire().await?,
                open: false,
                pooler,
            }),
            Pooler::Transaction => Self::transaction(pool, pooler, commit).await,
        }
    }

    /// A unit inside one transaction, whatever the pooler.
    pub(super) async fn transaction(
        pool: &PgPool,
        pooler: Pooler,
        commit: Commit,
    ) -> Result<Self, sqlx::Error> {
        let mut unit = Self {
            connection: pool.acquire().await?,
            open: true,
            pooler,
        };
        let begin = match (pooler, commit) {
            // Without a pooler the relaxed and searches pools' connections carry their
            // setting from their start-up; a pooler shares server connections, so it is set
            // per transaction, in the same message as `BEGIN` (no extra round trip).
            (Pooler::Transaction, Commit::Relaxed) => {
                "BEGIN; SET LOCAL synchronous_commit = off".to_owned()
            }
            (Pooler::Transaction, Commit::Search { timeout_ms }) => {
                format!("BEGIN; SET LOCAL statement_timeout = {timeout_ms}")
            }
            _ => "BEGIN".to_owned(),
        };
        unit.send(begin).await?;
        Ok(unit)
    }

    /// Where the unit's statements go: `.fetch_all(unit.statements())`.
    pub(super) fn statements(&mut self) -> Statements<'_> {
        Statements {
            connection: &mut self.connection,
            named: self.pooler == Pooler::None,
        }
    }

    /// Commits the unit's transaction, if it has one.
    pub(super) async fn commit(mut self) -> Result<(), sqlx::Error> {
        if self.open {
            self.send("COMMIT").await?;
            self.open = false;
        }
        Ok(())
    }

    /// Rolls the unit's transaction back, if it has one.
    pub(super) async fn rollback(mut self) -> Result<(), sqlx::Error> {
        if self.open {
            self.send("ROLLBACK").await?;
            self.open = false;
        }
        Ok(())
    }

    /// Sends one transaction-control message as a simple query: no statement to prepare,
    /// so any pooler passes it whole.
    async fn send(&mut self, sql: impl Into<String>) -> Result<(), sqlx::Error> {
        count_round_trips(1);
        // Built here from the unit's own constants, never from a caller's text.
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.into()))
            .execute(&mut *self.connection)
            .await?;
        Ok(())
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        if self.open {
            self.connection.close_on_drop();
        }
    }
}

/// Makes a new connection look up the store's custom types (`job_status`, and its array,
/// which the outcome statement binds), so no later statement needs a lookup between its
/// Parse and its Bind. A bound parameter's type is looked up before the Parse, where a
/// simple query harms nothing; its result then has a known type.
pub(super) async fn learn_custom_types(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    let mut transaction = connection.begin().await?;
    sqlx::query("SELECT $1::job_status, $2::job_status[]")
        .bind(JobStatus::Queued)
        .bind(vec![JobStatus::Queued])
        .persistent(false)
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await
}

/// A unit's connection as an executor that sends every statement unnamed behind a pooler.
#[derive(Debug)]
pub(super) struct Statements<'c> {
    connection: &'c mut PgConnection,
    named: bool,
}

impl Statements<'_> {
    /// The extra round trip an unnamed statement costs: it is parsed every time.
    fn count_parse(&self) {
        if !self.named {
            count_round_trips(1);
        }
    }
}

impl<'c> Executor<'c> for Statements<'c> {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        self.count_parse();
        let named = self.named;
        self.connection.fetch_many(Sent { query, named })
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        self.count_parse();
        let named = self.named;
        self.connection.fetch_optional(Sent { query, named })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        if !self.named {
            return Box::pin(async { Err(named_statement_refused()) });
        }
        self.connection.prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        if !self.named {
            return Box::pin(async { Err(named_statement_refused()) });
        }
        self.connection.describe(sql)
    }
}

/// sqlx prepares explicitly only as a named statement, which a transaction pooler would
/// leave on a server connection it lends to others.
fn named_statement_refused() -> sqlx::Error {
    sqlx::Error::Configuration(
        "an explicitly prepared statement is named, which database.pooler = \"transaction\" \
         does not allow"
            .into(),
    )
}

/// A statement as [`Statements`] sends it: named (prepared once, cached) only when allowed.
struct Sent<E> {
    query: E,
    named: bool,
}

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Sent<E> {
    fn sql(self) -> sqlx::SqlStr {
        self.query.sql()
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.query.statement()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.query.take_arguments()
    }

    fn persistent(&self) -> bool {
        self.named && self.query.persistent()
    }
}
