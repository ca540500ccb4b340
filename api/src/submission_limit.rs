//! Per-API-key submission limits (`api.submit_rate_per_sec`, `api.submit_burst`): GCRA in
//! Redis without reservation — a submission over the rate is refused with 429 and a
//! `Retry-After`, and stores nothing. Off (no Redis call at all) while the rate is 0. If
//! Redis is unavailable, submissions are accepted (fail open, logged and counted): a job
//! system should not refuse work because its limiter is down.

use engine_shared::limits::{KeyClass, Rate, RateOutcome, redis_key};

use crate::auth::Caller;
use crate::problem::ApiError;
use crate::state::AppState;

/// Takes `jobs` from the caller's submission budget, or answers 429.
pub async fn check(state: &AppState, caller: &Caller, jobs: usize) -> Result<(), ApiError> {
    let settings = &state.settings.api;
    if settings.submit_rate_per_sec == 0 {
        return Ok(());
    }
    let Some(spec) = state.settings.namespace(&caller.namespace) else {
        return Ok(());
    };
    let rate = Rate {
        burst: settings.submit_burst,
        ..Rate::per_second(settings.submit_rate_per_sec)
    };
    let key = redis_key(spec, KeyClass::Submissions, &caller.key_tag, None);
    let cost = u32::try_from(jobs).unwrap_or(u32::MAX);
    match state.limiter.take_rate(&key, &rate, cost, false).await {
        Ok(RateOutcome::Reserved(_)) => Ok(()),
        Ok(RateOutcome::Refused(wait)) => Err(ApiError::TooManyRequests {
            rate: settings.submit_rate_per_sec,
            burst: settings.submit_burst,
            retry_after_secs: wait.as_millis().div_ceil(1000).max(1) as u64,
        }),
        Err(error) => {
            state
                .limiter
                .report_failure(&error, "allow: accepting submissions unlimited")
                .await;
            Ok(())
        }
    }
}
