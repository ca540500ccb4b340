//! `JobLog`: the lines one attempt writes through its context (and the worker's own lines
//! about that attempt), kept in memory up to a cap and shipped to storage when it ends.

use std::fmt::{self, Display};
use std::sync::{Arc, Mutex};

use chrono::{SecondsFormat, Utc};
use engine_shared::JobId;

/// A line's severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    fn label(self) -> &'static str {
        match self {
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
        }
    }
}

/// One attempt's log. Clones share the buffer, so a handler may hand it to tasks it spawns.
/// Every line is also emitted as a `tracing` event (target `job`, with the job id), so the
/// worker's own output shows it too; `RUST_LOG=job=warn` quiets that echo.
#[derive(Clone)]
pub struct JobLog {
    job: JobId,
    buffer: Arc<Mutex<Buffer>>,
}

struct Buffer {
    text: String,
    cap: usize,
    dropped: u64,
}

impl fmt::Debug for JobLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobLog").field("job", &self.job).finish()
    }
}

impl JobLog {
    /// An empty log keeping at most `cap` bytes of text.
    pub fn new(job: JobId, cap: usize) -> Self {
        Self {
            job,
            buffer: Arc::new(Mutex::new(Buffer {
                text: String::new(),
                cap,
                dropped: 0,
            })),
        }
    }

    pub fn debug(&self, message: impl Display) {
        self.line(LogLevel::Debug, message);
    }
    pub fn info(&self, message: impl Display) {
        self.line(LogLevel::Info, message);
    }
    pub fn warn(&self, message: impl Display) {
        self.line(LogLevel::Warn, message);
    }
    pub fn error(&self, message: impl Display) {
        self.line(LogLevel::Error, message);
    }

    /// Appends one timestamped line (and echoes it to the process's own log). Past the
    /// cap, the line is counted and dropped.
    pub fn line(&self, level: LogLevel, message: impl Display) {
        let message = message.to_string();
        match level {
            LogLevel::Debug => tracing::debug!(target: "job", job = %self.job, "{message}"),
            LogLevel::Info => tracing::info!(target: "job", job = %self.job, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "job", job = %self.job, "{message}"),
            LogLevel::Error => tracing::error!(target: "job", job = %self.job, "{message}"),
        }
        self.append(level, &message);
    }

    /// The worker's own line about the attempt (its start, how it ended, what comes next):
    /// echoed at debug level only, so a busy worker's output does not grow by several lines
    /// per job (`RUST_LOG=job=debug` shows them).
    pub fn worker_line(&self, level: LogLevel, message: impl Display) {
        let message = message.to_string();
        tracing::debug!(target: "job", job = %self.job, "{message}");
        self.append(level, &message);
    }

    fn append(&self, level: LogLevel, message: &str) {
        let line = format!(
            "{} {:<5} {message}\n",
            Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            level.label()
        );
        let mut buffer = self.buffer.lock().expect("the log lock is never poisoned");
        if buffer.text.len() + line.len() > buffer.cap {
            buffer.dropped += 1;
        } else {
            buffer.text.push_str(&line);
        }
    }

    /// Everything written so far, with a last line counting what the cap dropped, leaving
    /// the log empty.
    pub fn take(&self) -> String {
        let mut buffer = self.buffer.lock().expect("the log lock is never poisoned");
        let mut text = std::mem::take(&mut buffer.text);
        if buffer.dropped > 0 {
            text.push_str(&format!(
                "… {} more lines dropped: over logs.max_kib_per_attempt\n",
                buffer.dropped
            ));
            buffer.dropped = 0;
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_cap_are_counted_not_kept() {
        let log = JobLog::new(JobId::new(), 100);
        log.info("first line");
        for n in 0..10 {
            log.warn(format!(
                "line {n} that is long enough to pass the cap quickly"
            ));
        }
        let text = log.take();
        assert!(text.contains("INFO  first line"), "{text}");
        assert!(text.contains("more lines dropped"), "{text}");
        assert!(text.len() < 200, "{text}");
        assert!(log.take().is_empty());
    }
}
