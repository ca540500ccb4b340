//! `export.jobs_csv`: writes the namespace's jobs matching a filter as a CSV artifact
//! (`jobs.csv`), streamed page by page from PostgreSQL into a multipart upload, so memory
//! stays bounded whatever the number of jobs.

use std::time::Duration;

use anyhow::{Context, anyhow};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use engine_shared::store::{JobFilter, JobRecord, Store};
use engine_shared::{JobStatus, Kind, QueueName};

use crate::job::{Job, JobContext, JobError};

/// The artifact's name.
pub const ARTIFACT: &str = "jobs.csv";

/// Rows read per query.
const PAGE: u32 = 1_000;

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
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportArgs {
    pub status: Option<JobStatus>,
    pub kind: Option<Kind>,
    pub queue: Option<QueueName>,
    /// Case-insensitive substring of the last error.
    pub error: Option<String>,
    /// At most this many rows (default and maximum 1,000,000).
    #[serde(default = "max_rows", deserialize_with = "at_most_max_rows")]
    pub limit: u64,
}

fn max_rows() -> u64 {
    MAX_ROWS
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
    type Args = ExportArgs;

    fn timeout(&self) -> Duration {
        Duration::from_secs(20 * 60)
    }

    async fn run(
        &self,
        context: JobContext,
        args: ExportArgs,
    ) -> Result<serde_json::Value, JobError> {
        let store = self
            .store
            .clone()
            .ok_or_else(|| JobError::Fatal(anyhow!("this worker has no database handle")))?;
        let (reader, mut writer) = tokio::io::duplex(256 * 1024);
        let namespace = context.namespace.clone();
        let log = context.log.clone();
        let cancellation = context.cancellation.clone();
        let write = async move {
            let mut filter = JobFilter {
                status: args.status,
                kind: args.kind,
                queue: args.queue,
                error: args.error,
                before: None,
                limit: PAGE,
            };
            writer.write_all(HEADER.as_bytes()).await?;
            let mut rows = 0u64;
            while rows < args.limit {
                if cancellation.is_cancelled() {
                    return Err(anyhow!("cancelled"));
                }
                filter.limit =
                    u32::try_from((args.limit - rows).min(u64::from(PAGE))).unwrap_or(PAGE);
                let page = store.list_jobs(&namespace, &filter).await?;
                let Some(last) = page.last() else { break };
                filter.before = Some(last.id.into());
                let mut chunk = String::new();
                for job in &page {
                    push_row(&mut chunk, job);
                }
                writer.write_all(chunk.as_bytes()).await?;
                rows += page.len() as u64;
                if page.len() < PAGE as usize {
                    break;
                }
                if rows.is_multiple_of(100_000) {
                    log.info(format_args!("{rows} rows written"));
                }
            }
            writer.shutdown().await?;
            anyhow::Ok(rows)
        };
        let upload = context.artifacts.upload(ARTIFACT, reader, "text/csv");
        let (rows, size) = tokio::join!(write, upload);
        let size = size?;
        // The upload ends when the writer stops, even on an error: an export that did not
        // finish must not stay behind looking complete.
        let rows = match rows.context("reading jobs for the export") {
            Ok(rows) => rows,
            Err(error) => {
                let _ = context.artifacts.delete(ARTIFACT).await;
                return Err(if context.cancellation.is_cancelled() {
                    JobError::Cancelled
                } else {
                    JobError::Retryable(error)
                });
            }
        };
        context.log.info(format_args!(
            "exported {rows} jobs to {ARTIFACT} ({size} bytes)"
        ));
        Ok(serde_json::json!({ "artifact": ARTIFACT, "rows": rows, "bytes": size }))
    }
}

/// Appends one job as a CSV record (RFC 4180 quoting).
fn push_row(out: &mut String, job: &JobRecord) {
    let time = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map(|at| at.to_rfc3339()).unwrap_or_default()
    };
    let fields = [
        job.id.to_string(),
        job.kind.clone(),
        job.queue.clone(),
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
    fn the_limit_is_checked() {
        let parse = |v| serde_json::from_value::<ExportArgs>(v);
        assert_eq!(parse(serde_json::json!({})).unwrap().limit, MAX_ROWS);
        assert!(parse(serde_json::json!({ "limit": 0 })).is_err());
        assert!(parse(serde_json::json!({ "limit": 2_000_000 })).is_err());
        assert!(parse(serde_json::json!({ "colour": "red" })).is_err());
    }
}
