//! Every Redis key the fleet writes is built here: `<app prefix><namespace>:<class>:<name>`,
//! so nothing of one namespace (or of another application sharing the Redis) is ever read
//! or written by another.

use sha2::{Digest, Sha256};

use crate::namespace::{Namespace, NamespaceSpec};

/// What a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyClass {
    /// A rate limit's GCRA state (one string).
    Rate,
    /// A concurrency limit's leased slots (one sorted set).
    Slots,
    /// An API key's submission rate (one string).
    Submissions,
    /// The namespace's running jobs across the fleet (`fleet_max_running`: leased slots,
    /// one sorted set).
    Running,
}

impl KeyClass {
    fn segment(self) -> &'static str {
        match self {
            Self::Rate => "rl",
            Self::Slots => "cc",
            Self::Submissions => "api",
            Self::Running => "run",
        }
    }
}

/// What every Redis key of `namespace` starts with, `<app prefix><namespace>:`: kept as
/// [`NamespaceSpec::redis_prefix`], which [`redis_key`] builds on.
pub fn namespace_prefix(app_prefix: &str, namespace: &Namespace) -> String {
    format!("{app_prefix}{namespace}:")
}

/// The key of `class` for `name` (a kind, or an API key's id) in `namespace`, narrowed by
/// `key` (e.g. a webhook's host) when the limit is per key. A `key` that is long or holds
/// characters outside `[A-Za-z0-9._-]` is replaced by a hash of it, so user data cannot
/// shape the key space.
pub fn redis_key(
    namespace: &NamespaceSpec,
    class: KeyClass,
    name: &str,
    key: Option<&str>,
) -> String {
    let mut out = format!("{}{}:{name}", namespace.redis_prefix, class.segment());
    if let Some(key) = key {
        out.push(':');
        let plain = key.len() <= 100
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if plain {
            out.push_str(key);
        } else {
            out.push('#');
            out.push_str(&hex::encode(&Sha256::digest(key.as_bytes())[..16]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> NamespaceSpec {
        NamespaceSpec::example("acme")
    }

    #[test]
    fn keys_carry_the_app_prefix_and_namespace() {
        assert_eq!(
            redis_key(&acme(), KeyClass::Rate, "webhook.deliver", None),
            "engine:acme:rl:webhook.deliver"
        );
        assert_eq!(
            redis_key(
                &acme(),
                KeyClass::Slots,
                "webhook.deliver",
                Some("api.example.com")
            ),
            "engine:acme:cc:webhook.deliver:api.example.com"
        );
    }

    #[test]
    fn odd_keys_are_hashed_not_spliced() {
        let key = redis_key(&acme(), KeyClass::Rate, "noop", Some("x:*\r\nFLUSHALL"));
        assert!(key.starts_with("engine:acme:rl:noop:#"), "{key}");
        assert_eq!(key.len(), "engine:acme:rl:noop:#".len() + 32);
    }
}
