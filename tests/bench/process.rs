//! One server (engine-api or engine-worker) as a child process: started with a settings
//! file and its JSON log in a file, awaited on a log line, measured, stopped by SIGTERM
//! (or killed by SIGKILL, to show what a crash loses).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::sys;

/// The log filter the servers default to, set explicitly so a developer's `RUST_LOG`
/// cannot slow the run down.
pub const LOG_FILTER: &str = "info,tower_http=warn,sqlx=warn,lapin=warn";

/// A running server process; killed if dropped before [`ServerProcess::stop`].
pub struct ServerProcess {
    pub name: String,
    pub pid: i32,
    child: Child,
    log: PathBuf,
}

/// What a server reported when it stopped.
pub struct Stopped {
    pub name: String,
    /// VmHWM just before SIGTERM.
    pub peak_rss_kib: u64,
    /// Its `postgres_round_trips` log field at exit.
    pub round_trips: u64,
    /// Its WARN and ERROR lines, verbatim.
    pub warnings: Vec<String>,
    /// Jobs the API's sweeper published because the fast path had not (0 for workers).
    pub swept: u64,
}

impl ServerProcess {
    /// Starts `binary --config <config>` with `RUST_LOG=<log_filter>` (usually
    /// [`LOG_FILTER`]), its stderr going to `log`. `ENGINE*`, `DATABASE_URL` and `AMQP_URL`
    /// are removed from its environment: only the file counts.
    pub fn spawn(
        name: &str,
        binary: &Path,
        config: &Path,
        log: PathBuf,
        log_filter: &str,
    ) -> anyhow::Result<Self> {
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", log_filter)
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ENGINE") {
                command.env_remove(key);
            }
        }
        let child = command.spawn().with_context(|| {
            format!(
                "starting {} (run `cargo build --release --bins`)",
                binary.display()
            )
        })?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .with_context(|| format!("{name} has no pid"))?;
        Ok(Self {
            name: name.to_owned(),
            pid,
            child,
            log,
        })
    }

    /// Every JSON line of the log so far (a line cut mid-write is skipped).
    pub fn log_lines(&self) -> Vec<Value> {
        read_json_lines(&self.log)
    }

    /// The last lines of the log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until the log has a line whose message is `message`, and returns it. Fails if
    /// the process exits first or `deadline` passes.
    pub async fn wait_for_log(
        &mut self,
        message: &str,
        deadline: Duration,
    ) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            if let Some(line) = self
                .log_lines()
                .into_iter()
                .find(|line| line["message"] == message)
            {
                return Ok(line);
            }
            if let Some(status) = self.child.try_wait().context("polling a child process")? {
                anyhow::bail!(
                    "{} exited ({status}) before logging {message:?}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
            if started.elapsed() > deadline {
                anyhow::bail!(
                    "{} did not log {message:?} within {deadline:?}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident set size so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmHWM in {path}"))
    }

    /// Kills the process with SIGKILL, as a crash would: no drain and no exit line; its
    /// connections drop, so the broker returns its unacked deliveries to their queues.
    /// Fails if it had already exited.
    pub async fn kill(mut self) -> anyhow::Result<Killed> {
        self.kill_in_place().await
    }

    /// [`ServerProcess::kill`], leaving the reaped process's handle in place: for a server
    /// that is replaced right away by a new process on the same port (the `--chaos` mode's
    /// API), which can only bind once this one is gone.
    pub async fn kill_in_place(&mut self) -> anyhow::Result<Killed> {
        if let Some(status) = self.child.try_wait().context("polling a child process")? {
            anyhow::bail!(
                "{} had already exited ({status}) when it was to be killed; log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        // Sends SIGKILL and reaps the process.
        self.child
            .kill()
            .await
            .with_context(|| format!("killing {}", self.name))?;
        Ok(Killed {
            log_lines: self.log_lines(),
            name: self.name.clone(),
            pid: self.pid,
        })
    }

    /// Reads the peak RSS, sends SIGTERM, waits up to `deadline` for a clean exit (a worker
    /// drains first), and reads what the process logged on the way out.
    pub async fn stop(mut self, deadline: Duration) -> anyhow::Result<Stopped> {
        let peak_rss_kib = self.peak_rss_kib()?;
        sys::send_signal(self.pid, libc::SIGTERM)?;
        let status = match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => status.with_context(|| format!("waiting for {}", self.name))?,
            Err(_) => {
                let _ = self.child.kill().await;
                anyhow::bail!(
                    "{} did not exit within {deadline:?} of SIGTERM; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
        };
        anyhow::ensure!(
            status.success(),
            "{} exited with {status}; log {}:\n{}",
            self.name,
            self.log.display(),
            self.log_tail()
        );
        let lines = self.log_lines();
        let round_trips = lines
            .iter()
            .rev()
            .find_map(|line| line["postgres_round_trips"].as_u64())
            .with_context(|| {
                format!(
                    "{} logged no postgres_round_trips at exit; log {}",
                    self.name,
                    self.log.display()
                )
            })?;
        let warnings = lines
            .iter()
            .filter(|line| matches!(line["level"].as_str(), Some("WARN" | "ERROR")))
            .map(Value::to_string)
            .collect();
        let swept = lines
            .iter()
            .filter(|line| line["message"] == "sweeper published jobs the fast path had not")
            .filter_map(|line| line["count"].as_u64())
            .sum();
        Ok(Stopped {
            name: self.name,
            peak_rss_kib,
            round_trips,
            warnings,
            swept,
        })
    }
}

/// A server killed by [`ServerProcess::kill`].
pub struct Killed {
    pub name: String,
    pub pid: i32,
    /// Every JSON line it logged before it died (a line cut by the kill is skipped).
    pub log_lines: Vec<Value>,
}

/// Every JSON line of the log file at `path` (a line cut mid-write is skipped; a file that
/// cannot be read has none).
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}
