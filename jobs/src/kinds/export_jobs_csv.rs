//! `export.jobs_csv`: writes the namespace's jobs matching a filter as a CSV artifact
//! (`jobs.csv`), streamed page by page from PostgreSQL into a multipart upload, so memory
//! stays bounded whatever the number of jobs.

use std::io;
use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

use engine_shared::store::{JobFilter, JobRecord, Store};
use engine_shared::{JobStatus, Kind, QueueName};

use crate::{Job, JobContext, JobError, ResultExt};

/// The artifact's name.
pub const ARTIFACT: &str = "jobs.csv";

/// Rows read per query: small, since one job's args may be a quarter of a MiB.
const PAGE: u32 = 100;

/// Bytes of args and results read per query at most, whatever the rows hold.
const PAGE_BYTES: i64 = 8 * 1024 * 1024;

/// The most rows one export writes.
const MAX_ROWS: u64 = 1_000_000;

pub struct ExportJobsCsv {
    store: Option<Store>,
}

impl ExportJobsCsv {
    pub fn new(store: Option<Store>) -> Self {
        Self { store }
    }
}

/// Which jobs to export; every field narrows the set. Newest first.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExportJobsCsvArgs {
    pub status: Option<JobStatus>,
    pub kind: Option<Kind>,
    pub queue: Option<QueueName>,
    /// Case-insensitive substring of the last error.
    pub error: Option<String>,
    /// At most this many rows (default and maximum 1,000,000).
    #[serde(default = "max_rows", deserialize_with = "at_most_max_rows")]
    pub limit: u64,
}

/// The result: the artifact written, with its rows and size.
#[derive(Debug, Serialize)]
pub struct ExportJobsCsvOutput {
    /// Always [`ARTIFACT`].
    pub artifact: String,
    pub rows: u64,
    pub bytes: u64,
}

fn max_rows() -> u64 {
    MAX_ROWS
}

/// Every job, up to the most rows: what `{}` reads as (a derived `Default` would give a
/// `limit` of 0, which the kind refuses).
impl Default for ExportJobsCsvArgs {
    fn default() -> Self {
        Self {
            status: None,
            kind: None,
            queue: None,
            error: None,
            limit: MAX_ROWS,
        }
    }
}

fn at_most_max_rows<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let limit = u64::deserialize(deserializer)?;
    if limit == 0 || limit > MAX_ROWS {
        return Err(serde::de::Error::custom(format!(
            "must be between 1 and {MAX_ROWS}"
        )));
    }
    Ok(limit)
}

const HEADER: &str = "id,kind,queue,status,attempts,max_attempts,created_at,started_at,\
finished_at,last_error,args,result\n";

impl Job for ExportJobsCsv {
    const KIND: &'static str = "export.jobs_csv";
    type Args = ExportJobsCsvArgs;
    type Output = ExportJobsCsvOutput;

    fn timeout(&self) -> Duration {
        Duration::from_secs(20 * 60)
    }

    async fn run(
        &self,
        context: JobContext,
        args: ExportJobsCsvArgs,
    ) -> Result<ExportJobsCsvOutput, JobError> {
        let store = self
            .store
            .clone()
            .ok_or_else(|| JobError::fatal("this worker has no database handle"))?;
        // Rows flow through a small channel into the upload: memory holds a page of rows and
        // a few encoded ones, whatever the export's size. A failure is sent down the channel
        // as a read error, so the upload fails (and aborts) instead of storing a cut-off file.
        let (sender, receiver) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_ROWS);
        let reader = StreamReader::new(ReceiverStream(receiver));
        let namespace = context.namespace.clone();
        let log = context.log.clone();
        let cancellation = context.cancellation.clone();
        let write = async move {
            let outcome = write_rows(&store, &namespace, args, &sender, &cancellation, &log).await;
            if let Err(error) = &outcome {
                let _ = sender
                    .send(Err(io::Error::other(format!("{error:#}"))))
                    .await;
            }
            outcome
        };
        let upload = context.artifacts.upload(ARTIFACT, reader, "text/csv");
        let (rows, size) = tokio::join!(write, upload);
        if context.cancellation.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        // The upload's error comes first: it is the cause when storage is missing or
        // refused the upload (the writer then only saw the reader go away); a failed read
        // of the jobs fails the upload too, with the reason inside.
        let size = size?;
        let rows = rows.context("reading jobs for the export").retryable()?;
        context.log.info(format_args!(
            "exported {rows} jobs to {ARTIFACT} ({size} bytes)"
        ));
        Ok(ExportJobsCsvOutput {
            artifact: ARTIFACT.to_owned(),
            rows,
            bytes: size,
        })
    }
}

/// Rows held in the channel between the database and the upload.
const CHANNEL_ROWS: usize = 64;

/// Sends the header and every matching row, page by page. Ends early (with an error) when
/// the upload stops reading or the job is cancelled.
async fn write_rows(
    store: &Store,
    namespace: &engine_shared::Namespace,
    args: ExportJobsCsvArgs,
    sender: &mpsc::Sender<io::Result<Bytes>>,
    cancellation: &tokio_util::sync::CancellationToken,
    log: &crate::JobLog,
) -> anyhow::Result<u64> {
    let send = |chunk: String| async move {
        sender
            .send(Ok(Bytes::from(chunk)))
            .await
            .map_err(|_| anyhow!("the upload stopped reading"))
    };
    send(HEADER.to_owned()).await?;
    let mut filter = JobFilter {
        status: args.status,
        kind: args.kind,
        queue: args.queue,
        error: args.error,
        before: None,
        limit: PAGE,
        max_bytes: PAGE_BYTES,
    };
    let mut rows = 0u64;
    while rows < args.limit {
        if cancellation.is_cancelled() {
            anyhow::bail!("cancelled");
        }
        filter.limit = u32::try_from((args.limit - rows).min(u64::from(PAGE))).unwrap_or(PAGE);
        let page = store.list_jobs(namespace, &filter).await?;
        let Some(last) = page.jobs.last() else { break };
        filter.before = Some(last.id);
        let full = page.more;
        for job in page.jobs {
            let mut row = String::new();
            push_row(&mut row, &job);
            send(row).await?;
            rows += 1;
            if rows.is_multiple_of(100_000) {
                log.info(format_args!("{rows} rows written"));
            }
        }
        if !full {
            break;
        }
    }
    Ok(rows)
}

/// An `mpsc::Receiver` as a `Stream` (what `StreamReader` reads).
struct ReceiverStream(mpsc::Receiver<io::Result<Bytes>>);

impl futures_util::Stream for ReceiverStream {
    type Item = io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(context)
    }
}

/// Appends one job as a CSV record (RFC 4180 quoting).
fn push_row(out: &mut String, job: &JobRecord) {
    let time = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map(|at| at.to_rfc3339()).unwrap_or_default()
    };
    let fields = [
        job.id.to_string(),
        job.kind.to_string(),
        job.queue.to_string(),
        job.status.as_str().to_owned(),
        job.attempts.to_string(),
        job.max_attempts.to_string(),
        job.created_at.to_rfc3339(),
        time(job.started_at),
        time(job.finished_at),
        job.last_error.clone().unwrap_or_default(),
        job.args.to_string(),
        job.result
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    ];
    for (index, field) in fields.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        push_field(out, field);
    }
    out.push('\n');
}

fn push_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_separators_quotes_or_newlines_are_quoted() {
        let mut out = String::new();
        push_field(&mut out, "plain");
        out.push(',');
        push_field(&mut out, "a,b");
        out.push(',');
        push_field(&mut out, "say \"hi\"\nbye");
        assert_eq!(out, "plain,\"a,b\",\"say \"\"hi\"\"\nbye\"");
    }

    #[test]
    fn the_output_is_the_json_the_fleet_stored_before_it_was_typed() {
        let output = ExportJobsCsvOutput {
            artifact: ARTIFACT.to_owned(),
            rows: 3,
            bytes: 120,
        };
        assert_eq!(
            serde_json::to_value(output).unwrap(),
            serde_json::json!({ "artifact": "jobs.csv", "rows": 3, "bytes": 120 })
        );
    }

    #[test]
    fn the_limit_is_checked() {
        let parse = |v| serde_json::from_value::<ExportJobsCsvArgs>(v);
        assert_eq!(parse(serde_json::json!({})).unwrap().limit, MAX_ROWS);
        assert_eq!(
            ExportJobsCsvArgs::default().limit,
            MAX_ROWS,
            "as `{{}}` reads"
        );
        assert!(parse(serde_json::json!({ "limit": 0 })).is_err());
        assert!(parse(serde_json::json!({ "limit": 2_000_000 })).is_err());
        assert!(parse(serde_json::json!({ "colour": "red" })).is_err());
    }
}
