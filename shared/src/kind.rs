//! `Kind`: the stable wire name of a job handler, e.g. `webhook.deliver`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a string is not a valid kind.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "a kind is 1 to 64 characters of lowercase letters, digits, '_' and '.', starting with a letter; got {0:?}"
)]
pub struct InvalidKind(pub String);

/// A job kind name. It is a wire format: renaming a Rust type never changes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Kind(String);

impl Kind {
    pub fn parse(value: &str) -> Result<Self, InvalidKind> {
        let valid = (1..=64).contains(&value.len())
            && value.starts_with(|c: char| c.is_ascii_lowercase())
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidKind(value.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dotted_names_and_refuses_others() {
        assert!(Kind::parse("webhook.deliver").is_ok());
        assert!(Kind::parse("db.backup_v2").is_ok());
        for bad in ["", "Webhook", "9lives", "a b", "x/y", &"a".repeat(65)] {
            assert!(Kind::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
