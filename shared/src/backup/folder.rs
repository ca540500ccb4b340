//! Where backups live and which are kept: a folder of objects named
//! `<YYYYMMDDTHHMMSSZ>-<8 hex>.dump.gz` (the fleet's `backups/`, or `<prefix>/backups/` for
//! drills and tests; the random part keeps two backups of one second apart), listed oldest
//! first, found by name or as the latest, and pruned to the last N. Objects whose names do
//! not follow the pattern, or whose header does not vouch for their name ([`super::trust`]),
//! are never chosen as the latest, counted or deleted.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDateTime, Utc};

use crate::objects::{ObjectKey, ObjectStore};

/// The file name's time format (UTC, second resolution: it sorts like the times do).
const NAME_FORMAT: &str = "%Y%m%dT%H%M%SZ";
/// Hex digits of the random part after the time (none in names from before it).
const NONCE_DIGITS: usize = 8;
const SUFFIX: &str = ".dump.gz";

/// A folder of backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupFolder {
    folder: ObjectKey,
}

/// One stored backup.
#[derive(Clone, Debug)]
pub struct StoredBackup {
    pub key: ObjectKey,
    /// The file name, e.g. `20261122T103000Z.dump.gz`.
    pub name: String,
    /// When its snapshot was taken (from the name).
    pub taken_at: DateTime<Utc>,
    pub size: u64,
}

/// Which backup to restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupChoice {
    /// The most recent one in the folder.
    Latest,
    /// One by its file name.
    Named(String),
}

impl FromStr for BackupChoice {
    type Err = anyhow::Error;

    /// `latest`, or a backup's file name (`20261122T103000Z.dump.gz`).
    fn from_str(text: &str) -> anyhow::Result<Self> {
        if text == "latest" {
            return Ok(Self::Latest);
        }
        match taken_at(text) {
            Some(_) => Ok(Self::Named(text.to_owned())),
            None => bail!(
                "{text:?} is not a backup name: expected `latest` or a name like \
                 20261122T103000Z.dump.gz (see `engine-api backups list`)"
            ),
        }
    }
}

impl fmt::Display for BackupFolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.folder.as_str())
    }
}

impl BackupFolder {
    /// The fleet's backups: `backups/` in the fleet's bucket.
    pub fn fleet() -> Self {
        Self {
            folder: ObjectKey::backups_folder(),
        }
    }

    /// `<prefix>/backups/`: a folder of its own for drills and tests, so they never prune
    /// the fleet's backups.
    pub fn under(prefix: &str) -> anyhow::Result<Self> {
        let folder = ObjectKey::backups_folder_under(prefix).with_context(|| {
            format!("backup prefix {prefix:?} must be 1 to 200 of [A-Za-z0-9._-], not starting with a dot")
        })?;
        Ok(Self { folder })
    }

    /// A new key for a backup taken at `at`, never an existing backup's: the time to the
    /// second, then its millisecond and a random part (one backup runs at a time, but two
    /// may start within one second), so names still sort as the backups were taken.
    pub fn new_key(&self, at: DateTime<Utc>) -> ObjectKey {
        let millis = at.timestamp_subsec_millis().min(999);
        let name = format!(
            "{}-{:0width$x}{SUFFIX}",
            at.format(NAME_FORMAT),
            (millis << 20) | (rand::random::<u32>() >> 12),
            width = NONCE_DIGITS
        );
        ObjectKey::backup_in(&self.folder, &name).expect("a formatted time is a plain name")
    }

    /// The backups in the folder, oldest first.
    pub async fn list(&self, objects: &ObjectStore) -> anyhow::Result<Vec<StoredBackup>> {
        let mut backups: Vec<StoredBackup> = objects
            .list(&self.folder)
            .await?
            .into_iter()
            .filter_map(|object| {
                let name = object.key.as_str().strip_prefix(self.folder.as_str())?;
                Some(StoredBackup {
                    taken_at: taken_at(name)?,
                    name: name.to_owned(),
                    key: object.key.clone(),
                    size: object.size,
                })
            })
            .collect();
        backups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(backups)
    }

    /// The backups in the folder whose header vouches for their name, oldest first. Reads
    /// the start of each (one GET per backup); the others are logged and left alone.
    pub async fn trusted(&self, objects: &ObjectStore) -> anyhow::Result<Vec<StoredBackup>> {
        let mut trusted = Vec::new();
        for backup in self.list(objects).await? {
            match super::trust::doubt(objects, &backup).await? {
                None => trusted.push(backup),
                Some(why) => {
                    tracing::warn!(key = backup.key.as_str(), %why, "not a backup this fleet wrote; ignoring it");
                }
            }
        }
        Ok(trusted)
    }

    /// The backup `choice` names; an error says what the folder holds when it is missing.
    pub async fn find(
        &self,
        objects: &ObjectStore,
        choice: &BackupChoice,
    ) -> anyhow::Result<StoredBackup> {
        let backups = self.trusted(objects).await?;
        let found = match choice {
            BackupChoice::Latest => backups.last(),
            BackupChoice::Named(name) => backups.iter().find(|b| &b.name == name),
        };
        match (found, backups.last()) {
            (Some(found), _) => Ok(found.clone()),
            (None, None) => bail!("there are no backups in {self}"),
            (None, Some(latest)) => bail!(
                "there is no backup {choice} in {self} (the latest is {})",
                latest.name
            ),
        }
    }

    /// Deletes the oldest backups beyond the newest `keep` (at least one is always kept:
    /// the one just written), one key at a time. Only trusted backups count or go: an
    /// object planted with a newer name cannot push a real backup out. Returns the deleted
    /// keys.
    pub async fn prune(&self, objects: &ObjectStore, keep: u32) -> anyhow::Result<Vec<ObjectKey>> {
        let backups = self.trusted(objects).await?;
        let excess = backups.len().saturating_sub(keep.max(1) as usize);
        let mut deleted = Vec::with_capacity(excess);
        for backup in backups.into_iter().take(excess) {
            objects.delete(&backup.key).await?;
            deleted.push(backup.key);
        }
        Ok(deleted)
    }
}

impl fmt::Display for BackupChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Named(name) => f.write_str(name),
        }
    }
}

/// The time a backup's file name says, or `None` if it is not one of ours.
fn taken_at(name: &str) -> Option<DateTime<Utc>> {
    let named = name.strip_suffix(SUFFIX)?;
    let stem = match named.split_once('-') {
        None => named,
        Some((stem, nonce))
            if nonce.len() == NONCE_DIGITS
                && nonce
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            stem
        }
        Some(_) => return None,
    };
    let at = NaiveDateTime::parse_from_str(stem, NAME_FORMAT)
        .ok()?
        .and_utc();
    // Strict: chrono accepts some variations (e.g. missing zero padding) we never write.
    (at.format(NAME_FORMAT).to_string() == stem).then_some(at)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn names_carry_the_time_and_nothing_else_counts() {
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 10, 30, 0).unwrap();
        let key = BackupFolder::fleet().new_key(at);
        assert!(
            key.as_str().starts_with("backups/20261122T103000Z-000"),
            "{key:?}"
        );
        let later = BackupFolder::fleet().new_key(at + chrono::Duration::milliseconds(1));
        assert!(
            later.as_str() > key.as_str(),
            "names sort as backups were taken"
        );
        assert_eq!(taken_at(key.file_name()), Some(at));
        assert_ne!(
            key,
            BackupFolder::fleet().new_key(at),
            "two backups in one second"
        );
        // Names from before the random part still count.
        assert_eq!(taken_at("20261122T103000Z.dump.gz"), Some(at));
        for other in [
            "20261122T103000Z.dump",
            "20261122T103000Z.dump.gz.part",
            "2026112T103000Z.dump.gz",
            "20261322T103000Z.dump.gz",
            "notes.txt",
            "20261122T103000Z-XYZ.dump.gz",
            "20261122T103000Z-0123456789.dump.gz",
        ] {
            assert_eq!(taken_at(other), None, "{other}");
        }
    }

    #[test]
    fn a_choice_is_latest_or_a_backup_name() {
        assert_eq!(
            "latest".parse::<BackupChoice>().unwrap(),
            BackupChoice::Latest
        );
        assert_eq!(
            "20261122T103000Z.dump.gz".parse::<BackupChoice>().unwrap(),
            BackupChoice::Named("20261122T103000Z.dump.gz".into())
        );
        let error = "../etc/passwd".parse::<BackupChoice>().unwrap_err();
        assert!(error.to_string().contains("not a backup name"), "{error}");
    }

    #[test]
    fn a_drill_folder_is_apart_from_the_fleets() {
        let drill = BackupFolder::under("drill-1").unwrap();
        assert_eq!(drill.to_string(), "drill-1/backups/");
        assert_ne!(drill, BackupFolder::fleet());
        assert!(BackupFolder::under("a/b").is_err());
    }
}
