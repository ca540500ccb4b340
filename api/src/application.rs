//! Building the API from settings and running it until a stop signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use engine_jobs::Registry;
use engine_shared::broker::Broker;
use engine_shared::config::Settings;
use engine_shared::group_commit::GroupCommit;
use engine_shared::limits::Limiter;
use engine_shared::objects::ObjectStore;
use engine_shared::store::{self, Store};

use crate::archiver::Archiver;
use crate::auth::KeyCache;
use crate::relay::Relay;
use crate::rescuer::Rescuer;
use crate::routes;
use crate::scheduler::Scheduler;
use crate::state::AppState;

/// The most single submissions one INSERT carries.
const SUBMIT_BATCH: usize = 1_000;

/// A built, bound, not yet running API.
pub struct Application {
    listener: TcpListener,
    /// `api.admin_listen`'s, when set.
    admin: Option<TcpListener>,
    state: AppState,
}

impl Application {
    /// Connects lazily (the API starts even while PostgreSQL or RabbitMQ is down), applies
    /// migrations if configured, and binds the listener.
    pub async fn build(settings: Settings, registry: Registry) -> anyhow::Result<Self> {
        let store = Store::connect_lazy_with_read_timeout(
            &settings.database,
            settings.api.read_timeout_ms,
        )?;
        if settings.database.migrate_on_start {
            store.migrate().await?;
        }
        let broker = Broker::new(settings.amqp_url.clone(), "tl-engine-api");
        let relay = Arc::new(Relay::new(&settings, store.clone(), &broker)?);
        let limiter = Arc::new(
            Limiter::new(&settings.redis, settings.limits.clone())
                .context("building the limiter")?,
        );
        let submit_store = store.clone();
        let submissions = GroupCommit::spawn("submit", SUBMIT_BATCH, 2, move |jobs| {
            let store = submit_store.clone();
            async move { store.insert_jobs_each(&jobs).await }
        });
        let objects = settings.storage.as_ref().map(ObjectStore::new);
        let listener = TcpListener::bind(&settings.api.listen)
            .await
            .with_context(|| format!("binding api.listen = {}", settings.api.listen))?;
        let admin = match &settings.api.admin_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding api.admin_listen = {address}"))?,
            ),
            None => None,
        };
        let state = AppState {
            store,
            registry: Arc::new(registry),
            keys: Arc::new(KeyCache::new(
                Duration::from_secs(settings.api.key_cache_secs),
                settings
                    .namespaces
                    .iter()
                    .map(|spec| spec.name.clone())
                    .collect(),
            )),
            settings: Arc::new(settings),
            relay,
            submissions,
            limiter,
            objects,
            readiness: Arc::default(),
            pending: Arc::default(),
        };
        Ok(Self {
            listener,
            admin,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` and the detailed `/readyz` are served, if `api.admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|admin| admin.local_addr().ok())
    }

    /// Serves until `shutdown` fires, then finishes in-flight requests and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let scheduler = Scheduler::new(self.state.store.clone(), &self.state.settings.relay);
        let sweeper = tokio::spawn(
            self.state
                .relay
                .clone()
                .run_sweeper(scheduler, shutdown.clone()),
        );
        let rescuer = Rescuer {
            store: self.state.store.clone(),
            relay: self.state.relay.clone(),
            settings: self.state.settings.rescue.clone(),
            served: self.state.settings.namespace_names(),
            queues: self
                .state
                .settings
                .queues
                .iter()
                .map(|queue| queue.name.clone())
                .collect(),
        };
        let rescuer = tokio::spawn(rescuer.run_until_stopped(shutdown.clone()));
        let archiver = Archiver::from_state(&self.state)
            .map(|archiver| tokio::spawn(archiver.run_until_stopped(shutdown.clone())));
        tracing::info!(address = %self.local_addr(), "API listening");
        let admin = self.admin.map(|listener| {
            tracing::info!(address = ?listener.local_addr().ok(), "admin endpoints listening");
            let router = routes::admin_router(self.state.clone());
            tokio::spawn(
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                    .into_future(),
            )
        });
        let store = self.state.store.clone();
        axum::serve(self.listener, routes::router(self.state))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("serving HTTP")?;
        if let Some(admin) = admin {
            admin
                .await
                .context("the admin listener's task")?
                .context("serving the admin endpoints")?;
        }
        let _ = sweeper.await;
        let _ = rescuer.await;
        if let Some(archiver) = archiver {
            let _ = archiver.await;
        }
        store.close().await;
        tracing::info!(postgres_round_trips = store::round_trips(), "API stopped");
        Ok(())
    }
}
