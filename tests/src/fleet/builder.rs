//! How a test sets its fleet up: how many namespaces, whether an in-process worker runs,
//! and the typed settings it changes — for the whole fleet, or for the API or the workers
//! alone (e.g. a proxy's URL in front of one of them).

use crate::services;
use crate::settings::TestSettings;

use super::{Launch, TestFleet};

/// A change a test makes to the settings before the fleet starts; it may borrow what the
/// test set up first (a proxy, a pooler).
type SettingsEdit<'a> = Box<dyn FnOnce(&mut TestSettings) + 'a>;

/// A fleet to start: [`TestFleet::builder`], its methods, then [`FleetBuilder::start`].
///
/// ```no_run
/// # async fn example(proxied_database: String) {
/// use engine_tests::{LimitSection, TestFleet};
///
/// let fleet = TestFleet::builder()
///     .without_worker()
///     .settings(|s| s.limits.push(LimitSection::concurrency("sleep", 1)))
///     .worker_settings(|s| s.database.url = proxied_database)
///     .start()
///     .await;
/// # }
/// ```
pub struct FleetBuilder<'a> {
    namespaces: usize,
    first_namespace: Option<String>,
    worker: bool,
    /// Applied first, to the settings of every component.
    settings: Vec<SettingsEdit<'a>>,
    /// Then to the in-process API's alone.
    api_settings: Vec<SettingsEdit<'a>>,
    /// Then to the workers' alone: the in-process one, API replicas, and the settings file
    /// worker processes read. The test's own reads stay direct whatever they say.
    worker_settings: Vec<SettingsEdit<'a>>,
}

impl Default for FleetBuilder<'_> {
    fn default() -> Self {
        Self {
            namespaces: 1,
            first_namespace: None,
            worker: true,
            settings: Vec::new(),
            api_settings: Vec::new(),
            worker_settings: Vec::new(),
        }
    }
}

impl<'a> FleetBuilder<'a> {
    /// How many namespaces (tenants) the one API and worker serve; each gets a vhost and a
    /// key of its own ([`TestFleet::tenants`]).
    pub fn namespaces(self, count: usize) -> Self {
        Self {
            namespaces: count.max(1),
            ..self
        }
    }

    /// The first namespace's name (and vhost) instead of a fresh one: for a vhost prepared
    /// elsewhere, e.g. on a [`crate::PrivateBroker`].
    pub fn namespace_name(self, name: &str) -> Self {
        Self {
            first_namespace: Some(name.to_owned()),
            ..self
        }
    }

    /// No in-process worker: the test starts its own (or none).
    pub fn without_worker(self) -> Self {
        Self {
            worker: false,
            ..self
        }
    }

    /// Changes the settings of every component. The namespaces' tables are already there,
    /// one per tenant in order.
    pub fn settings(mut self, edit: impl FnOnce(&mut TestSettings) + 'a) -> Self {
        self.settings.push(Box::new(edit));
        self
    }

    /// Changes the in-process API's settings alone, after [`FleetBuilder::settings`].
    pub fn api_settings(mut self, edit: impl FnOnce(&mut TestSettings) + 'a) -> Self {
        self.api_settings.push(Box::new(edit));
        self
    }

    /// Changes the workers' settings alone, after [`FleetBuilder::settings`].
    pub fn worker_settings(mut self, edit: impl FnOnce(&mut TestSettings) + 'a) -> Self {
        self.worker_settings.push(Box::new(edit));
        self
    }

    /// Creates the namespaces and starts the fleet.
    pub async fn start(self) -> TestFleet {
        let names: Vec<String> = (0..self.namespaces)
            .map(|index| match (&self.first_namespace, index) {
                (Some(name), 0) => name.clone(),
                _ => services::unique_namespace(),
            })
            .collect();
        let mut shared = TestSettings::for_namespaces(&names);
        for edit in self.settings {
            edit(&mut shared);
        }
        let mut api = shared.clone();
        for edit in self.api_settings {
            edit(&mut api);
        }
        let mut worker = shared;
        for edit in self.worker_settings {
            edit(&mut worker);
        }
        TestFleet::launch(Launch {
            names,
            worker_text: worker.to_toml(),
            api_text: api.to_toml(),
            worker: self.worker,
        })
        .await
    }
}
