//! S3-compatible object storage (Backblaze B2 in production; any S3 API locally).
//!
//! - [`settings`]: endpoint, region, credentials, bucket, addressing, from the seed's names.
//! - [`client`]: the one place an `aws_sdk_s3::Client` is built, with what B2 needs.
//! - [`keys`]: the one function family that builds every object key (and its bucket).
//! - [`bucket`]: the operations the fleet uses: put, streamed multipart upload, get, list,
//!   presigned download, single-key delete.

pub mod bucket;
pub mod client;
pub mod keys;
pub mod settings;

pub use bucket::{ObjectInfo, ObjectStore, Unreachable, is_unreachable};
pub use client::build_client;
pub use keys::{LogRun, ObjectKey};
pub use settings::StorageSettings;
