//! `QueueName`: a lane inside a namespace (`critical`, `default`, `bulk`) and how workers weigh lanes.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a string is not a valid queue name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a queue name is 1 to 32 characters of lowercase letters, digits, '_' and '-'; got {0:?}")]
pub struct InvalidQueueName(pub String);

/// The name of a queue inside a namespace; the AMQP queue is `jobs.<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct QueueName(String);

impl QueueName {
    pub fn parse(value: &str) -> Result<Self, InvalidQueueName> {
        let valid = (1..=32).contains(&value.len())
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidQueueName(value.chars().take(40).collect()))
        }
    }

    /// The lane jobs use when neither the submitter nor the kind names one.
    pub fn default_queue() -> Self {
        Self("default".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for QueueName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A queue and how many dispatch turns it gets relative to the others when all are busy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedQueue {
    pub name: QueueName,
    /// Turns per round; every queue gets at least one, so none starves.
    pub weight: u32,
}

/// The lanes every namespace has unless configured otherwise: critical > default > bulk.
pub fn standard_queues() -> Vec<WeightedQueue> {
    [("critical", 6), ("default", 3), ("bulk", 1)]
        .into_iter()
        .map(|(name, weight)| WeightedQueue {
            name: QueueName(name.to_owned()),
            weight,
        })
        .collect()
}
