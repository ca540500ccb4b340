//! Every object key is built here, always under the namespace's prefix (`<ns>/…`) and in
//! the namespace's bucket, so no code path can read or list another namespace's objects by
//! building a key by hand.

use chrono::{DateTime, Utc};

use crate::JobId;
use crate::namespace::{Namespace, NamespaceSpec};

/// A key, and the bucket it lives in (`None`: the fleet's `storage.bucket`). Also used as a
/// prefix to list under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    bucket: Option<String>,
    key: String,
}

impl ObjectKey {
    /// The folder every object of `namespace` lies under, `<ns>/`: kept as
    /// [`NamespaceSpec::s3_prefix`], which every key below builds on.
    pub fn namespace_prefix(namespace: &Namespace) -> String {
        format!("{namespace}/")
    }

    /// One attempt's log: `<ns>/logs/YYYY/MM/DD/<job_id>/<attempt>.log.gz`.
    ///
    /// The day is the job's creation day, read from its UUIDv7 id, so every attempt of a job
    /// sits in one folder and the API finds it from the id alone. `run` names the run:
    /// [`LogRun`].
    pub fn attempt_log(ns: &NamespaceSpec, job: JobId, run: &LogRun) -> Self {
        Self::in_namespace(
            ns,
            format!("{}{run}.log.gz", Self::logs_folder(ns, job).key),
        )
    }

    /// The folder holding every attempt log of `job`.
    pub fn logs_folder(ns: &NamespaceSpec, job: JobId) -> Self {
        Self::in_namespace(
            ns,
            format!(
                "{}logs/{}/{job}/",
                ns.s3_prefix,
                job.created_at().format("%Y/%m/%d")
            ),
        )
    }

    /// A job's artifact: `<ns>/artifacts/<job_id>/<name>`. `name` must already be checked
    /// to be a plain file name ([`Self::is_plain_name`]).
    pub fn artifact(ns: &NamespaceSpec, job: JobId, name: &str) -> Self {
        Self::in_namespace(ns, format!("{}{name}", Self::artifacts_folder(ns, job).key))
    }

    /// The folder holding every artifact of `job`.
    pub fn artifacts_folder(ns: &NamespaceSpec, job: JobId) -> Self {
        Self::in_namespace(ns, format!("{}artifacts/{job}/", ns.s3_prefix))
    }

    /// A batch of archived job history: `<ns>/archive/jobs/YYYY/MM/DD/<batch>.jsonl.gz`.
    pub fn archive(ns: &NamespaceSpec, day: DateTime<Utc>, batch: &str) -> Self {
        Self::in_namespace(
            ns,
            format!(
                "{}archive/jobs/{}/{batch}.jsonl.gz",
                ns.s3_prefix,
                day.format("%Y/%m/%d")
            ),
        )
    }

    /// The folder holding every archive batch of a namespace.
    pub fn archive_folder(ns: &NamespaceSpec) -> Self {
        Self::in_namespace(ns, format!("{}archive/jobs/", ns.s3_prefix))
    }

    /// An archive batch key recorded earlier (the archive manifest), in the bucket it was
    /// recorded with, so a batch finished after a crash overwrites its first upload even if
    /// the namespace's bucket setting changed meanwhile. `None` unless the key lies in
    /// `ns`'s archive folder: a recorded key cannot reach outside it.
    pub fn recorded_archive(ns: &NamespaceSpec, bucket: Option<&str>, key: &str) -> Option<Self> {
        let folder = Self::archive_folder(ns);
        (key.starts_with(folder.as_str()) && key.ends_with(".jsonl.gz") && !key.contains(".."))
            .then(|| Self {
                bucket: bucket.map(str::to_owned),
                key: key.to_owned(),
            })
    }

    /// A database backup (the fleet's, not a namespace's), in the fleet's bucket:
    /// `backups/<timestamp>.dump.gz`.
    pub fn backup(at: DateTime<Utc>) -> Self {
        Self::fleet(format!(
            "{}{}.dump.gz",
            Self::backups_folder().key,
            at.format("%Y%m%dT%H%M%SZ")
        ))
    }

    /// The folder holding every database backup.
    pub fn backups_folder() -> Self {
        Self::fleet("backups/".to_owned())
    }

    /// A backup by its file name (as listed under [`Self::backups_folder`]); `None` unless
    /// it is a plain name.
    pub fn backup_named(name: &str) -> Option<Self> {
        Self::is_plain_name(name).then(|| Self::fleet(format!("backups/{name}")))
    }

    /// A folder of backups under `prefix` (`<prefix>/backups/`) instead of the fleet's
    /// `backups/`, so drills and tests never touch (or prune) the real ones. `None` unless
    /// `prefix` is a plain name.
    pub fn backups_folder_under(prefix: &str) -> Option<Self> {
        Self::is_plain_name(prefix).then(|| Self::fleet(format!("{prefix}/backups/")))
    }

    /// A backup by its file name in `folder` ([`Self::backups_folder`] or
    /// [`Self::backups_folder_under`]); `None` unless it is a plain name.
    pub fn backup_in(folder: &Self, name: &str) -> Option<Self> {
        Self::is_plain_name(name).then(|| Self {
            bucket: folder.bucket.clone(),
            key: format!("{}{name}", folder.key),
        })
    }

    fn in_namespace(ns: &NamespaceSpec, key: String) -> Self {
        Self {
            bucket: ns.bucket.clone(),
            key,
        }
    }

    fn fleet(key: String) -> Self {
        Self { bucket: None, key }
    }

    /// An artifact name a handler may use: 1–200 bytes of `[A-Za-z0-9._-]`, not starting
    /// with a dot, so it can never climb out of its job's folder.
    pub fn is_plain_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 200
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The bucket, or `None` for the fleet's.
    pub fn bucket(&self) -> Option<&str> {
        self.bucket.as_deref()
    }

    /// The last path segment (an artifact's or log's file name).
    pub fn file_name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or(&self.key)
    }

    /// A key listed under this folder, in the same bucket. `None` if `key` is not under it:
    /// a listing never yields another folder's keys.
    pub fn child(&self, key: &str) -> Option<Self> {
        key.starts_with(&self.key).then(|| Self {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
        })
    }
}

/// Which run of a job a log belongs to: its attempt, the redrive it happened after (0: none)
/// and, for a run that snoozed (not an attempt), which snooze it was. Rendered as the file
/// name's stem: `3`, `r1-2` (attempt 2 after the first redrive), `2-snooze1`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogRun {
    pub redrive: u32,
    pub attempt: u32,
    pub snooze: Option<u32>,
}

impl std::fmt::Display for LogRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.redrive > 0 {
            write!(f, "r{}-", self.redrive)?;
        }
        write!(f, "{}", self.attempt)?;
        if let Some(snooze) = self.snooze {
            write!(f, "-snooze{snooze}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for LogRun {
    type Err = ();

    /// Parses a stem written by [`Display`](std::fmt::Display) (`.log.gz` removed).
    fn from_str(stem: &str) -> Result<Self, ()> {
        let (redrive, rest) = match stem.strip_prefix('r') {
            Some(rest) => {
                let (redrive, rest) = rest.split_once('-').ok_or(())?;
                (redrive.parse().map_err(drop)?, rest)
            }
            None => (0, stem),
        };
        let (attempt, snooze) = match rest.split_once("-snooze") {
            Some((attempt, snooze)) => (attempt, Some(snooze.parse().map_err(drop)?)),
            None => (rest, None),
        };
        Ok(Self {
            redrive,
            attempt: attempt.parse().map_err(drop)?,
            snooze,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn acme() -> NamespaceSpec {
        NamespaceSpec::example("acme")
    }

    #[test]
    fn keys_follow_the_layout_under_the_namespace() {
        let day = Utc.with_ymd_and_hms(2026, 11, 22, 10, 30, 0).unwrap();
        let job = JobId::new_at(day);
        let run = LogRun {
            redrive: 0,
            attempt: 2,
            snooze: None,
        };
        assert_eq!(
            ObjectKey::attempt_log(&acme(), job, &run).as_str(),
            format!("acme/logs/2026/11/22/{job}/2.log.gz")
        );
        assert_eq!(
            ObjectKey::artifact(&acme(), job, "report.csv").as_str(),
            format!("acme/artifacts/{job}/report.csv")
        );
        assert_eq!(
            ObjectKey::archive(&acme(), day, "b1").as_str(),
            "acme/archive/jobs/2026/11/22/b1.jsonl.gz"
        );
        assert_eq!(
            ObjectKey::backup(day).as_str(),
            "backups/20261122T103000Z.dump.gz"
        );
    }

    #[test]
    fn a_namespace_with_its_own_bucket_keeps_its_objects_there() {
        let mut spec = acme();
        spec.bucket = Some("acme-bucket".into());
        let job = JobId::new_at(Utc::now());
        assert_eq!(
            ObjectKey::artifact(&spec, job, "a.csv").bucket(),
            Some("acme-bucket")
        );
        assert_eq!(ObjectKey::artifact(&acme(), job, "a.csv").bucket(), None);
        assert_eq!(ObjectKey::backup(Utc::now()).bucket(), None);
    }

    #[test]
    fn listed_keys_outside_the_folder_are_refused() {
        let folder = ObjectKey::artifacts_folder(&acme(), JobId::new_at(Utc::now()));
        assert!(folder.child("other/artifacts/x").is_none());
        let child = format!("{}x.csv", folder.as_str());
        assert_eq!(folder.child(&child).unwrap().file_name(), "x.csv");
    }

    #[test]
    fn recorded_archive_keys_stay_in_the_namespace_archive_folder() {
        let day = Utc.with_ymd_and_hms(2026, 11, 22, 10, 30, 0).unwrap();
        let key = ObjectKey::archive(&acme(), day, "b1");
        assert!(
            ObjectKey::archive_folder(&acme())
                .child(key.as_str())
                .is_some()
        );
        let recorded = ObjectKey::recorded_archive(&acme(), Some("old-bucket"), key.as_str());
        assert_eq!(recorded.as_ref().map(ObjectKey::as_str), Some(key.as_str()));
        assert_eq!(recorded.unwrap().bucket(), Some("old-bucket"));
        for bad in [
            "other/archive/jobs/2026/11/22/b1.jsonl.gz",
            "acme/logs/2026/11/22/b1.jsonl.gz",
            "acme/archive/jobs/../../other/b1.jsonl.gz",
            "acme/archive/jobs/2026/11/22/b1.txt",
        ] {
            assert!(
                ObjectKey::recorded_archive(&acme(), None, bad).is_none(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn log_runs_round_trip_through_their_file_names() {
        for stem in ["1", "12", "r1-2", "3-snooze2", "r2-1-snooze1"] {
            let run: LogRun = stem.parse().unwrap();
            assert_eq!(run.to_string(), stem);
        }
        for bad in ["", "x", "r-1", "1-snooze", "rx-1"] {
            assert!(bad.parse::<LogRun>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backups_can_live_in_a_folder_of_their_own() {
        let folder = ObjectKey::backups_folder_under("drill").unwrap();
        assert_eq!(folder.as_str(), "drill/backups/");
        assert_eq!(
            ObjectKey::backup_in(&folder, "20261122T103000Z.dump.gz")
                .unwrap()
                .as_str(),
            "drill/backups/20261122T103000Z.dump.gz"
        );
        assert_eq!(
            ObjectKey::backup_in(&ObjectKey::backups_folder(), "x.dump.gz"),
            ObjectKey::backup_named("x.dump.gz")
        );
        assert!(ObjectKey::backups_folder_under("../x").is_none());
        assert!(ObjectKey::backup_in(&folder, "../x").is_none());
    }

    #[test]
    fn artifact_names_cannot_escape_their_folder() {
        assert!(ObjectKey::is_plain_name("report-2026.csv"));
        for bad in ["", "../x", ".hidden", "a/b", "a\\b", "x y"] {
            assert!(!ObjectKey::is_plain_name(bad), "{bad:?}");
        }
    }
}
