//! Where the CPU went during a scenario: CPU seconds of the API, the workers, PostgreSQL
//! (every `postgres` process), RabbitMQ (`beam.smp`), PgBouncer (when one runs: the
//! `--pooler` mode's) and this benchmark, plus the whole machine's busy and iowait share —
//! read from `/proc` before and after.

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use crate::sys;

/// The groups CPU time is reported in.
const GROUPS: [&str; 7] = [
    "api",
    "workers",
    "postgres",
    "rabbitmq",
    "pgbouncer",
    "bench",
    "other",
];

/// The group printed only when it used CPU: only the `--pooler` mode starts a PgBouncer, and
/// the other modes' lines stay as they were.
const SHOWN_WHEN_BUSY: &str = "pgbouncer";

/// CPU counters at one instant.
pub struct CpuSnapshot {
    at: Instant,
    /// Ticks per group.
    groups: HashMap<&'static str, u64>,
    /// Whole machine: (busy, iowait, total) ticks across all CPUs.
    machine: (u64, u64, u64),
}

/// CPU use between two snapshots.
pub struct CpuUsage {
    wall_secs: f64,
    /// CPU seconds per group, in [`GROUPS`] order.
    seconds: Vec<(&'static str, f64)>,
    busy_share: f64,
    iowait_share: f64,
}

impl CpuSnapshot {
    /// Reads every process's CPU time, grouping `api_pid` and `worker_pids` by role (none
    /// for the raw baseline).
    pub fn take(api_pid: Option<i32>, worker_pids: &[i32]) -> Self {
        let own = i32::try_from(std::process::id()).unwrap_or(-1);
        let mut groups: HashMap<&'static str, u64> = GROUPS.iter().map(|g| (*g, 0)).collect();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<i32>().ok())
                else {
                    continue;
                };
                // A process may exit between listing and reading: skip it.
                let Some((comm, ticks)) = process_ticks(pid) else {
                    continue;
                };
                let group = if Some(pid) == api_pid {
                    "api"
                } else if worker_pids.contains(&pid) {
                    "workers"
                } else if pid == own {
                    "bench"
                } else if comm == "postgres" {
                    "postgres"
                } else if comm == "beam.smp" {
                    "rabbitmq"
                } else if comm == "pgbouncer" {
                    "pgbouncer"
                } else {
                    "other"
                };
                *groups.entry(group).or_default() += ticks;
            }
        }
        Self {
            at: Instant::now(),
            groups,
            machine: machine_ticks(),
        }
    }

    /// CPU use from `self` to `later`.
    pub fn usage_until(&self, later: &Self) -> CpuUsage {
        let hz = sys::clock_ticks_per_second();
        let seconds = GROUPS
            .iter()
            .map(|group| {
                let before = self.groups.get(group).copied().unwrap_or(0);
                let after = later.groups.get(group).copied().unwrap_or(0);
                // "other" can shrink when a process exits; never report negative time.
                (*group, after.saturating_sub(before) as f64 / hz)
            })
            .collect();
        let total = later.machine.2.saturating_sub(self.machine.2).max(1) as f64;
        CpuUsage {
            wall_secs: later.at.duration_since(self.at).as_secs_f64(),
            seconds,
            busy_share: later.machine.0.saturating_sub(self.machine.0) as f64 / total,
            iowait_share: later.machine.1.saturating_sub(self.machine.1) as f64 / total,
        }
    }
}

impl fmt::Display for CpuUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu-s over {:.1} s wall:", self.wall_secs)?;
        for (group, seconds) in &self.seconds {
            if *group == SHOWN_WHEN_BUSY && *seconds == 0.0 {
                continue;
            }
            write!(f, " {group} {seconds:.1}")?;
        }
        write!(
            f,
            " | machine busy {:.0}%, iowait {:.0}%",
            self.busy_share * 100.0,
            self.iowait_share * 100.0
        )
    }
}

/// A process's command name and its user + system ticks (threads included).
fn process_ticks(pid: i32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ..." — comm may hold spaces and parentheses; it ends at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// (busy, iowait, total) ticks of all CPUs from the first line of `/proc/stat`.
fn machine_ticks() -> (u64, u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0, 0);
    };
    let values: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let get = |i: usize| values.get(i).copied().unwrap_or(0);
    let total: u64 = (0..8).map(get).sum();
    let idle = get(3);
    let iowait = get(4);
    (total.saturating_sub(idle + iowait), iowait, total)
}
