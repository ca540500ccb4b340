//! `JobDeps`: the clients and settings the built-in kinds use, built in one place from the
//! fleet's settings. A kind that needs a new client gets a field here and a line in
//! [`JobDeps::for_fleet`]; the worker and the test fleet both build theirs with it.

use std::collections::BTreeMap;

use engine_shared::Namespace;
use engine_shared::config::{BackupSettings, DatabaseSettings, Settings};
use engine_shared::objects::ObjectStore;
use engine_shared::store::Store;
use secrecy::SecretString;

use crate::egress::EgressClient;

/// What built-in handlers need from outside. `Default` has no clients: for processes that
/// validate jobs but never run them (the API) and for unit tests.
#[derive(Clone, Debug, Default)]
pub struct JobDeps {
    /// The egress client every outbound request of a job goes through (one pool).
    pub egress: EgressClient,
    /// Per-namespace webhook signing secrets.
    pub webhook_secrets: BTreeMap<Namespace, SecretString>,
    /// The state database, for kinds that read it (`export.jobs_csv`, `db.backup`); `None`
    /// in processes that have none (unit tests).
    pub store: Option<Store>,
    /// Object storage, for kinds that write to it beyond artifacts (`db.backup`).
    pub objects: Option<ObjectStore>,
    /// How many backups `db.backup` keeps, and which namespace may run it.
    pub backup: BackupSettings,
}

/// Connections of the kinds' own database pool.
const KIND_POOL_CONNECTIONS: u32 = 2;

impl JobDeps {
    /// Everything a worker's kinds use, from `settings`: the egress client (which resolves
    /// the fleet's service hosts now), each namespace's signing secret, the database and
    /// storage, the backup settings.
    pub async fn for_fleet(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            egress: EgressClient::for_fleet(settings).await?,
            webhook_secrets: settings
                .namespaces
                .iter()
                .filter_map(|spec| Some((spec.name.clone(), spec.webhook_signing_secret.clone()?)))
                .collect(),
            // Its own small lazy pool: it connects only when a kind that reads the database
            // runs (an export, a backup), and never competes with the state transitions' pool.
            store: Some(Store::connect_lazy(&DatabaseSettings {
                max_connections: KIND_POOL_CONNECTIONS,
                ..settings.database.clone()
            })?),
            objects: settings.storage.as_ref().map(ObjectStore::new),
            backup: settings.backup.clone(),
        })
    }
}
