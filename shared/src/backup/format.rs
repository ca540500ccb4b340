//! The backup file format: line-oriented text (gzip-compressed as a whole by the callers),
//! written and read as a stream, so neither side ever holds more than one row of it.
//!
//! ```text
//! tl-engine-backup 1                                  magic and format version
//! header {"created_at":"…","migration":20261122000002,"tables":[{"name":"jobs","columns":["id",…]},…]}
//! table jobs                                          the header's tables, in its order
//! 0194…\tacme\tnoop\t…                                 rows: PostgreSQL's COPY text format,
//! 0194…\tacme\tsleep\t…                                one line per row (tabs, \N, \\, \n escaped)
//! \.                                                  end of the rows (no row line starts with `\.`)
//! rows 2                                              how many rows came: checked on reading
//! table job_errors
//! \.
//! rows 0
//! end                                                 a backup cut short has no `end`
//! ```
//!
//! Tables come foreign-key parents first, so a restore can load them in file order with
//! every constraint checked. `migration` is the schema version the rows fit; a restore
//! refuses a backup of another version.

use std::io::{self, BufRead, Read, Write};

use anyhow::{Context, anyhow, bail, ensure};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The first line's first word.
pub const MAGIC: &str = "tl-engine-backup";

/// The format version written; readers refuse others.
pub const VERSION: u32 = 1;

/// What a backup holds, written before any row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// When the snapshot was taken.
    pub created_at: DateTime<Utc>,
    /// The latest migration applied to the database backed up (`_sqlx_migrations`).
    pub migration: i64,
    /// Every table, in the order its rows follow (foreign-key parents first).
    pub tables: Vec<TableSpec>,
    /// The file name it was written under (`None` in backups from before names were
    /// recorded): "latest" and pruning trust an object only if its name agrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One table and the columns its rows carry, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSpec {
    pub name: String,
    pub columns: Vec<String>,
}

/// Writes a backup to `out`, checking the sections follow the header.
#[derive(Debug)]
pub struct BackupWriter<W> {
    out: W,
    tables: Vec<String>,
    /// Tables written so far (the next one must be `tables[done]`).
    done: usize,
    /// Rows of the open table; `None` between tables.
    rows: Option<u64>,
}

impl<W: Write> BackupWriter<W> {
    /// Writes the magic line and `header`.
    pub fn start(mut out: W, header: &Header) -> io::Result<Self> {
        writeln!(out, "{MAGIC} {VERSION}")?;
        let json = serde_json::to_string(header).map_err(io::Error::other)?;
        writeln!(out, "header {json}")?;
        Ok(Self {
            out,
            tables: header.tables.iter().map(|t| t.name.clone()).collect(),
            done: 0,
            rows: None,
        })
    }

    /// Opens the section of `table`, which must be the header's next one.
    pub fn begin_table(&mut self, table: &str) -> io::Result<()> {
        if self.rows.is_some() || self.tables.get(self.done).map(String::as_str) != Some(table) {
            return Err(invalid(format!(
                "table {table} is not the next one the header announced"
            )));
        }
        writeln!(self.out, "table {table}")?;
        self.rows = Some(0);
        Ok(())
    }

    /// Appends rows in COPY text format: whole lines, each ending in `\n`.
    pub fn write_rows(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(rows) = self.rows.as_mut() else {
            return Err(invalid("rows written outside a table".to_owned()));
        };
        if data.is_empty() {
            return Ok(());
        }
        if data.last() != Some(&b'\n') || data.starts_with(b"\\.") {
            return Err(invalid("rows must be whole COPY text lines".to_owned()));
        }
        *rows += count_lines(data);
        self.out.write_all(data)
    }

    /// Closes the open table; returns how many rows it had.
    pub fn end_table(&mut self) -> io::Result<u64> {
        let rows = self
            .rows
            .take()
            .ok_or_else(|| invalid("no table is open".to_owned()))?;
        writeln!(self.out, "\\.\nrows {rows}")?;
        self.done += 1;
        Ok(rows)
    }

    /// Writes the end line once every table is written, and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        if self.rows.is_some() || self.done != self.tables.len() {
            return Err(invalid(format!(
                "{} of {} tables written",
                self.done,
                self.tables.len()
            )));
        }
        writeln!(self.out, "end")?;
        Ok(self.out)
    }

    /// The output, to drain what was written so far (a compressor's buffer).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn count_lines(data: &[u8]) -> u64 {
    data.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Reads a backup from `input`, checking its structure: the magic line, the header, each
/// table in the header's order with as many rows as its `rows` line says, and the end.
#[derive(Debug)]
pub struct BackupReader<R> {
    input: R,
    header: Header,
    /// Tables read so far.
    done: usize,
    /// Rows read of the open table; `None` between tables.
    rows: Option<u64>,
    /// 1-based number of the last line read, for error messages.
    line_number: u64,
    line: Vec<u8>,
}

impl<R: BufRead> BackupReader<R> {
    /// Reads the magic line and the header.
    pub fn open(mut input: R) -> anyhow::Result<Self> {
        let mut line = Vec::new();
        read_line(&mut input, &mut line)?;
        let first = String::from_utf8_lossy(trim_newline(&line)).into_owned();
        let version = first
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or_else(|| anyhow!("not a tl-engine backup (it does not start with {MAGIC:?})"))?;
        ensure!(
            version == VERSION.to_string(),
            "backup format version {version} is not supported (this build reads version {VERSION})"
        );
        read_line(&mut input, &mut line)?;
        let json = trim_newline(&line)
            .strip_prefix(b"header ")
            .context("line 2 of the backup is not its header")?;
        let header: Header =
            serde_json::from_slice(json).context("the backup's header is not valid")?;
        Ok(Self {
            input,
            header,
            done: 0,
            rows: None,
            line_number: 2,
            line,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Opens the next table's section, or returns `None` at the end of the backup (after
    /// checking every table came and nothing follows).
    pub fn next_table(&mut self) -> anyhow::Result<Option<TableSpec>> {
        ensure!(
            self.rows.is_none(),
            "the previous table's rows were not all read"
        );
        self.next_line()?;
        let line = trim_newline(&self.line);
        if line == b"end" {
            ensure!(
                self.done == self.header.tables.len(),
                "line {}: the backup ends after {} of its {} tables",
                self.line_number,
                self.done,
                self.header.tables.len()
            );
            let extra = self
                .input
                .read(&mut [0u8; 1])
                .context("reading the backup")?;
            ensure!(extra == 0, "data follows the backup's end line");
            return Ok(None);
        }
        let expected = self.header.tables.get(self.done).with_context(|| {
            format!(
                "line {}: expected the end line after the header's tables",
                self.line_number
            )
        })?;
        let name = line.strip_prefix(b"table ");
        ensure!(
            name == Some(expected.name.as_bytes()),
            "line {}: expected the section of table {}",
            self.line_number,
            expected.name
        );
        self.rows = Some(0);
        Ok(Some(expected.clone()))
    }

    /// Appends whole row lines of the open table to `buffer` (at least one, unless the rows
    /// end first) until it holds at least `limit` bytes or the rows end. Returns `true` once
    /// they have ended (and their count matched the `rows` line).
    pub fn read_rows(&mut self, buffer: &mut Vec<u8>, limit: usize) -> anyhow::Result<bool> {
        let Some(mut rows) = self.rows else {
            bail!("no table section is open");
        };
        loop {
            self.next_line()?;
            if self.line.starts_with(b"\\.") {
                ensure!(
                    trim_newline(&self.line) == b"\\.",
                    "line {}: a row starts with \\.",
                    self.line_number
                );
                self.next_line()?;
                let declared: Option<u64> = trim_newline(&self.line)
                    .strip_prefix(b"rows ")
                    .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok());
                let declared = declared.with_context(|| {
                    format!("line {}: expected `rows <count>`", self.line_number)
                })?;
                let table = &self.header.tables[self.done].name;
                ensure!(
                    declared == rows,
                    "table {table}: the backup says {declared} rows but holds {rows}"
                );
                self.rows = None;
                self.done += 1;
                return Ok(true);
            }
            ensure!(
                self.line.last() == Some(&b'\n'),
                "line {}: the backup is cut short inside a row",
                self.line_number
            );
            buffer.extend_from_slice(&self.line);
            rows += 1;
            self.rows = Some(rows);
            if buffer.len() >= limit {
                return Ok(false);
            }
        }
    }

    fn next_line(&mut self) -> anyhow::Result<()> {
        read_line(&mut self.input, &mut self.line)?;
        self.line_number += 1;
        ensure!(
            !self.line.is_empty(),
            "the backup is cut short after line {}",
            self.line_number - 1
        );
        Ok(())
    }
}

/// The longest line a backup may hold: one row (its largest `args` or `result` with room
/// to spare). A longer line means a damaged or hostile file, refused before it can exhaust
/// memory.
const MAX_LINE: u64 = 256 * 1024 * 1024;

/// Reads one line (with its `\n`, if any) into `line`, replacing what was there; at most
/// [`MAX_LINE`] bytes.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> anyhow::Result<()> {
    line.clear();
    Read::take(&mut *input, MAX_LINE + 1)
        .read_until(b'\n', line)
        .context("reading the backup")?;
    ensure!(
        line.len() as u64 <= MAX_LINE,
        "the backup holds a line longer than {} MiB: the file is damaged",
        MAX_LINE / (1024 * 1024)
    );
    Ok(())
}

fn trim_newline(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn header() -> Header {
        Header {
            created_at: Utc.with_ymd_and_hms(2026, 11, 22, 10, 30, 0).unwrap(),
            migration: 20261122000002,
            tables: vec![
                TableSpec {
                    name: "jobs".into(),
                    columns: vec!["id".into(), "args".into()],
                },
                TableSpec {
                    name: "job_errors".into(),
                    columns: vec!["job_id".into(), "message".into()],
                },
            ],
            name: None,
        }
    }

    /// Rows as COPY writes them: escapes for tab, newline, backslash; `\N` for NULL.
    const JOBS: &[u8] = b"1\t{\"a\": \"x\\\\ty\\ncaf\xc3\xa9\"}\n2\t\\N\n";

    fn written() -> Vec<u8> {
        let mut writer = BackupWriter::start(Vec::new(), &header()).unwrap();
        writer.begin_table("jobs").unwrap();
        writer.write_rows(&JOBS[..JOBS.len() - 5]).unwrap();
        writer.write_rows(&JOBS[JOBS.len() - 5..]).unwrap();
        assert_eq!(writer.end_table().unwrap(), 2);
        writer.begin_table("job_errors").unwrap();
        assert_eq!(writer.end_table().unwrap(), 0);
        writer.finish().unwrap()
    }

    #[test]
    fn a_backup_round_trips_through_the_format() {
        let bytes = written();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("tl-engine-backup 1\nheader {"), "{text}");
        assert!(text.ends_with("table jobs\n1\t{\"a\": \"x\\\\ty\\ncafé\"}\n2\t\\N\n\\.\nrows 2\ntable job_errors\n\\.\nrows 0\nend\n"), "{text}");

        let mut reader = BackupReader::open(&bytes[..]).unwrap();
        assert_eq!(reader.header(), &header());
        let mut tables = Vec::new();
        while let Some(table) = reader.next_table().unwrap() {
            let mut rows = Vec::new();
            // A 1-byte limit returns one row at a time.
            let mut calls = 0;
            loop {
                let mut batch = Vec::new();
                let ended = reader.read_rows(&mut batch, 1).unwrap();
                rows.extend(batch);
                if ended {
                    break;
                }
                calls += 1;
            }
            tables.push((table.name, rows, calls));
        }
        assert_eq!(
            tables,
            [
                ("jobs".to_owned(), JOBS.to_vec(), 2),
                ("job_errors".to_owned(), Vec::new(), 0)
            ]
        );
    }

    fn read_all(bytes: &[u8]) -> anyhow::Result<()> {
        let mut reader = BackupReader::open(bytes)?;
        while reader.next_table()?.is_some() {
            while !reader.read_rows(&mut Vec::new(), 1 << 20)? {}
        }
        Ok(())
    }

    #[test]
    fn damaged_backups_are_refused_with_the_reason() {
        let good = String::from_utf8(written()).unwrap();
        let cases = [
            (
                good.replace("tl-engine-backup 1", "PGDMP"),
                "not a tl-engine backup",
            ),
            (
                good.replace("tl-engine-backup 1", "tl-engine-backup 9"),
                "version 9 is not supported",
            ),
            (good.replace("rows 2", "rows 3"), "says 3 rows but holds 2"),
            (
                good.replace("table jobs", "table api_keys"),
                "expected the section of table jobs",
            ),
            (good.replace("end\n", ""), "cut short"),
            (good[..good.len() - 60].to_owned(), "cut short"),
            (
                good[..good.find("2\t\\N").unwrap() + 4].to_owned(),
                "cut short inside a row",
            ),
            (format!("{good}extra"), "data follows"),
            (
                good.replace("header {", "header {\"x"),
                "header is not valid",
            ),
        ];
        for (bytes, reason) in cases {
            let error = read_all(bytes.as_bytes()).unwrap_err();
            assert!(format!("{error:#}").contains(reason), "{reason}: {error:#}");
        }
        read_all(good.as_bytes()).unwrap();
    }

    #[test]
    fn the_writer_keeps_to_the_header() {
        let mut writer = BackupWriter::start(Vec::new(), &header()).unwrap();
        assert!(writer.begin_table("job_errors").is_err(), "out of order");
        assert!(writer.write_rows(b"1\n").is_err(), "outside a table");
        writer.begin_table("jobs").unwrap();
        assert!(writer.write_rows(b"1").is_err(), "not a whole line");
        assert!(writer.write_rows(b"\\.\n").is_err(), "the end marker");
        writer.end_table().unwrap();
        assert!(writer.finish().is_err(), "a table is missing");
    }
}
