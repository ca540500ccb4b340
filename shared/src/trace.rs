//! `TraceParent`: a W3C Trace Context `traceparent` (`00-<trace id>-<parent id>-<flags>`),
//! the correlation id that follows a job from the HTTP request that submitted it, through
//! the outbox and every AMQP message, into each attempt's log lines.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A valid `traceparent` header value (version 00).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

impl TraceParent {
    /// A new trace (no incoming one): random ids, sampled.
    pub fn new_root() -> Self {
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        rand::rng().fill_bytes(&mut trace_id);
        rand::rng().fill_bytes(&mut parent_id);
        Self {
            trace_id,
            parent_id,
            flags: 1,
        }
    }

    /// Parses a header value; `None` for anything but a well-formed version-00 value with
    /// non-zero ids (the spec says to ignore such a header and start a new trace).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" {
            return None;
        }
        let lower_hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !lower_hex(trace, 32) || !lower_hex(parent, 16) || !lower_hex(flags, 2) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(parent, &mut parent_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The incoming header if valid, a new root trace otherwise.
    pub fn from_header_or_new(value: Option<&str>) -> Self {
        value.and_then(Self::parse).unwrap_or_else(Self::new_root)
    }

    /// The same trace with a new parent id: what an outgoing call (a webhook) carries.
    pub fn child(&self) -> Self {
        let mut parent_id = [0u8; 8];
        rand::rng().fill_bytes(&mut parent_id);
        Self {
            parent_id,
            ..self.clone()
        }
    }

    /// The 32-hex-digit trace id, what log lines carry.
    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            self.flags
        )
    }
}

impl Serialize for TraceParent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Reads an optional `traceparent` field leniently: anything but a valid value (a malformed
/// string, a number, an object) is `None`, never an error — a correlation id is never a
/// reason to refuse a message — and never a fresh random trace, which would differ on every
/// read.
pub fn deserialize_lenient<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<TraceParent>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(value.as_str().and_then(TraceParent::parse))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_header_round_trips_and_a_child_keeps_the_trace() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(header).unwrap();
        assert_eq!(parsed.to_string(), header);
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = parsed.child();
        assert_eq!(child.trace_id(), parsed.trace_id());
        assert_ne!(child.to_string(), header);
    }

    #[test]
    fn malformed_headers_start_a_new_trace() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f35-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?}");
        }
        let fresh = TraceParent::from_header_or_new(Some("garbage"));
        assert!(TraceParent::parse(&fresh.to_string()).is_some());
    }
}
