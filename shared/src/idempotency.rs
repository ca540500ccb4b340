//! `IdempotencyKey`: a submitter's name for "this job, once", unique within a namespace.

use serde::{Deserialize, Deserializer, Serialize};

/// Why a string is not a valid idempotency key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an idempotency key is 1 to 200 visible ASCII characters")]
pub struct InvalidIdempotencyKey;

/// A submitter-chosen key: a second submission with the same key returns the first job.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(value: &str) -> Result<Self, InvalidIdempotencyKey> {
        let valid = (1..=200).contains(&value.len()) && value.chars().all(|c| c.is_ascii_graphic());
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidIdempotencyKey)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}
