//! What the run happened on, for the header: CPUs, memory, kernel, server versions, and a
//! quick fsync probe (this machine's disk swings widely between runs).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Facts about the machine and the servers.
pub struct Machine {
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub postgres: String,
    pub rabbitmq: String,
    /// Median and worst of a few 4 KiB write + fdatasync on the run directory's disk.
    pub fsync_p50: Duration,
    pub fsync_max: Duration,
}

impl Machine {
    pub async fn probe(pool: &sqlx::PgPool, rabbitmq: String, dir: &Path) -> anyhow::Result<Self> {
        let postgres: String = sqlx::query_scalar("SELECT current_setting('server_version')")
            .fetch_one(pool)
            .await
            .context("asking PostgreSQL for its version")?;
        let (fsync_p50, fsync_max) = fsync_probe(dir, 20)?;
        Ok(Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: memory_total_kib() as f64 / (1024.0 * 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            postgres: format!("PostgreSQL {postgres}"),
            rabbitmq,
            fsync_p50,
            fsync_max,
        })
    }
}

fn memory_total_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Writes and syncs a 4 KiB block `rounds` times; returns the median and the worst.
fn fsync_probe(dir: &Path, rounds: usize) -> anyhow::Result<(Duration, Duration)> {
    let path = dir.join("fsync-probe");
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let block = [0x5au8; 4096];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        file.write_all(&block).context("writing the fsync probe")?;
        file.sync_data().context("syncing the fsync probe")?;
        times.push(started.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    times.sort_unstable();
    Ok((times[times.len() / 2], times[times.len() - 1]))
}
