//! Running a kind in a unit test with no servers (River's `rivertest`):
//! [`JobContext::for_test`] builds an attempt's context, and [`run_once`] runs a handler
//! through the path the worker uses — args parsed from JSON (bad ones fail the attempt
//! fatally, naming the field), the output encoded as the result the fleet stores.

use serde::Serialize;

use engine_shared::{JobId, Namespace};
use tokio_util::sync::CancellationToken;

use crate::artifacts::Artifacts;
use crate::context::JobContext;
use crate::error::JobError;
use crate::job::Job;
use crate::log::JobLog;
use crate::registry;

/// How much of an attempt's log a test context keeps.
const TEST_LOG_BYTES: usize = 64 * 1024;

impl JobContext {
    /// The first attempt (of one) of a new job in `namespace`: not cancelled, no trace,
    /// a log kept up to 64 KiB (read it with `context.log.take()`), and no storage, so
    /// storing an artifact fails. The fields are public: set `attempt`, `snoozes` or
    /// `artifacts` to test other cases.
    pub fn for_test(namespace: Namespace) -> Self {
        let id = JobId::new();
        Self {
            id,
            namespace,
            attempt: 1,
            max_attempts: 1,
            snoozes: 0,
            cancellation: CancellationToken::new(),
            log: JobLog::new(id, TEST_LOG_BYTES),
            artifacts: Artifacts::disabled(id),
            traceparent: None,
        }
    }
}

/// The namespace [`run_once`] runs in.
pub fn test_namespace() -> Namespace {
    Namespace::parse("test").expect("a valid namespace name")
}

/// Runs one attempt of `job` with `args` — typed (`SleepArgs { ms: 1 }`) or any JSON
/// (`json!({ "ms": "soon" })`) — in [`test_namespace`], and returns the result the fleet
/// would store.
pub async fn run_once<J: Job>(
    job: &J,
    args: impl Serialize,
) -> Result<serde_json::Value, JobError> {
    run_in(job, JobContext::for_test(test_namespace()), args).await
}

/// [`run_once`] with a context of the test's own (another namespace, a later attempt, a
/// cancellation token it fires).
pub async fn run_in<J: Job>(
    job: &J,
    context: JobContext,
    args: impl Serialize,
) -> Result<serde_json::Value, JobError> {
    let args = serde_json::to_value(args).expect("a test's args serialize to JSON");
    registry::run_from_json(job, context, args).await
}
