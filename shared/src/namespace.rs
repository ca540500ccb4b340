//! `Namespace`: one tenant or application, and the resources it alone owns.

use std::fmt;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

use crate::fair_share::FairShare;
use crate::limits::keys;
use crate::objects::ObjectKey;
use crate::quota::Quota;

/// Why a string is not a valid namespace name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "a namespace is 1 to 48 characters of lowercase letters, digits and '-', starting with a letter; got {0:?}"
)]
pub struct InvalidNamespace(pub String);

/// A namespace name. It names the vhost, the Redis key prefix and the S3 prefix by default.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Namespace(String);

impl Namespace {
    pub fn parse(value: &str) -> Result<Self, InvalidNamespace> {
        let valid = (1..=48).contains(&value.len())
            && value.starts_with(|c: char| c.is_ascii_lowercase())
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidNamespace(value.chars().take(60).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Namespace {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a namespace owns, resolved from configuration with defaults filled in.
#[derive(Clone, Debug)]
pub struct NamespaceSpec {
    pub name: Namespace,
    /// The AMQP vhost holding this namespace's exchanges and queues.
    pub vhost: String,
    /// Every Redis key of this namespace starts with this (`<app prefix><namespace>:`).
    pub redis_prefix: String,
    /// Every S3 object key of this namespace starts with this (`<namespace>/`).
    pub s3_prefix: String,
    /// The bucket this namespace's objects live in; `None`: the fleet's `storage.bucket`.
    pub bucket: Option<String>,
    /// Signs `webhook.deliver` requests so receivers can check they came from us.
    pub webhook_signing_secret: Option<SecretString>,
    /// Its share of a worker process that serves other namespaces too.
    pub share: FairShare,
    /// What it may hold of the shared database and broker.
    pub quota: Quota,
}

impl NamespaceSpec {
    /// `name` with what a namespace has unless its settings say otherwise: the vhost of its
    /// name, its Redis and S3 prefixes (the one place they are derived), the fleet's
    /// bucket, no signing secret, the default share and quotas.
    pub fn new(name: Namespace, app_prefix: &str) -> Self {
        Self {
            vhost: name.as_str().to_owned(),
            redis_prefix: keys::namespace_prefix(app_prefix, &name),
            s3_prefix: ObjectKey::namespace_prefix(&name),
            bucket: None,
            webhook_signing_secret: None,
            share: FairShare::default(),
            quota: Quota::default(),
            name,
        }
    }

    /// `name` as the settings would configure it by default (app prefix `engine:`), for
    /// unit tests.
    #[cfg(test)]
    pub(crate) fn example(name: &str) -> Self {
        Self::new(
            Namespace::parse(name).expect("a valid example name"),
            "engine:",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_like() {
        assert!(Namespace::parse("acme").is_ok());
        assert!(Namespace::parse("acme-2").is_ok());
        for bad in ["", "Acme", "1acme", "ac me", "acme_x", "acme/x"] {
            assert!(Namespace::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
