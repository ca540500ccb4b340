//! The look at a fleet's rows when it drops: a test that leaves jobs unfinished without
//! saying so ([`super::TestFleet::expect_unfinished`]) fails, as crates.io's test app fails
//! a test that leaves background jobs unprocessed.

use std::sync::mpsc;
use std::time::Duration;

use sqlx::Connection;

use engine_shared::{JobStatus, Namespace};

use crate::services;

/// How long the look may take; past it the check is skipped with a warning rather than
/// hanging or failing the test for a slow database.
const DEADLINE: Duration = Duration::from_secs(5);

/// Panics naming every non-final status `namespaces` still have jobs in.
///
/// Runs on a thread of its own with its own runtime and connection: `drop` cannot await,
/// and the test's runtime (and the pool bound to it) does not run while it blocks here.
pub(super) fn fail_if_any(namespaces: Vec<Namespace>) {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(count_by_status(&namespaces));
    });
    let counts = match receiver.recv_timeout(DEADLINE + Duration::from_secs(1)) {
        Ok(Ok(counts)) => counts,
        Ok(Err(error)) => {
            eprintln!("warning: the check for unfinished jobs could not run: {error}");
            return;
        }
        Err(_) => {
            eprintln!("warning: the check for unfinished jobs took longer than {DEADLINE:?}");
            return;
        }
    };
    let unfinished: Vec<String> = counts
        .into_iter()
        .filter(|(_, status, _)| !status.is_final())
        .map(|(namespace, status, count)| format!("{namespace}: {count} {}", status.as_str()))
        .collect();
    assert!(
        unfinished.is_empty(),
        "the test left jobs unfinished: {}; wait for them, or call \
         fleet.expect_unfinished() if it means to leave them",
        unfinished.join(", ")
    );
}

/// How many jobs of `namespaces` are in each status, read on a fresh connection.
fn count_by_status(namespaces: &[Namespace]) -> Result<Vec<(String, JobStatus, i64)>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime for the check: {e}"))?;
    let names: Vec<&str> = namespaces.iter().map(Namespace::as_str).collect();
    runtime.block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let mut connection = sqlx::PgConnection::connect(&services::database_url()).await?;
            sqlx::query_as(
                "SELECT namespace, status, count(*) FROM jobs WHERE namespace = ANY($1) \
                 GROUP BY namespace, status ORDER BY namespace, status",
            )
            .bind(&names)
            .fetch_all(&mut connection)
            .await
        })
        .await
        .map_err(|_| format!("no answer within {DEADLINE:?}"))?
        .map_err(|e| e.to_string())
    })
}
