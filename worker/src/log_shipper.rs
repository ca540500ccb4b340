//! Shipping attempt logs to storage without ever holding up a job: each finished attempt's
//! log is gzipped and uploaded by a task of its own; if storage does not answer in time,
//! the log goes to a bounded local spool, which a background loop offers to storage again
//! until it is accepted. A log that fits neither (spool full, disk error) is dropped with a
//! warning — the job's result never depends on it.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use flate2::Compression;
use flate2::write::GzEncoder;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use engine_shared::JobId;
use engine_shared::config::LogSettings;
use engine_shared::namespace::NamespaceSpec;
use engine_shared::objects::{LogRun, ObjectKey, ObjectStore, is_unreachable};

use crate::context::NamespaceIndex;

/// How long one upload may take before the log is spooled instead.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Uploads under way at once; past it, logs go straight to the spool, so a slow storage
/// cannot make memory and connections grow with the job completion rate.
const MAX_UPLOADS: usize = 32;

/// At shutdown, the spool gets one last drain of at most this long.
const FINAL_DRAIN: Duration = Duration::from_secs(5);

/// One attempt's log, ready to ship.
pub struct AttemptLog {
    pub namespace: NamespaceIndex,
    pub job: JobId,
    pub run: LogRun,
    pub text: String,
}

/// Uploads attempt logs, spooling what storage does not take.
pub struct LogShipper {
    objects: Option<ObjectStore>,
    /// The served namespaces, by [`NamespaceIndex`].
    namespaces: Vec<NamespaceSpec>,
    spool: Spool,
    uploads: TaskTracker,
    permits: Arc<Semaphore>,
}

impl LogShipper {
    /// A shipper for the worker's `namespaces`; with no storage, logs are not kept.
    pub fn new(
        objects: Option<ObjectStore>,
        namespaces: Vec<NamespaceSpec>,
        settings: &LogSettings,
    ) -> Self {
        Self {
            objects,
            namespaces,
            spool: Spool::open(&settings.spool_dir, settings.spool_max_mib * 1024 * 1024),
            uploads: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(MAX_UPLOADS)),
        }
    }

    /// Whether logs are kept at all (storage configured).
    pub fn enabled(&self) -> bool {
        self.objects.is_some()
    }

    /// Ships `log` in the background: returns at once.
    pub fn ship(self: &Arc<Self>, log: AttemptLog) {
        if !self.enabled() {
            return;
        }
        let permit = self.permits.clone().try_acquire_owned().ok();
        let shipper = self.clone();
        self.uploads
            .spawn(async move { shipper.upload_or_spool(log, permit).await });
    }

    /// Uploads `log` if an upload permit was free, and spools it if none was or if storage
    /// does not take it in time.
    async fn upload_or_spool(&self, log: AttemptLog, permit: Option<OwnedSemaphorePermit>) {
        let (Some(objects), Some(spec)) = (
            &self.objects,
            self.namespaces.get(usize::from(log.namespace)),
        ) else {
            return;
        };
        let AttemptLog { job, run, text, .. } = log;
        let compressed = gzip(text.as_bytes());
        drop(text);
        let body = match compressed {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(job = %job, error = format!("{error:#}"), "could not compress an attempt log; dropping it");
                return;
            }
        };
        let error = if permit.is_some() {
            let key = ObjectKey::attempt_log(spec, job, &run);
            let upload = tokio::time::timeout(
                UPLOAD_TIMEOUT,
                objects.put(&key, body.clone(), "application/gzip"),
            );
            match upload.await {
                Ok(Ok(())) => return,
                Ok(Err(error)) => format!("{error:#}"),
                Err(_) => format!("no answer within {}s", UPLOAD_TIMEOUT.as_secs()),
            }
        } else {
            format!("{MAX_UPLOADS} uploads already under way")
        };
        if permit.is_some() {
            // Storage failed or timed out; no free permit is local back-pressure, not an error.
            engine_shared::metrics::metrics().dependency_error("s3");
        }
        drop(permit);
        let name = SpoolName {
            namespace: spec.name.as_str().to_owned(),
            job,
            run,
        };
        match self.spool.write(&name, &body) {
            Ok(()) => {
                tracing::warn!(job = %job, error, "storage did not take an attempt log; spooled it for later")
            }
            Err(spool_error) => {
                tracing::warn!(job = %job, error, spool_error = format!("{spool_error:#}"), "storage did not take an attempt log and the spool could not keep it; dropping it")
            }
        }
    }

    /// Offers spooled logs to storage every `every` until `shutdown`; then waits for
    /// uploads under way (each bounded by the upload timeout) and gives the spool one last
    /// drain of at most [`FINAL_DRAIN`], since a pod's spool may not outlive the pod.
    pub async fn run(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        if !self.enabled() {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            self.drain_spool(&shutdown).await;
        }
        self.uploads.close();
        self.uploads.wait().await;
        let last_chance = CancellationToken::new();
        let _ = tokio::time::timeout(FINAL_DRAIN, self.drain_spool(&last_chance)).await;
        let left = self.spool.entries().len();
        if left > 0 {
            tracing::warn!(
                left,
                dir = %self.spool.dir.display(),
                "attempt logs still spooled at shutdown; a worker started with this spool uploads them"
            );
        }
    }

    /// Uploads spooled logs oldest first until `stop`. Stops at the first failure to reach
    /// storage (still down: no point hammering it); a log storage refuses (a bucket gone, no
    /// access) is skipped, so it cannot hold up the rest. Returns how many were uploaded.
    pub async fn drain_spool(&self, stop: &CancellationToken) -> usize {
        let Some(objects) = &self.objects else {
            return 0;
        };
        self.spool.recount();
        let mut uploaded = 0;
        for (path, name) in self.spool.entries() {
            if stop.is_cancelled() {
                break;
            }
            let Some(spec) = self
                .namespaces
                .iter()
                .find(|spec| spec.name.as_str() == name.namespace)
            else {
                continue; // another worker's namespace, sharing the directory
            };
            let Ok(body) = std::fs::read(&path) else {
                continue;
            };
            let key = ObjectKey::attempt_log(spec, name.job, &name.run);
            match tokio::time::timeout(UPLOAD_TIMEOUT, objects.put(&key, body, "application/gzip"))
                .await
            {
                Ok(Ok(())) => {
                    self.spool.remove(&path);
                    uploaded += 1;
                }
                Ok(Err(error)) if !is_unreachable(&error) => {
                    tracing::warn!(file = %path.display(), error = format!("{error:#}"), "storage refused a spooled log; skipping it this round");
                }
                _ => break,
            }
        }
        if uploaded > 0 {
            tracing::info!(uploaded, "spooled attempt logs uploaded");
        }
        uploaded
    }
}

fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).context("compressing")?;
    encoder.finish().context("compressing")
}

/// What a spooled file is: its name says which log it is, `<ns>__<job>__<run>.log.gz`
/// (every part is free of `_`), so the object key is rebuilt by [`ObjectKey`] on upload.
#[derive(Debug, PartialEq, Eq)]
struct SpoolName {
    namespace: String,
    job: JobId,
    run: LogRun,
}

impl SpoolName {
    fn file_name(&self) -> String {
        format!("{}__{}__{}.log.gz", self.namespace, self.job, self.run)
    }

    fn parse(file_name: &str) -> Option<Self> {
        let stem = file_name.strip_suffix(".log.gz")?;
        let mut parts = stem.split("__");
        let name = Self {
            namespace: parts.next()?.to_owned(),
            job: parts.next()?.parse().ok()?,
            run: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(name)
    }
}

/// A directory of gzipped logs waiting for storage, never larger than `max_bytes`.
struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Bytes in the directory, counted at start and kept up to date by this process.
    used: AtomicU64,
}

impl Spool {
    fn open(dir: &Path, max_bytes: u64) -> Self {
        let spool = Self {
            dir: dir.to_owned(),
            max_bytes,
            used: AtomicU64::new(0),
        };
        spool.recount();
        spool
    }

    /// Counts the bytes in the directory again. Other workers may share it (a VM running
    /// several), adding and draining files this process never saw, so each drain pass
    /// starts from what is really there.
    fn recount(&self) {
        let used = self
            .entries()
            .iter()
            .filter_map(|(path, _)| std::fs::metadata(path).ok())
            .map(|meta| meta.len())
            .sum();
        self.used.store(used, Ordering::Relaxed);
    }

    fn write(&self, name: &SpoolName, body: &[u8]) -> anyhow::Result<()> {
        let size = body.len() as u64;
        let used = self.used.fetch_add(size, Ordering::Relaxed);
        if used.saturating_add(size) > self.max_bytes {
            self.release(size);
            anyhow::bail!(
                "the spool is full ({} MiB used of logs.spool_max_mib)",
                used / (1024 * 1024)
            );
        }
        let written = (|| {
            // Owner-only: logs may hold customer data, and a planted file would be
            // uploaded as a namespace's log.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)?;
            // Written under a temporary name and renamed, so a drain never sees half a file.
            let path = self.dir.join(name.file_name());
            let partial = path.with_extension("partial");
            std::fs::write(&partial, body)?;
            std::fs::rename(&partial, &path)
        })();
        if written.is_err() {
            self.release(size);
        }
        written.with_context(|| format!("writing to the spool in {}", self.dir.display()))
    }

    /// Spooled logs, oldest first.
    fn entries(&self) -> Vec<(PathBuf, SpoolName)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut entries: Vec<_> = dir
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = SpoolName::parse(entry.file_name().to_str()?)?;
                let modified = entry.metadata().ok()?.modified().ok()?;
                Some((modified, entry.path(), name))
            })
            .collect();
        entries.sort_by_key(|(modified, _, _)| *modified);
        entries
            .into_iter()
            .map(|(_, path, name)| (path, name))
            .collect()
    }

    fn remove(&self, path: &Path) {
        if let Ok(meta) = std::fs::metadata(path)
            && std::fs::remove_file(path).is_ok()
        {
            self.release(meta.len());
        }
    }

    /// Takes `size` off the count, never below zero (another process may have drained
    /// files counted here).
    fn release(&self, size: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(size))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(attempt: u32) -> SpoolName {
        SpoolName {
            namespace: "acme-2".into(),
            job: JobId::new(),
            run: LogRun {
                redrive: 1,
                attempt,
                snooze: None,
            },
        }
    }

    #[test]
    fn spool_file_names_round_trip() {
        let name = name(3);
        assert_eq!(SpoolName::parse(&name.file_name()), Some(name));
        for bad in ["x.log.gz", "a__b__1.log.gz", "a__b.log.gz", "partial"] {
            assert_eq!(SpoolName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_spool_refuses_what_would_pass_its_bound() {
        let dir = std::env::temp_dir().join(format!("tl-spool-test-{}", JobId::new()));
        let spool = Spool::open(&dir, 100);
        spool.write(&name(1), &[0; 60]).unwrap();
        assert!(spool.write(&name(2), &[0; 60]).is_err());
        assert_eq!(spool.entries().len(), 1);
        let (path, _) = spool.entries().remove(0);
        spool.remove(&path);
        spool.write(&name(3), &[0; 60]).unwrap();
        assert_eq!(Spool::open(&dir, 100).used.load(Ordering::Relaxed), 60);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
