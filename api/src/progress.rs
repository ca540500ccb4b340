//! A progress line on stderr for long admin commands: bytes so far (of the total, when
//! known), rate and elapsed time, e.g. `backup  12.3 MiB  4.1 MiB/s  00:03`. On a terminal
//! it is redrawn in place; elsewhere (CI logs, files) a line is printed every few seconds,
//! so a log shows the command is alive without filling up.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the line is redrawn on a terminal.
const TERMINAL_EVERY: Duration = Duration::from_millis(100);

/// How often a line is printed when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

const MIB: f64 = 1024.0 * 1024.0;

/// One command's progress line.
#[derive(Debug)]
pub struct ProgressLine {
    label: &'static str,
    /// The size the bytes count up to, if known (a download's object size).
    total: Option<u64>,
    started: Instant,
    drawn: Instant,
    /// Redraw with `\r` in place, rather than print whole lines.
    terminal: bool,
    bytes: u64,
}

impl ProgressLine {
    pub fn new(label: &'static str, total: Option<u64>) -> Self {
        let now = Instant::now();
        Self {
            label,
            total,
            started: now,
            drawn: now,
            terminal: std::io::stderr().is_terminal(),
            bytes: 0,
        }
    }

    /// Records `bytes` done so far, and shows them if the line is due.
    pub fn update(&mut self, bytes: u64) {
        self.bytes = bytes;
        let every = if self.terminal {
            TERMINAL_EVERY
        } else {
            LOG_EVERY
        };
        if self.drawn.elapsed() >= every {
            self.draw();
        }
    }

    /// Shows the final figures and ends the line.
    pub fn finish(&mut self) {
        self.draw();
        if self.terminal {
            eprintln!();
        }
    }

    /// Ends a line the command failed during, without claiming final figures (the error
    /// follows on a line of its own).
    pub fn abandon(&mut self) {
        if self.terminal && self.drawn > self.started {
            eprintln!();
        }
    }

    fn draw(&mut self) {
        self.drawn = Instant::now();
        let line = render(self.label, self.bytes, self.total, self.started.elapsed());
        let mut stderr = std::io::stderr().lock();
        // Progress is a courtesy: a closed stderr must not fail the command.
        let _ = if self.terminal {
            write!(stderr, "\r{line}\x1b[K")
        } else {
            writeln!(stderr, "{line}")
        };
        let _ = stderr.flush();
    }
}

/// `label  12.3 MiB  4.1 MiB/s  00:03`, or with a total
/// `label  12.3 / 40.0 MiB  31%  4.1 MiB/s  00:03`.
fn render(label: &str, bytes: u64, total: Option<u64>, elapsed: Duration) -> String {
    let done = bytes as f64 / MIB;
    let amount = match total {
        Some(total) if total > 0 => format!(
            "{done:.1} / {:.1} MiB  {:>3}%",
            total as f64 / MIB,
            (bytes.min(total) * 100 / total)
        ),
        _ => format!("{done:.1} MiB"),
    };
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 { done / seconds } else { 0.0 };
    let whole = elapsed.as_secs();
    let clock = if whole >= 3600 {
        format!("{}:{:02}:{:02}", whole / 3600, whole / 60 % 60, whole % 60)
    } else {
        format!("{:02}:{:02}", whole / 60, whole % 60)
    };
    format!("{label}  {amount}  {rate:.1} MiB/s  {clock}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_bytes_rate_and_time() {
        let mib = 1024 * 1024;
        assert_eq!(
            render("backup", 12 * mib + mib / 4, None, Duration::from_secs(3)),
            "backup  12.2 MiB  4.1 MiB/s  00:03"
        );
        assert_eq!(
            render(
                "restore",
                10 * mib,
                Some(40 * mib),
                Duration::from_secs(125)
            ),
            "restore  10.0 / 40.0 MiB   25%  0.1 MiB/s  02:05"
        );
        assert_eq!(
            render("backup", 0, Some(0), Duration::ZERO),
            "backup  0.0 MiB  0.0 MiB/s  00:00"
        );
        assert!(render("backup", 1, None, Duration::from_secs(3_725)).ends_with("1:02:05"));
    }
}
