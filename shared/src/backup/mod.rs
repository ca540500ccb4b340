//! Database backups in object storage, written and restored by our own code (no `pg_dump`:
//! workers run in small images, and the server's version may differ from any client's).
//!
//! - [`format`]: the line-oriented file format (header, then each table's `COPY` rows).
//! - [`schema`]: what is backed up, read from the catalog; the schema version.
//! - [`dump`]: one consistent snapshot streamed through gzip into a multipart upload.
//! - [`restore`]: an object streamed back into an empty database in one transaction.
//! - [`folder`]: where backups live, finding one, keeping the last N; [`trust`]: which
//!   objects there are backups this fleet wrote (their header vouches for their name).
//! - [`pipe`]: the bounded bridges bytes cross between tasks and threads.
//!
//! Used by `engine-api backup` / `restore` / `backups list` and by the `db.backup` job kind.

pub mod dump;
pub mod folder;
pub mod format;
pub mod pipe;
pub mod restore;
pub mod schema;
mod trust;

pub use dump::{BackupSummary, write_backup};
pub use folder::{BackupChoice, BackupFolder, StoredBackup};
pub use restore::{RestoreRefused, RestoreSummary, restore_backup};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::objects::ObjectStore;

/// Writes a backup to `folder`, then deletes the oldest ones beyond the newest `keep`.
/// A pruning failure does not fail the (complete) backup: it is reported in
/// [`BackupSummary::prune_error`] and the next backup prunes again.
pub async fn back_up(
    pool: &PgPool,
    objects: &ObjectStore,
    folder: &BackupFolder,
    keep: u32,
    cancel: &CancellationToken,
    progress: impl FnMut(u64) + Send,
) -> anyhow::Result<BackupSummary> {
    let mut summary = write_backup(pool, objects, folder, cancel, progress).await?;
    match folder.prune(objects, keep).await {
        Ok(pruned) => summary.pruned = pruned,
        Err(error) => summary.prune_error = Some(format!("{error:#}")),
    }
    Ok(summary)
}
