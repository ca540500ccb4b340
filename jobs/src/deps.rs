//! `JobDeps`: the clients and settings the built-in kinds use.

use std::collections::BTreeMap;

use engine_shared::Namespace;
use engine_shared::config::BackupSettings;
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
