//! `ObjectStore`: the handful of S3 operations the fleet uses, on keys built by
//! [`ObjectKey`] only. Uploads of unknown size stream through a multipart upload one part at
//! a time, so memory stays bounded whatever the size; deletes go one key at a time (the
//! batch `DeleteObjects` call carries checksum headers B2 rejects).

use std::time::Duration;

use anyhow::Context;
use aws_sdk_s3::Client;
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
            .with_context(|| format!("uploading {}", key.as_str()))?;
        Ok(())
    }

    /// Streams `reader` to `key`: one request if it ends within [`PART_SIZE`], a multipart
    /// upload otherwise, holding one part in memory at a time. `progress` is called with the
    /// bytes sent so far after each part. Returns the object's size. A failed multipart
    /// upload is aborted, so no partial object or orphaned parts are left behind.
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
            .with_context(|| format!("starting the multipart upload of {}", key.as_str()))?;
        let upload_id = created
            .upload_id()
            .context("the server started a multipart upload without an id")?
            .to_owned();
        let result = self
            .upload_parts(key, &upload_id, first, &mut reader, &mut progress)
            .await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key.as_str())
                .upload_id(&upload_id)
                .send()
                .await;
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
                .with_context(|| format!("uploading part {number} of {}", key.as_str()))?;
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
            .with_context(|| format!("completing the multipart upload of {}", key.as_str()))?;
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
            Err(error) => {
                Err(anyhow::Error::new(error).context(format!("downloading {}", key.as_str())))
            }
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
            let page = page.with_context(|| format!("listing {}", folder.as_str()))?;
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

    /// Deletes one object (a missing one is not an error).
    pub async fn delete(&self, key: &ObjectKey) -> anyhow::Result<()> {
        self.client
            .delete_object()
            .bucket(self.bucket(key))
            .key(key.as_str())
            .send()
            .await
            .with_context(|| format!("deleting {}", key.as_str()))?;
        Ok(())
    }
}

/// Reads up to [`PART_SIZE`] bytes; fewer only at the end of the stream.
async fn read_part<R: AsyncRead + Unpin>(reader: &mut R) -> anyhow::Result<Vec<u8>> {
    let mut part = Vec::with_capacity(PART_SIZE);
    let mut limited = reader.take(PART_SIZE as u64);
    limited
        .read_to_end(&mut part)
        .await
        .context("reading the data to upload")?;
    Ok(part)
}
