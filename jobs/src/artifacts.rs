//! `Artifacts`: named outputs a handler stores for its job, under
//! `<ns>/artifacts/<job_id>/<name>`, listed by `GET /v1/jobs/{id}/artifacts`.

use engine_shared::JobId;
use engine_shared::namespace::NamespaceSpec;
use engine_shared::objects::{ObjectKey, ObjectStore};
use tokio::io::AsyncRead;

use crate::{JobError, ResultExt};

/// Where one job's artifacts go. Storage may be off (no bucket configured): storing then
/// fails the attempt with a fatal error saying so.
#[derive(Clone, Debug)]
pub struct Artifacts {
    job: JobId,
    target: Option<(ObjectStore, NamespaceSpec)>,
}

impl Artifacts {
    pub fn new(job: JobId, namespace: NamespaceSpec, objects: Option<ObjectStore>) -> Self {
        Self {
            job,
            target: objects.map(|objects| (objects, namespace)),
        }
    }

    /// Artifacts for a job run outside a worker (unit tests): every store fails.
    pub fn disabled(job: JobId) -> Self {
        Self { job, target: None }
    }

    /// Stores `body` as `name` in one request.
    pub async fn put(&self, name: &str, body: Vec<u8>, content_type: &str) -> Result<(), JobError> {
        let (objects, key) = self.locate(name)?;
        objects.put(&key, body, content_type).await.retryable()
    }

    /// Streams `reader` to `name` (multipart past 8 MiB, one part in memory at a time) and
    /// returns its size. A failed upload leaves no partial artifact behind.
    pub async fn upload<R: AsyncRead + Unpin>(
        &self,
        name: &str,
        reader: R,
        content_type: &str,
    ) -> Result<u64, JobError> {
        let (objects, key) = self.locate(name)?;
        objects
            .upload(&key, reader, content_type, |_| {})
            .await
            .retryable()
    }

    /// Removes `name` (an upload the handler decided not to keep).
    pub async fn delete(&self, name: &str) -> Result<(), JobError> {
        let (objects, key) = self.locate(name)?;
        objects.delete(&key).await.retryable()
    }

    fn locate(&self, name: &str) -> Result<(&ObjectStore, ObjectKey), JobError> {
        let Some((objects, namespace)) = &self.target else {
            return Err(JobError::fatal(format_args!(
                "cannot store artifact {name:?}: storage is not configured (AWS_S3_BUCKET_NAME)"
            )));
        };
        if !ObjectKey::is_plain_name(name) {
            return Err(JobError::fatal(format_args!(
                "artifact name {name:?} is not 1-200 characters of letters, digits, '.', '_' \
                 and '-' (not starting with '.')"
            )));
        }
        Ok((objects, ObjectKey::artifact(namespace, self.job, name)))
    }
}
