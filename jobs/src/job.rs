//! The `Job` trait: a stable kind name, typed args and output, defaults, and an async
//! handler.

use std::future::Future;
use std::time::Duration;

use engine_shared::config::Settings;
use engine_shared::limits::Limit;
use engine_shared::retry::Backoff;
use engine_shared::{Namespace, QueueName};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::JobContext;
use crate::error::JobError;

/// One kind of job. Implementations hold only what their handler needs (an HTTP client,
/// a secret), built once at start-up and shared by every run.
///
/// Invariant: `KIND` never changes once jobs of it exist — it is stored in rows and
/// messages. Rename the Rust type freely; to rename the kind itself, move the old name to
/// [`Job::ALIASES`].
pub trait Job: Send + Sync + 'static {
    /// The wire name, e.g. `webhook.deliver`.
    const KIND: &'static str;

    /// Earlier names of this kind (River's `KindAliases`). Rows and messages still holding
    /// one run this kind's handler; a submission under one is stored under [`Job::KIND`].
    const ALIASES: &'static [&'static str] = &[];

    /// The arguments, checked at submit time (a mismatch is a 422 naming the field).
    /// `Serialize` too, so Rust code and tests build them typed
    /// (`json!({ "kind": Sleep::KIND, "args": SleepArgs { ms: 10 } })`).
    type Args: Serialize + DeserializeOwned + Send + 'static;

    /// What a successful run stores as the job's result, as JSON; `()` stores `null`.
    type Output: Serialize + Send + 'static;

    /// Queue used when the submitter names none.
    fn queue(&self) -> QueueName {
        QueueName::default_queue()
    }

    /// Attempts (first run included) when the submitter does not say.
    fn max_attempts(&self) -> u32 {
        5
    }

    /// Per-attempt time limit when the submitter does not say.
    fn timeout(&self) -> Duration {
        Duration::from_secs(60)
    }

    /// Backoff between failed attempts when the submitter does not say; `None` uses the
    /// fleet's `retry.base_delay_ms` / `retry.max_delay_ms`.
    fn backoff(&self) -> Option<Backoff> {
        None
    }

    /// Rate and concurrency limits for this kind, fleet-wide, in every namespace (each with
    /// its own budget). `[[limits]]` in the settings override it.
    fn limit(&self) -> Option<Limit> {
        None
    }

    /// The key a `per_key` limit is kept per (e.g. a webhook's destination host); `None`
    /// shares one budget across the kind.
    fn limit_key(&self, _args: &Self::Args) -> Option<String> {
        None
    }

    /// Who may submit this kind: `Err` refuses `namespace`'s submission with a 422 naming
    /// the `kind` field, saying why. Asked by the API with the fleet's settings (the API
    /// builds its registry without the clients handlers use). Every namespace by default.
    fn check_submitter(&self, _namespace: &Namespace, _settings: &Settings) -> Result<(), String> {
        Ok(())
    }

    /// Runs one attempt. `Ok` carries the result stored on the job.
    fn run(
        &self,
        context: JobContext,
        args: Self::Args,
    ) -> impl Future<Output = Result<Self::Output, JobError>> + Send;
}
