//! The message body a job travels in: everything a worker needs to run it without a read.

use serde::{Deserialize, Serialize};

use crate::trace::TraceParent;
use crate::{JobId, Kind, QueueName};

/// A job as published to RabbitMQ. PostgreSQL stays the source of truth for its state;
/// the envelope only carries what does not change after submission.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub id: JobId,
    pub kind: Kind,
    pub queue: QueueName,
    pub args: serde_json::Value,
    /// 0..=9; honoured by brokers whose quorum queues support priorities (RabbitMQ ≥ 3.12).
    #[serde(default)]
    pub priority: u8,
    /// The submitting request's trace (W3C `traceparent`); also sent as the message's
    /// `traceparent` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<TraceParent>,
}

impl Envelope {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
