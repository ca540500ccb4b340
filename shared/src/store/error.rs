//! `StoreError`: how a store call failed, sorted where the failure is met, so a caller that
//! answers for it (the API: 503, 422 or 500) matches a variant instead of searching the
//! error's causes. Calls whose callers only log their errors keep `anyhow`.

use super::refusal::Refused;
use super::search::SearchRefused;

/// Why a store call failed. Each variant keeps what the store was doing and the cause in
/// its error chain, for the log line of whoever handles it (`{error:#}` prints it whole).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL could not be reached ([`is_unavailable`]): the same call may succeed
    /// once it is back.
    #[error(transparent)]
    Unavailable(anyhow::Error),
    /// A search (`doing` something) stopped at its timeout, or found every search
    /// connection taken. Reads as a context over its cause: `{error:#}` prints
    /// "listing jobs: the search ran longer than …".
    #[error("{doing}")]
    Search {
        doing: String,
        #[source]
        refused: SearchRefused,
    },
    /// PostgreSQL refused a job for its data (only inserting jobs says so).
    #[error(transparent)]
    Refused(Refused),
    /// Anything else: a statement PostgreSQL rejected, a row that does not decode, an answer
    /// that breaks the store's own rules.
    #[error(transparent)]
    Other(anyhow::Error),
}

impl StoreError {
    /// `error`, met while `doing` something: unreachable database or another failure.
    pub(super) fn sql(error: sqlx::Error, doing: String) -> Self {
        let unavailable = is_unavailable(&error);
        let error = anyhow::Error::new(error).context(doing);
        if unavailable {
            Self::Unavailable(error)
        } else {
            Self::Other(error)
        }
    }

    /// PostgreSQL could not be reached.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// [`StoreError::sql`] as `.context()` is to anyhow: says what the store was doing.
pub(super) trait SqlContext<T> {
    fn sql_context(self, doing: &str) -> Result<T, StoreError>;
    fn with_sql_context(self, doing: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T> SqlContext<T> for Result<T, sqlx::Error> {
    fn sql_context(self, doing: &str) -> Result<T, StoreError> {
        self.map_err(|error| StoreError::sql(error, doing.to_owned()))
    }

    fn with_sql_context(self, doing: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|error| StoreError::sql(error, doing()))
    }
}

/// True when the error means "PostgreSQL cannot be reached", as opposed to a bad statement:
/// no connection, a broken one (a protocol error is what a half-open connection or a dying
/// proxy produces), or the server refusing connections (SQLSTATE class 08, 57P01-03, 53300).
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// Walks an error chain for a sqlx error that means the database is unreachable, for
/// callers that hold a store failure as an `anyhow::Error` (the group commit's flush).
pub fn chain_is_unavailable(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<sqlx::Error>())
        .any(is_unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_told_from_a_bad_statement_and_keeps_its_context() {
        let down = StoreError::sql(sqlx::Error::PoolTimedOut, "reading job 1".into());
        assert!(down.is_unavailable());
        assert!(
            format!("{down:#}").starts_with("reading job 1: "),
            "{down:#}"
        );
        assert!(
            chain_is_unavailable(&down.into()),
            "the sqlx error stays in the chain"
        );

        let refused = StoreError::Search {
            doing: "listing jobs".into(),
            refused: SearchRefused::Busy,
        };
        assert_eq!(
            format!("{:#}", anyhow::Error::from(refused)),
            format!("listing jobs: {}", SearchRefused::Busy),
            "a refused search says what it was doing, once"
        );

        let bad = StoreError::sql(sqlx::Error::RowNotFound, "reading job 2".into());
        assert!(!bad.is_unavailable());
        assert!(matches!(bad, StoreError::Other(_)));
    }
}
