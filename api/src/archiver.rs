//! The job history archiver: moves finished jobs older than `archive.after_days` out of
//! PostgreSQL into `<ns>/archive/jobs/YYYY/MM/DD/<batch>.jsonl.gz`, one gzipped JSON line
//! per job (its whole row and its `job_errors`), deleting them only once the object is
//! stored.
//!
//! One batch, inside one [`ArchivePass`] (a transaction holding the namespace's archive
//! lock and the batch's row locks throughout):
//!
//! 1. a batch a stopped pass left in the manifest is finished first: its jobs that are
//!    still finished are read again and uploaded to the batch's recorded key (an overwrite
//!    of whatever the first upload left there), else a new batch is chosen, oldest finished
//!    first, and recorded in the manifest (committed on its own, before the upload);
//! 2. the JSON lines are gzipped and put;
//! 3. only then the jobs (their errors cascade) and the manifest row are deleted, in the
//!    pass's transaction, and it commits.
//!
//! A crash, a cancelled pass or a failed step anywhere rolls the pass back: before the
//! manifest row, nothing happened; after it, the next pass redoes steps 2–3 for the same
//! key. So an archived job is in exactly one object and gone from PostgreSQL, or still in
//! PostgreSQL and (after the next pass) in no object. Passes over one namespace never
//! overlap, whatever the number of API replicas; different namespaces go on in parallel.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use engine_shared::config::ArchiveSettings;
use engine_shared::namespace::NamespaceSpec;
use engine_shared::objects::{ObjectKey, ObjectStore};
use engine_shared::store::{ArchiveBatch, ArchivePass, ArchivedJob, Store};

use crate::state::AppState;

/// The content type of an archive object: the gzip file itself, not JSON sent with a
/// `Content-Encoding` that HTTP clients would silently undo.
const CONTENT_TYPE: &str = "application/gzip";

/// What one [`archive_once`] did, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    /// Batches committed (their jobs deleted from PostgreSQL).
    pub batches: u64,
    /// Jobs archived and deleted.
    pub jobs: u64,
    /// Objects put (a resumed batch puts its object again, to the same key).
    pub objects_written: u64,
    /// Batches a stopped pass had left behind and this one finished.
    pub resumed: u64,
    /// Namespaces left alone because another pass held their archive lock.
    pub busy: u64,
}

/// How far [`archive_batch`] goes. Only `Commit` archives; `StopAfterUpload` is a seam for
/// tests and failure drills: it stops exactly where a crash between the upload and the
/// delete would, leaving the object stored, the jobs in PostgreSQL and the batch pending.
/// (A pending batch with nothing left to upload is finished either way.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Commit,
    StopAfterUpload,
}

/// What [`archive_batch`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Another pass holds the namespace's archive lock.
    Busy,
    /// No pending batch, and no job old enough.
    Nothing,
    /// A batch's object is stored and (unless stopped) its jobs deleted.
    Archived {
        key: ObjectKey,
        /// Jobs in the object (and, when committed, deleted).
        jobs: u64,
        /// It was a batch a stopped pass had left pending.
        resumed: bool,
        /// A new batch cut at `archive.batch_size` jobs or `archive.batch_max_bytes`: there
        /// may be more right away.
        full: bool,
        committed: bool,
    },
    /// A pending batch none of whose jobs is archivable any more (all revived): its object,
    /// if the first upload got that far, is deleted, and so is the batch.
    Dropped { key: ObjectKey },
}

/// Archives every namespace in `namespaces` as of `now`, batch after batch until each has
/// nothing old enough left (or another pass holds its lock). A namespace that fails does
/// not stop the others; the error names every namespace that failed. With
/// `archive.after_days = 0` (off) it does nothing.
pub async fn archive_once(
    store: &Store,
    objects: &ObjectStore,
    namespaces: &[NamespaceSpec],
    settings: &ArchiveSettings,
    now: DateTime<Utc>,
) -> anyhow::Result<ArchiveReport> {
    let mut report = ArchiveReport::default();
    if settings.after_days == 0 {
        return Ok(report);
    }
    let mut failures = Vec::new();
    for ns in namespaces {
        if let Err(error) = archive_namespace(store, objects, ns, settings, now, &mut report).await
        {
            failures.push(format!("{}: {error:#}", ns.name));
        }
    }
    if failures.is_empty() {
        Ok(report)
    } else {
        anyhow::bail!("archiving failed for {}", failures.join("; "))
    }
}

async fn archive_namespace(
    store: &Store,
    objects: &ObjectStore,
    ns: &NamespaceSpec,
    settings: &ArchiveSettings,
    now: DateTime<Utc>,
    report: &mut ArchiveReport,
) -> anyhow::Result<()> {
    loop {
        match archive_batch(store, objects, ns, settings, now, Finish::Commit).await? {
            BatchOutcome::Busy => {
                report.busy += 1;
                return Ok(());
            }
            BatchOutcome::Nothing => return Ok(()),
            BatchOutcome::Dropped { .. } => report.resumed += 1,
            BatchOutcome::Archived {
                jobs,
                resumed,
                full,
                ..
            } => {
                report.batches += 1;
                report.jobs += jobs;
                report.objects_written += 1;
                report.resumed += u64::from(resumed);
                // A short new batch means nothing old enough is left; after a resumed one,
                // look again (there may be more pending, or new work).
                if !resumed && !full {
                    return Ok(());
                }
            }
        }
    }
}

/// One batch of `ns`: the oldest pending batch if a stopped pass left one, else a new one
/// of up to `settings.batch_size` jobs finished before `now - settings.after_days`.
pub async fn archive_batch(
    store: &Store,
    objects: &ObjectStore,
    ns: &NamespaceSpec,
    settings: &ArchiveSettings,
    now: DateTime<Utc>,
    finish: Finish,
) -> anyhow::Result<BatchOutcome> {
    let Some(mut pass) = store.begin_archive(&ns.name).await? else {
        return Ok(BatchOutcome::Busy);
    };
    let cutoff = now - chrono::Duration::days(i64::from(settings.after_days));
    // A new batch cut short by its row or byte bound: there may be more right away.
    let mut more = false;
    let (batch, jobs, resumed) = match pass.pending().await? {
        Some(batch) => {
            let locked = pass.lock_recorded(&batch, cutoff).await?;
            let jobs = pass.read(&locked).await?;
            (batch, jobs, true)
        }
        None => {
            let limit = i64::from(settings.batch_size.max(1));
            let chosen = pass.choose(cutoff, limit, settings.batch_max_bytes).await?;
            if chosen.ids.is_empty() {
                pass.rollback().await?;
                return Ok(BatchOutcome::Nothing);
            }
            more = chosen.more;
            let jobs = pass.read(&chosen.ids).await?;
            (record_new_batch(&pass, ns, &jobs).await?, jobs, false)
        }
    };
    let key = ObjectKey::recorded_archive(ns, batch.bucket.as_deref(), &batch.object_key)
        .with_context(|| {
            format!(
                "archive batch {} names key {:?}, outside the namespace's archive folder",
                batch.id, batch.object_key
            )
        })?;
    // The object must hold exactly what the commit deletes: the rows read above, which the
    // pass keeps locked until then.
    let archived: Vec<Uuid> = jobs.iter().map(|job| job.id).collect();
    if jobs.is_empty() {
        objects.delete(&key).await?;
    } else {
        let count = jobs.len() as u64;
        objects
            .put(&key, gzip_lines(jobs).await?, CONTENT_TYPE)
            .await?;
        if finish == Finish::StopAfterUpload {
            pass.rollback().await?;
            return Ok(BatchOutcome::Archived {
                key,
                jobs: count,
                resumed,
                full: false,
                committed: false,
            });
        }
    }
    let deleted = pass.complete(batch.id, &archived).await?;
    if archived.is_empty() {
        return Ok(BatchOutcome::Dropped { key });
    }
    Ok(BatchOutcome::Archived {
        key,
        jobs: deleted,
        resumed,
        full: !resumed && more,
        committed: true,
    })
}

/// Names and records a new batch of `jobs` (oldest finished first). The day folder is the
/// oldest job's finishing day; the file name is the batch's own UUIDv7, so no two batches
/// can share a key.
async fn record_new_batch(
    pass: &ArchivePass,
    ns: &NamespaceSpec,
    jobs: &[ArchivedJob],
) -> anyhow::Result<ArchiveBatch> {
    let id = Uuid::now_v7();
    let oldest = jobs.first().map_or_else(Utc::now, |job| job.finished_at);
    let key = ObjectKey::archive(ns, oldest, &id.to_string());
    let batch = ArchiveBatch {
        id,
        object_key: key.as_str().to_owned(),
        bucket: key.bucket().map(str::to_owned),
        job_ids: jobs.iter().map(|job| job.id).collect(),
    };
    pass.record(&batch).await?;
    Ok(batch)
}

/// The jobs as gzipped JSON lines. Compression is CPU work on up to a batch of rows, so it
/// runs off the async threads that serve HTTP.
async fn gzip_lines(jobs: Vec<ArchivedJob>) -> anyhow::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        for job in &jobs {
            encoder.write_all(job.line.as_bytes())?;
            encoder.write_all(b"\n")?;
        }
        encoder.finish()
    })
    .await
    .context("the archive compression task failed")?
    .context("compressing an archive batch")
}

/// The archiver an API replica runs: every `archive.interval_secs` (and once at start), one
/// [`archive_once`] over the namespaces this fleet serves.
pub struct Archiver {
    store: Store,
    objects: ObjectStore,
    namespaces: Vec<NamespaceSpec>,
    settings: ArchiveSettings,
}

impl Archiver {
    /// `None` when archiving is off: no storage configured, or `archive.after_days = 0`.
    pub fn from_state(state: &AppState) -> Option<Self> {
        let objects = state.objects.clone()?;
        (state.settings.archive.after_days > 0).then(|| Self {
            store: state.store.clone(),
            objects,
            namespaces: state.settings.namespaces.clone(),
            settings: state.settings.archive.clone(),
        })
    }

    /// Archives until `shutdown`. A pass cut short by the shutdown is rolled back and its
    /// batch, if recorded, finished by the next pass of any replica.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let mut ticks =
            tokio::time::interval(Duration::from_secs(self.settings.interval_secs.max(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let pass = archive_once(
                &self.store,
                &self.objects,
                &self.namespaces,
                &self.settings,
                Utc::now(),
            );
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = pass => result,
            };
            match result {
                Ok(report) if report.jobs > 0 || report.resumed > 0 => {
                    tracing::info!(
                        jobs = report.jobs,
                        batches = report.batches,
                        resumed = report.resumed,
                        "archived finished jobs"
                    );
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(
                    error = format!("{error:#}"),
                    "archive pass failed; the next one retries"
                ),
            }
        }
    }
}
