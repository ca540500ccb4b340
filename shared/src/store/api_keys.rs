//! API keys: random bearer tokens, stored only as SHA-256 hashes, each bound to a namespace.

use anyhow::Context;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Commit, SqlContext, Store, StoreError, count_round_trips};
use crate::Namespace;

/// Every key starts with this, so a leaked key is recognisable by secret scanners.
const KEY_PREFIX: &str = "tle_";

/// A freshly created key. The plaintext exists only here: print it once, then drop it.
pub struct NewApiKey {
    pub id: Uuid,
    pub namespace: Namespace,
    pub key: SecretString,
}

/// A key as stored: its hash and the namespace it opens.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LiveKey {
    pub key_hash: Vec<u8>,
    pub namespace: String,
}

/// A caller's presented key, hashed; never logged.
pub struct ApiKey {
    hash: [u8; 32],
}

impl ApiKey {
    /// Hashes a presented bearer token. Keys carry 256 random bits, so a plain SHA-256 is
    /// enough (a slow password hash protects guessable secrets, not random ones).
    pub fn from_presented(token: &str) -> Self {
        Self {
            hash: Sha256::digest(token.as_bytes()).into(),
        }
    }

    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }
}

impl Store {
    /// Creates a key for `namespace` and returns its plaintext once.
    pub async fn create_api_key(
        &self,
        namespace: &Namespace,
        label: &str,
    ) -> anyhow::Result<NewApiKey> {
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        let key = SecretString::from(format!("{KEY_PREFIX}{}", hex::encode(random)));
        let id = Uuid::now_v7();
        let hash = ApiKey::from_presented(key.expose_secret()).hash();
        count_round_trips(1);
        self.one(Commit::Durable, async |statements| {
            sqlx::query(
                "INSERT INTO api_keys (id, namespace, label, key_hash) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(namespace.as_str())
            .bind(label)
            .bind(hash.as_slice())
            .execute(statements)
            .await
        })
        .await
        .context("storing the API key")?;
        Ok(NewApiKey {
            id,
            namespace: namespace.clone(),
            key,
        })
    }

    /// Every live (not revoked) key of `namespaces`: its hash and namespace. One read of a
    /// table that holds a row per key an operator created, however many tokens callers try.
    pub async fn live_keys(&self, namespaces: &[Namespace]) -> Result<Vec<LiveKey>, StoreError> {
        let names: Vec<&str> = namespaces.iter().map(Namespace::as_str).collect();
        count_round_trips(1);
        self.one(Commit::Durable, async |statements| {
            sqlx::query_as(
                "SELECT key_hash, namespace FROM api_keys
                 WHERE revoked_at IS NULL AND namespace = ANY($1)",
            )
            .bind(&names)
            .fetch_all(statements)
            .await
        })
        .await
        .sql_context("reading the live API keys")
    }

    /// Revokes a key by id; returns whether one was revoked.
    pub async fn revoke_api_key(&self, id: Uuid) -> anyhow::Result<bool> {
        count_round_trips(1);
        let done = self
            .one(Commit::Durable, async |statements| {
                sqlx::query(
                    "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(id)
                .execute(statements)
                .await
            })
            .await
            .context("revoking an API key")?;
        Ok(done.rows_affected() == 1)
    }
}
