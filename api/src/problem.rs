//! HTTP errors as RFC 9457 problem documents (`application/problem+json`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use engine_shared::group_commit::GroupCommitError;
use engine_shared::store::{NotStored, Refused, SearchRefused, StoreError};

/// One field-level defect in a request.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// Where: `kind`, `args.url`, `jobs[3].args.ms`, a query parameter's name.
    pub field: String,
    pub message: String,
}

/// Everything the API can answer with other than success. Each variant maps to one status
/// and problem type; the detail is specific and never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("job not found")]
    NotFound,
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body exceeds the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request is not valid")]
    Invalid(Vec<FieldError>),
    /// Validation let through a job PostgreSQL refused for its data (a missed check).
    #[error("the database refused to store {what}: {refused}")]
    Unstorable {
        what: &'static str,
        refused: Refused,
    },
    #[error("the state database is unreachable; retry shortly")]
    Unavailable,
    /// A search stopped at `api.read_timeout_ms`, or one that found every search
    /// connection taken.
    #[error("{0}")]
    Search(SearchRefused),
    #[error(
        "this API key submits more than {rate} jobs per second (burst {burst}); retry in {} s",
        retry_after_secs
    )]
    TooManyRequests {
        rate: u32,
        burst: u32,
        retry_after_secs: u64,
    },
    #[error(
        "this namespace has {max} unfinished jobs, its cap (max_pending); retry in {} s, once some have finished",
        retry_after_secs
    )]
    TooManyPending { max: u64, retry_after_secs: u64 },
    #[error(
        "object storage is not configured on this fleet (AWS_S3_BUCKET_NAME): there are no logs or artifacts to serve"
    )]
    StorageOff,
    #[error("object storage is unreachable; retry shortly")]
    Storage(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::MalformedJson(_) => (
                StatusCode::BAD_REQUEST,
                "/problems/malformed-json",
                "Malformed JSON",
            ),
            Self::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "/problems/bad-request",
                "Bad request",
            ),
            Self::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "/problems/unauthorized",
                "Unauthorized",
            ),
            Self::NotFound | Self::NoRoute(_) => {
                (StatusCode::NOT_FOUND, "/problems/not-found", "Not found")
            }
            Self::Conflict(_) => (StatusCode::CONFLICT, "/problems/conflict", "Conflict"),
            Self::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "/problems/payload-too-large",
                "Payload too large",
            ),
            Self::Invalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/invalid-request",
                "Invalid request",
            ),
            Self::Unstorable { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/unstorable",
                "Unstorable job",
            ),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/unavailable",
                "Service unavailable",
            ),
            Self::Search(SearchRefused::TimedOut { .. }) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/read-timeout",
                "Read timed out",
            ),
            Self::Search(SearchRefused::Busy) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/reads-busy",
                "Too many searches",
            ),
            Self::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "/problems/too-many-requests",
                "Too many requests",
            ),
            Self::TooManyPending { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "/problems/too-many-pending",
                "Too many unfinished jobs",
            ),
            Self::StorageOff => (
                StatusCode::NOT_IMPLEMENTED,
                "/problems/storage-off",
                "Storage not configured",
            ),
            Self::Storage(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/storage-unavailable",
                "Storage unavailable",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "/problems/internal",
                "Internal error",
            ),
        }
    }
}

/// A store error as an answer: unreachable database → 503; a search the store refused (too
/// slow, too many at once) → 503 saying which; a job refused for its data → 422 (the
/// request's fault, not the server's); anything else → 500.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => {
                engine_shared::metrics::metrics().dependency_error("postgres");
                Self::Unavailable
            }
            StoreError::Search { refused, .. } => Self::Search(refused),
            // Only `insert_jobs` refuses, and the API calls it only for a batch (all or
            // none); a single submission's refusal comes through the group commit as a
            // `NotStored`.
            StoreError::Refused(refused) => Self::Unstorable {
                what: "a job of this batch, so none was stored",
                refused,
            },
            StoreError::Other(error) => Self::Internal(error),
        }
    }
}

impl From<GroupCommitError> for ApiError {
    fn from(error: GroupCommitError) -> Self {
        if error.unavailable {
            Self::Unavailable
        } else {
            Self::Internal(error.into())
        }
    }
}

impl From<NotStored> for ApiError {
    fn from(error: NotStored) -> Self {
        match error {
            NotStored::Refused(refused) => Self::Unstorable {
                what: "this job",
                refused,
            },
            NotStored::Failed {
                unavailable: true, ..
            } => Self::Unavailable,
            failed @ NotStored::Failed { .. } => Self::Internal(failed.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, title) = self.parts();
        let detail = match &self {
            Self::Invalid(errors) => errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            Self::Internal(error) => {
                // Logged once here, where it is handled, with its whole cause chain.
                tracing::error!(error = format!("{error:#}"), "request failed");
                self.to_string()
            }
            Self::Storage(error) => {
                tracing::warn!(error = format!("{error:#}"), "storage request failed");
                self.to_string()
            }
            _ => self.to_string(),
        };
        let errors = match &self {
            Self::Invalid(errors) => Some(errors.as_slice()),
            _ => None,
        };
        let body = serde_json::to_vec(&Problem {
            kind,
            title,
            status: status.as_u16(),
            detail,
            errors,
        })
        .expect("a problem always serializes");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable | Self::Storage(_) | Self::Search(SearchRefused::Busy) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            }
            Self::TooManyRequests {
                retry_after_secs, ..
            }
            | Self::TooManyPending {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_the_database_refused_is_422_and_a_failed_split_is_a_server_fault() {
        let refused = NotStored::Refused(Refused {
            code: "22P05".into(),
            message: "unsupported Unicode escape sequence".into(),
        });
        let failed = |unavailable| NotStored::Failed {
            message: "connection reset".into(),
            unavailable,
        };
        let status = |error: NotStored| ApiError::from(error).into_response().status();
        assert_eq!(status(refused), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(failed(true)), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(failed(false)), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn each_store_error_has_its_answer() {
        let status = |error: StoreError| ApiError::from(error).into_response().status();
        let refused = Refused {
            code: "23514".into(),
            message: "check constraint".into(),
        };
        assert_eq!(
            status(StoreError::Unavailable(anyhow::anyhow!("pool timed out"))),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(StoreError::Search {
                doing: "listing jobs".into(),
                refused: SearchRefused::Busy
            }),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(StoreError::Refused(refused)),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(StoreError::Other(anyhow::anyhow!("syntax error"))),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
