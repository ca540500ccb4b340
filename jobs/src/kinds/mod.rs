//! Built-in job kinds, one per file.

pub mod db_backup;
pub mod export_jobs_csv;
pub mod noop;
pub mod sleep;
pub mod webhook_deliver;
