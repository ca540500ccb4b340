//! Restoring a backup into an empty database: refuse a target that holds rows or a backup
//! of another schema version (before anything changes), migrate the target, then stream
//! the object → gunzip → `COPY … FROM STDIN` for every table in one transaction, so a
//! damaged backup or a failure half-way leaves the target's tables empty.
//!
//! The download is decompressed and parsed on a blocking thread with `std::io` (the
//! [`format`](super::format) reader); rows cross to the async side in 256 KiB batches over
//! a bounded channel, so memory stays flat whatever the size.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use flate2::read::GzDecoder;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::dump::SESSION_SETTINGS;
use super::format::{BackupReader, Header, TableSpec};
use super::pipe::BlockingReader;
use super::schema;
use crate::objects::{ObjectKey, ObjectStore};
use crate::store::Store;

/// Rows are handed to `COPY` in batches of about this many bytes.
const BATCH: usize = 256 * 1024;

/// Batches parsed ahead of the database at most.
const EVENTS: usize = 4;

/// Why a restore was refused before it changed anything.
#[derive(Debug, thiserror::Error)]
pub enum RestoreRefused {
    #[error(
        "the target database is not empty ({} hold rows): restore only into an empty database",
        .0.join(", ")
    )]
    NotEmpty(Vec<String>),
    #[error(
        "the backup is of schema version {backup} but this build's is {build}: restore it with \
         the engine-api release that wrote it"
    )]
    SchemaVersion { backup: i64, build: i64 },
    #[error("the target database is at schema version {target}, newer than this build's {build}")]
    TargetNewer { target: i64, build: i64 },
}

/// A restore that committed.
#[derive(Clone, Debug)]
pub struct RestoreSummary {
    /// Rows restored per table.
    pub tables: BTreeMap<String, u64>,
    /// The schema version of the backup (and now of the target).
    pub migration: i64,
    /// When the backup's snapshot was taken.
    pub taken_at: DateTime<Utc>,
    /// Compressed bytes downloaded.
    pub bytes: u64,
    pub duration: Duration,
    /// Unfinished jobs put back in the outbox, because no message of the old broker exists
    /// for them here ([`return_unfinished_to_outbox`]).
    pub requeued: u64,
}

/// What the parsing thread hands to the database side, in file order.
enum Event {
    Header(Header),
    Table(TableSpec),
    Rows(Vec<u8>),
    TableEnd,
    End,
}

/// Restores the backup at `key` into the database behind `target`, which must hold no
/// rows. `progress` is called with the compressed bytes read so far.
pub async fn restore_backup(
    objects: &ObjectStore,
    key: &ObjectKey,
    target: &Store,
    progress: impl FnMut(u64) + Send,
) -> anyhow::Result<RestoreSummary> {
    let started = Instant::now();
    let build = schema::latest_known_migration();
    let mut conn = target
        .pool()
        .acquire()
        .await
        .context("connecting to the target database")?;
    refuse_unless_empty(&mut conn).await?;
    if let Some(applied) = schema::applied_migration(&mut conn).await?
        && applied > build
    {
        return Err(RestoreRefused::TargetNewer {
            target: applied,
            build,
        }
        .into());
    }

    let body = objects
        .get(key)
        .await?
        .with_context(|| format!("there is no backup {}", key.as_str()))?;
    let read = Arc::new(AtomicU64::new(0));
    let (sender, mut events) = mpsc::channel(EVENTS);
    let source = BlockingReader::new(
        Box::pin(body.into_async_read()),
        Handle::current(),
        read.clone(),
    );
    let parser = tokio::task::spawn_blocking(move || parse(source, sender));
    let header = match events.recv().await {
        Some(Ok(Event::Header(header))) => header,
        Some(Err(error)) => return Err(error.context(format!("reading {}", key.as_str()))),
        _ => bail!("reading {}: no header", key.as_str()),
    };
    if header.migration != build {
        return Err(RestoreRefused::SchemaVersion {
            backup: header.migration,
            build,
        }
        .into());
    }

    target
        .migrate()
        .await
        .context("migrating the target database")?;
    let loaded = load(&mut conn, &header, &mut events, &read, progress).await;
    if loaded.is_err() {
        // A connection may be left inside an unfinished COPY: never reuse it.
        conn.close_on_drop();
    }
    drop(events);
    // The parser stops at its next send once the channel is closed.
    let _ = parser.await;
    let (tables, requeued) = loaded.with_context(|| format!("restoring {}", key.as_str()))?;
    Ok(RestoreSummary {
        tables,
        requeued,
        migration: header.migration,
        taken_at: header.created_at,
        bytes: read.load(Ordering::Relaxed),
        duration: started.elapsed(),
    })
}

/// Refuses (with [`RestoreRefused::NotEmpty`]) if any table of the target holds a row.
async fn refuse_unless_empty(conn: &mut PgConnection) -> anyhow::Result<()> {
    let tables = schema::tables(conn).await?;
    let occupied = schema::occupied(conn, &tables).await?;
    if occupied.is_empty() {
        Ok(())
    } else {
        Err(RestoreRefused::NotEmpty(occupied).into())
    }
}

/// Copies every table in one transaction, after locking the target's tables and checking
/// again that they are empty (nobody can write between that check and the commit).
async fn load(
    conn: &mut PgConnection,
    header: &Header,
    events: &mut mpsc::Receiver<anyhow::Result<Event>>,
    read: &AtomicU64,
    mut progress: impl FnMut(u64) + Send,
) -> anyhow::Result<(BTreeMap<String, u64>, u64)> {
    let mut tx = conn.begin().await.context("starting the restore")?;
    sqlx::raw_sql(SESSION_SETTINGS)
        .execute(&mut *tx)
        .await
        .context("setting the restore's session")?;
    let present = schema::tables(&mut tx).await?;
    for table in &header.tables {
        let found = present
            .iter()
            .find(|p| p.name == table.name)
            .with_context(|| {
                format!(
                    "table {} of the backup does not exist in the target database",
                    table.name
                )
            })?;
        if let Some(column) = table.columns.iter().find(|c| !found.columns.contains(c)) {
            bail!(
                "column {}.{column} of the backup does not exist in the target database",
                table.name
            );
        }
    }
    if !present.is_empty() {
        let names: Vec<String> = present
            .iter()
            .map(|t| format!("public.{}", schema::quote(&t.name)))
            .collect();
        let lock = format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", names.join(", "));
        sqlx::raw_sql(AssertSqlSafe(lock))
            .execute(&mut *tx)
            .await
            .context("locking the target's tables")?;
    }
    refuse_unless_empty(&mut tx).await?;

    let mut restored = BTreeMap::new();
    loop {
        let table = match next(events).await? {
            Event::Table(table) => table,
            Event::End => break,
            _ => bail!("the backup's sections are out of order"),
        };
        let mut copy = tx
            .copy_in_raw(&schema::copy_in(&table))
            .await
            .with_context(|| format!("starting to load table {}", table.name))?;
        let fed = async {
            loop {
                match next(events).await? {
                    Event::Rows(rows) => {
                        copy.send(rows)
                            .await
                            .with_context(|| format!("loading table {}", table.name))?;
                        progress(read.load(Ordering::Relaxed));
                    }
                    Event::TableEnd => return anyhow::Ok(()),
                    _ => bail!("the backup's sections are out of order"),
                }
            }
        }
        .await;
        if let Err(error) = fed {
            let _ = copy.abort("the restore failed").await;
            return Err(error);
        }
        let rows = copy
            .finish()
            .await
            .with_context(|| format!("loading table {}", table.name))?;
        restored.insert(table.name, rows);
    }
    schema::advance_sequences(&mut tx, &header.tables).await?;
    let requeued = if restored.contains_key("jobs") {
        return_unfinished_to_outbox(&mut tx).await?
    } else {
        0
    };
    tx.commit().await.context("committing the restore")?;
    progress(read.load(Ordering::Relaxed));
    Ok((restored, requeued))
}

/// Makes every unfinished job runnable on the restored system, in the restore's
/// transaction. The backup's rows say where each job was on the old broker — `queued` and
/// published, `retrying` in a delay tier, `running` under a worker's delivery — and none of
/// those messages exists here. So every such row goes back to the outbox (`published_at`
/// NULL): queued jobs are published by the sweeper, retries and interrupted attempts
/// (`running` becomes `retrying`, due now, its attempt counted) by the scheduler. A job may
/// thus run again after a restore: at-least-once, never lost.
async fn return_unfinished_to_outbox(conn: &mut PgConnection) -> anyhow::Result<u64> {
    let result = sqlx::query(
        "UPDATE jobs
         SET status = CASE WHEN status = 'running' THEN 'retrying' ELSE status END,
             run_at = CASE WHEN status = 'running' THEN now() ELSE run_at END,
             published_at = NULL,
             lease_until = NULL
         WHERE status IN ('queued', 'running', 'retrying')",
    )
    .execute(conn)
    .await
    .context("returning the restored unfinished jobs to the outbox")?;
    Ok(result.rows_affected())
}

async fn next(events: &mut mpsc::Receiver<anyhow::Result<Event>>) -> anyhow::Result<Event> {
    events
        .recv()
        .await
        .ok_or_else(|| anyhow!("the backup's reader stopped"))?
}

/// Runs on a blocking thread: gunzips and parses `source`, sending what it finds. Stops
/// quietly when the receiver is gone; sends the error otherwise.
fn parse(source: impl std::io::Read, events: mpsc::Sender<anyhow::Result<Event>>) {
    let send = |event: Event| {
        events
            .blocking_send(Ok(event))
            .map_err(|_| anyhow!("the restore stopped"))
    };
    let parsed = (|| -> anyhow::Result<()> {
        let text = BufReader::with_capacity(64 * 1024, GzDecoder::new(source));
        let mut reader = BackupReader::open(text)?;
        send(Event::Header(reader.header().clone()))?;
        while let Some(table) = reader.next_table()? {
            send(Event::Table(table))?;
            loop {
                let mut rows = Vec::with_capacity(BATCH + 4096);
                let ended = reader.read_rows(&mut rows, BATCH)?;
                if !rows.is_empty() {
                    send(Event::Rows(rows))?;
                }
                if ended {
                    send(Event::TableEnd)?;
                    break;
                }
            }
        }
        send(Event::End)
    })();
    if let Err(error) = parsed {
        let _ = events.blocking_send(Err(error));
    }
}
