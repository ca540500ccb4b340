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
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::trace::deserialize_lenient"
    )]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_or_missing_traceparent_never_refuses_the_envelope() {
        let base = serde_json::json!({
            "id": "01a2058b-892a-75d9-b82e-f7ec6a26e09d",
            "kind": "noop",
            "queue": "default",
            "args": {},
        });
        assert!(
            Envelope::from_bytes(base.to_string().as_bytes())
                .unwrap()
                .traceparent
                .is_none()
        );
        for bad in [
            serde_json::json!("garbage"),
            serde_json::json!(42),
            serde_json::json!({}),
        ] {
            let mut with = base.clone();
            with["traceparent"] = bad;
            let envelope = Envelope::from_bytes(with.to_string().as_bytes()).unwrap();
            assert!(envelope.traceparent.is_none());
        }
        let mut good = base;
        good["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
        let envelope = Envelope::from_bytes(good.to_string().as_bytes()).unwrap();
        assert_eq!(
            envelope.traceparent.unwrap().to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
}
