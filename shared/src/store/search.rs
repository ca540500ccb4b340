//! Scans a tenant steers — a job listing, a redrive by filter, an error-text search over a
//! whole namespace — bounded so that no tenant can hold the API's connections with them.
//!
//! They run on the store's `searches` pool, a third of `database.max_connections` (at least
//! 2) beside the others, so submissions and key lookups never wait behind them, and each
//! statement there stops after `api.read_timeout_ms` (`statement_timeout`: a start-up
//! parameter of the pool's connections, or `SET LOCAL` in the `BEGIN` message behind a
//! transaction pooler; neither costs a round trip). Error text is matched with a trigram
//! index (`jobs_last_error_trgm`), which needs at least three characters to narrow a search.

use super::unit::{Commit, Statements, Unit};
use super::{SqlContext, Store, StoreError};

/// Fewest characters an error filter may have: shorter text has no trigram to look up, so
/// its search would read every row of the namespace.
pub const MIN_ERROR_FILTER_CHARS: usize = 3;

/// `AND last_error ILIKE $<n>` when an error filter is given (its bound value from
/// [`error_pattern`]); nothing otherwise. Left out rather than `$n IS NULL OR …`, which a
/// generic plan cannot answer from the trigram index.
pub(super) fn error_clause(filter: Option<&str>, parameter: u8) -> String {
    match filter {
        Some(_) => format!("AND last_error ILIKE ${parameter} ESCAPE '\\'"),
        None => String::new(),
    }
}

/// The ILIKE pattern for a user's error text: matched literally, anywhere in the error.
pub(super) fn error_pattern(filter: &str) -> String {
    format!("%{}%", escape_like(filter))
}

/// A user's text matched literally inside ILIKE: `%`, `_` and `\` lose their meaning.
fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Why a search was not answered; the API's problem names the remedy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SearchRefused {
    #[error(
        "the search ran longer than api.read_timeout_ms ({timeout_ms} ms) and was stopped; \
         narrow it with status, kind, queue or a longer error text"
    )]
    TimedOut { timeout_ms: u64 },
    #[error("this API process is running as many searches as it allows; retry shortly")]
    Busy,
}

impl Store {
    /// Runs one search statement (`doing` something, as errors say) on the searches pool;
    /// a statement past the timeout or a pool with no connection free within
    /// `database.acquire_timeout_ms` is a [`StoreError::Search`].
    pub(super) async fn search<T>(
        &self,
        doing: &str,
        statement: impl AsyncFnOnce(Statements<'_>) -> Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        let commit = Commit::Search {
            timeout_ms: self.search_timeout_ms,
        };
        let mut unit = Unit::autocommit(&self.searches, self.pooler, commit)
            .await
            .map_err(|error| self.refusal(error, doing))?;
        match statement(unit.statements()).await {
            Ok(output) => {
                unit.commit().await.sql_context(doing)?;
                Ok(output)
            }
            Err(error) => {
                // Behind a pooler the unit is a transaction: ending it keeps the connection.
                let _ = unit.rollback().await;
                Err(self.refusal(error, doing))
            }
        }
    }

    fn refusal(&self, error: sqlx::Error, doing: &str) -> StoreError {
        let code = error.as_database_error().and_then(|e| e.code());
        let refused = match (&error, code.as_deref()) {
            (sqlx::Error::PoolTimedOut, _) => SearchRefused::Busy,
            // query_canceled: what statement_timeout raises.
            (_, Some("57014")) => SearchRefused::TimedOut {
                timeout_ms: self.search_timeout_ms,
            },
            _ => return StoreError::sql(error, doing.to_owned()),
        };
        StoreError::Search {
            doing: doing.to_owned(),
            refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{error_clause, error_pattern};

    #[test]
    fn like_wildcards_in_a_filter_are_literal() {
        assert_eq!(error_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }

    #[test]
    fn no_filter_adds_no_clause() {
        assert_eq!(error_clause(None, 7), "");
        assert_eq!(
            error_clause(Some("x"), 7),
            "AND last_error ILIKE $7 ESCAPE '\\'"
        );
    }
}
