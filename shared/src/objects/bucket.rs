//! `ObjectStore`: the handful of S3 operations the fleet uses, on keys built by
//! [`ObjectKey`] only. Uploads of unknown size stream through a multipart upload one part at
//! a time, so memory stays bounded whatever the size; deletes go one key at a time (the
//! batch `DeleteObjects` call carries checksum headers B2 rejects).

use std::time::Duration;

use anyhow::Context;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::client::build_client;
use super::keys::ObjectKey;
use super::settings::StorageSettings;

/// Bytes per multipart part: above S3's and B2's 5 MiB minimum, and the most an upload
/// holds in memory.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// How long a presigned download URL works.
pub const PRESIGNED_TTL: Duration = Duration::from_secs(15 * 60);

/// Marks an error as "storage could not be reached" (no connection, no answer in time, a
/// broken response), as opposed to an answer refusing the request (access denied, no such
/// bucket): the first is worth retrying later, the second is not.
#[derive(Debug, thiserror::Error)]
#[error("object storage unreachable")]
pub struct Unreachable;

/// True when `error` means storage could not be reached ([`Unreachable`]).
pub fn is_unreachable(error: &anyhow::Error) -> bool {
    // `downcast_ref` sees context types at every layer (a chain walk would not: a context
    // layer shows as its message only).
    error.downcast_ref::<Unreachable>().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_is_found_under_later_context() {
        let error = anyhow::anyhow!("connection refused")
            .context(Unreachable)
            .context("uploading a log");
        assert!(is_unreachable(&error));
        assert!(!is_unreachable(&anyhow::anyhow!("access denied")));
    }
}

/// Wraps an SDK error with `what`, marking transport failures [`Unreachable`].
fn classify<E, R>(error: SdkError<E, R>, what: String) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let unreachable = matches!(
        error,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
    );
    let error = anyhow::Error::new(error).context(what);
    if unreachable {
        error.context(Unreachable)
    } else {
        error
    }
}

/// One listed object.
#[derive(Clone, Debug)]
pub struct ObjectInfo {
    pub key: ObjectKey,
    pub size: u64,
    pub last_modified: Option<DateTime<Utc>>,
}

/// The fleet's storage: a client and the default bucket. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ObjectStore {
    client: Client,
    bucket: String,
}

impl ObjectStore {
    pub fn new(settings: &StorageSettings) -> Self {
        Self {
            client: build_client(settings),
            bucket: settings.bucket.clone(),
        }
    }

    fn bucket<'a>(&'a self, key: &'a ObjectKey) -> &'a str {
        key.bucket().unwrap_or(&self.bucket)
    }

    /// Stores `body` (small objects: logs, archive batches) in one request.
    pub async fn put(
        &self,
        key: &ObjectKey,
        body: Vec<u8>,
        content_type: &str,
    ) -> anyhow::Result<()> {
        self.client
            .put_object()
            .bucket(self.bucket(key))
            .key(key.as_str())
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify(e, format!("uploading {}", key.as_str())))?;
        Ok(())
    }

    /// Streams `reader` to `key`: one request if it ends within [`PART_SIZE`], a multipart
    /// upload otherwise, holding one part in memory at a time. `progress` is called with the
    /// bytes sent so far after each part. Returns the object's size.
    ///
    /// A read error from `reader` fails the upload: nothing is stored, so a producer that
    /// fails half-way must make its reader fail, not just end. A multipart upload that fails
    /// or is dropped unfinished (a timed-out attempt, a shutdown) is aborted, so no partial
    /// object or billed orphan parts are left behind.
    pub async fn upload<R: AsyncRead + Unpin>(
        &self,
        key: &ObjectKey,
        mut reader: R,
        content_type: &str,
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        let first = read_part(&mut reader).await?;
        if first.len() < PART_SIZE {
            let size = first.len() as u64;
            self.put(key, first, content_type).await?;
            progress(size);
            return Ok(size);
        }
        let bucket = self.bucket(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key.as_str())
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| {
                classify(
                    e,
                    format!("starting the multipart upload of {}", key.as_str()),
                )
            })?;
        let upload_id = created
            .upload_id()
            .context("the server started a multipart upload without an id")?
            .to_owned();
        let mut guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: bucket.to_owned(),
            key: key.as_str().to_owned(),
            upload_id: Some(upload_id.clone()),
        };
        let result = self
            .upload_parts(key, &upload_id, first, &mut reader, &mut progress)
            .await;
        if result.is_ok() {
            guard.upload_id = None;
        }
        result
    }

    async fn upload_parts<R: AsyncRead + Unpin>(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        first: Vec<u8>,
        reader: &mut R,
        progress: &mut impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        let bucket = self.bucket(key);
        let mut parts = Vec::new();
        let mut sent = 0u64;
        let mut part = first;
        loop {
            let number = i32::try_from(parts.len() + 1).context("too many parts")?;
            let length = part.len() as u64;
            let uploaded = self
                .client
                .upload_part()
                .bucket(bucket)
                .key(key.as_str())
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(part))
                .send()
                .await
                .map_err(|e| classify(e, format!("uploading part {number} of {}", key.as_str())))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(uploaded.e_tag().map(str::to_owned))
                    .build(),
            );
            sent += length;
            progress(sent);
            part = read_part(reader).await?;
            if part.is_empty() {
                break;
            }
        }
        self.client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key.as_str())
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                classify(
                    e,
                    format!("completing the multipart upload of {}", key.as_str()),
                )
            })?;
        Ok(sent)
    }

    /// The object's bytes as a stream, or `None` if there is no such object.
    pub async fn get(&self, key: &ObjectKey) -> anyhow::Result<Option<ByteStream>> {
        match self
            .client
            .get_object()
            .bucket(self.bucket(key))
            .key(key.as_str())
            .send()
            .await
        {
            Ok(object) => Ok(Some(object.body)),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|service| service.is_no_such_key()) =>
            {
                Ok(None)
            }
            Err(error) => Err(classify(error, format!("downloading {}", key.as_str()))),
        }
    }

    /// Every object under `folder`, in key order (all pages).
    pub async fn list(&self, folder: &ObjectKey) -> anyhow::Result<Vec<ObjectInfo>> {
        let mut objects = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(self.bucket(folder))
            .prefix(folder.as_str())
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(e, format!("listing {}", folder.as_str())))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|key| folder.child(key)) else {
                    continue;
                };
                objects.push(ObjectInfo {
                    key,
                    size: object
                        .size()
                        .and_then(|s| u64::try_from(s).ok())
                        .unwrap_or(0),
                    last_modified: object
                        .last_modified()
                        .and_then(|at| DateTime::from_timestamp(at.secs(), at.subsec_nanos())),
                });
            }
        }
        Ok(objects)
    }

    /// A URL anyone holding it can download `key` with, for [`PRESIGNED_TTL`].
    pub async fn presigned_get(&self, key: &ObjectKey) -> anyhow::Result<String> {
        let config = PresigningConfig::expires_in(PRESIGNED_TTL).context("presigning TTL")?;
        let request = self
            .client
            .get_object()
            .bucket(self.bucket(key))
            .key(key.as_str())
            .presigned(config)
            .await
            .with_context(|| format!("presigning {}", key.as_str()))?;
        Ok(request.uri().to_owned())
    }

    /// `HeadBucket` on the fleet's bucket: storage answers and the credentials work
    /// (readiness).
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(drop)
            .map_err(|e| classify(e, format!("checking bucket {}", self.bucket)))
    }

    /// Deletes one object (a missing one is not an error).
    pub async fn delete(&self, key: &ObjectKey) -> anyhow::Result<()> {
        self.client
            .delete_object()
            .bucket(self.bucket(key))
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| classify(e, format!("deleting {}", key.as_str())))?;
        Ok(())
    }
}

/// Aborts a multipart upload that was not completed, including when the uploading future
/// is dropped (the abort then runs in a task of its own).
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    /// `None` once the upload completed.
    upload_id: Option<String>,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let abort = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id);
        let key = self.key.clone();
        runtime.spawn(async move {
            if let Err(error) = abort.send().await {
                tracing::warn!(key, error = %error, "could not abort an unfinished multipart upload; a lifecycle rule will have to");
            }
        });
    }
}

/// Reads up to [`PART_SIZE`] bytes; fewer only at the end of the stream.
async fn read_part<R: AsyncRead + Unpin>(reader: &mut R) -> anyhow::Result<Vec<u8>> {
    // Grown as data comes, so a small object does not reserve a whole part.
    let mut part = Vec::new();
    let mut limited = reader.take(PART_SIZE as u64);
    limited
        .read_to_end(&mut part)
        .await
        .context("reading the data to upload")?;
    Ok(part)
}
