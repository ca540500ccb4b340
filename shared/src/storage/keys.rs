//! Every object key is built here, always under the namespace's prefix (`<ns>/…`), so no
//! code path can read or list another namespace's objects by building a key by hand.

use chrono::{DateTime, Utc};

use crate::JobId;
use crate::namespace::NamespaceSpec;

/// A key in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// One attempt's log: `<ns>/logs/YYYY/MM/DD/<job_id>/<attempt>.log.gz`.
    pub fn attempt_log(ns: &NamespaceSpec, day: DateTime<Utc>, job: JobId, attempt: u32) -> Self {
        Self(format!(
            "{}logs/{}/{job}/{attempt}.log.gz",
            ns.s3_prefix,
            day.format("%Y/%m/%d")
        ))
    }

    /// A job's artifact: `<ns>/artifacts/<job_id>/<name>`. `name` must already be checked
    /// to be a plain file name ([`Self::is_plain_name`]).
    pub fn artifact(ns: &NamespaceSpec, job: JobId, name: &str) -> Self {
        Self(format!("{}artifacts/{job}/{name}", ns.s3_prefix))
    }

    /// A batch of archived job history: `<ns>/archive/jobs/YYYY/MM/DD/<batch>.jsonl.gz`.
    pub fn archive(ns: &NamespaceSpec, day: DateTime<Utc>, batch: &str) -> Self {
        Self(format!(
            "{}archive/jobs/{}/{batch}.jsonl.gz",
            ns.s3_prefix,
            day.format("%Y/%m/%d")
        ))
    }

    /// A database backup (the fleet's, not a namespace's): `backups/<timestamp>.dump`.
    pub fn backup(at: DateTime<Utc>) -> Self {
        Self(format!("backups/{}.dump", at.format("%Y%m%dT%H%M%SZ")))
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
        &self.0
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
        let job: JobId = "01a2058b-892a-75d9-b82e-f7ec6a26e09d".parse().unwrap();
        assert_eq!(
            ObjectKey::attempt_log(&acme(), day, job, 2).as_str(),
            "acme/logs/2026/11/22/01a2058b-892a-75d9-b82e-f7ec6a26e09d/2.log.gz"
        );
        assert_eq!(
            ObjectKey::artifact(&acme(), job, "report.csv").as_str(),
            "acme/artifacts/01a2058b-892a-75d9-b82e-f7ec6a26e09d/report.csv"
        );
        assert_eq!(
            ObjectKey::archive(&acme(), day, "b1").as_str(),
            "acme/archive/jobs/2026/11/22/b1.jsonl.gz"
        );
        assert_eq!(
            ObjectKey::backup(day).as_str(),
            "backups/20261122T103000Z.dump"
        );
    }

    #[test]
    fn artifact_names_cannot_escape_their_folder() {
        assert!(ObjectKey::is_plain_name("report-2026.csv"));
        for bad in ["", "../x", ".hidden", "a/b", "a\\b", "x y"] {
            assert!(!ObjectKey::is_plain_name(bad), "{bad:?}");
        }
    }
}
