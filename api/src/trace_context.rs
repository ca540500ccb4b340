//! The request's trace: its `traceparent` header when well-formed, a new trace otherwise.
//! Every job a request submits carries it; the answer echoes it so a client that sent none
//! learns the trace id to search logs by.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use engine_shared::trace::TraceParent;

/// The header, in requests and answers.
pub const TRACEPARENT: &str = "traceparent";

/// The trace a request belongs to.
pub struct Trace(pub TraceParent);

impl<S: Send + Sync> FromRequestParts<S> for Trace {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        let header = parts
            .headers
            .get(TRACEPARENT)
            .and_then(|value| value.to_str().ok());
        Ok(Self(TraceParent::from_header_or_new(header)))
    }
}
