//! Which objects in a backup folder are backups this fleet wrote: the dump's own header
//! (its magic line, and the file name and time it was written under) must agree with the
//! object's name. "latest" and pruning trust nothing else, so an object someone planted
//! under `backups/`, or an old dump copied to a newer name, can neither be restored as the
//! latest nor push real backups out of the ones kept.

use std::io::Write;

use anyhow::{Context, bail};
use flate2::write::GzDecoder;

use super::folder::StoredBackup;
use super::format::{BackupReader, Header};
use crate::objects::{ObjectKey, ObjectStore};

/// The most compressed bytes read to find a header: it is two lines near the start.
const HEADER_READ_LIMIT: usize = 1 << 20;

/// Why `backup` is not one of ours (`Some`), or `None` when its header vouches for it. An
/// error means the object could not be read at all: the caller must not guess then, or a
/// storage hiccup would silently make an older backup the latest.
pub(super) async fn doubt(
    objects: &ObjectStore,
    backup: &StoredBackup,
) -> anyhow::Result<Option<String>> {
    let header = match header_of(objects, &backup.key).await {
        Ok(header) => header,
        Err(error) if error.chain().any(|cause| cause.is::<NotABackup>()) => {
            return Ok(Some(format!("{error:#}")));
        }
        Err(error) => return Err(error),
    };
    if header.created_at != backup.taken_at {
        return Ok(Some(format!(
            "its header says it was taken at {}, its name {}",
            header.created_at, backup.taken_at
        )));
    }
    // Backups from before names were recorded carry none; their time must match.
    if let Some(name) = &header.name
        && name != &backup.name
    {
        return Ok(Some(format!("its header names it {name}")));
    }
    Ok(None)
}

/// The object is there but is not a readable backup (as opposed to unreadable storage).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotABackup(String);

/// The header at the start of the backup at `key`, reading only as far as it.
async fn header_of(objects: &ObjectStore, key: &ObjectKey) -> anyhow::Result<Header> {
    let mut body = objects
        .get(key)
        .await?
        .ok_or_else(|| NotABackup("it is gone".into()))?;
    let mut text = GzDecoder::new(Vec::new());
    let mut read = 0;
    while text.get_ref().iter().filter(|&&b| b == b'\n').count() < 2 {
        let Some(chunk) = body
            .next()
            .await
            .transpose()
            .with_context(|| format!("reading {}", key.as_str()))?
        else {
            break;
        };
        read += chunk.len();
        text.write_all(&chunk)
            .and_then(|()| text.flush())
            .map_err(|_| NotABackup("it is not gzip".into()))?;
        if read > HEADER_READ_LIMIT {
            bail!(NotABackup(format!(
                "no header in its first {HEADER_READ_LIMIT} bytes"
            )));
        }
    }
    let reader = BackupReader::open(&text.get_ref()[..])
        .map_err(|error| NotABackup(format!("{error:#}")))?;
    Ok(reader.header().clone())
}
