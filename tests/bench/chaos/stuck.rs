//! Which lost jobs are stuck — not final, and nothing will move them: a `running` attempt
//! whose lease expired, or a `queued` or `retrying` job that is due while no message is
//! left in the namespace's work and delay queues. The broker refreshes the queue figures
//! the management API shows every 5 s, so a first look can miss a message just published:
//! candidates are looked at again over [`CONFIRM_FOR`], and stay stuck only if their rows
//! did not move and no message showed up meanwhile.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use engine_shared::Namespace;

use super::audit::{FinalState, JobRow, queued, read_rows};
use crate::management::Management;

/// Longer than the broker's statistics interval (5 s), so a message published just before
/// the first look has shown up by the end.
const CONFIRM_FOR: Duration = Duration::from_secs(12);

/// How often the queue figures are read while confirming.
const POLL: Duration = Duration::from_millis(500);

/// Whether `row`, not final, looks stuck with `queued_messages` in the queues.
pub fn looks_stuck(row: &JobRow, queued_messages: u64) -> bool {
    match row.status.as_str() {
        "running" => row.lease_expired,
        "queued" | "retrying" => row.due && queued_messages == 0,
        _ => false,
    }
}

/// Looks at `state`'s stuck candidates again and keeps only the confirmed ones.
pub async fn confirm(
    pool: &sqlx::PgPool,
    management: &Management,
    namespace: &Namespace,
    state: &mut FinalState,
) -> anyhow::Result<()> {
    if state.stuck == 0 {
        return Ok(());
    }
    let started = Instant::now();
    let mut message_seen = false;
    while started.elapsed() < CONFIRM_FOR {
        let queues = queued(management, namespace).await?;
        message_seen |= !queues.is_empty();
        tokio::time::sleep(POLL).await;
    }
    let candidates: Vec<String> = state
        .lost
        .iter()
        .filter(|job| job.stuck)
        .map(|job| job.id.clone())
        .collect();
    let now: HashMap<String, JobRow> = read_rows(pool, namespace, Some(&candidates))
        .await?
        .into_iter()
        .map(|row| (row.id.clone(), row))
        .collect();
    // Any message seen while confirming: a due job may yet be delivered by it.
    let queued_messages = u64::from(message_seen);
    for job in state.lost.iter_mut().filter(|job| job.stuck) {
        let (Some(before), Some(after)) = (&job.row, now.get(&job.id)) else {
            continue;
        };
        let unmoved = before.status == after.status && before.starts == after.starts;
        job.stuck = unmoved && looks_stuck(after, queued_messages);
    }
    state.stuck = state.lost.iter().filter(|job| job.stuck).count();
    Ok(())
}
