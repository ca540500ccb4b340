//! RabbitMQ's management API: a vhost per scenario (created, then deleted with all its
//! queues), the broker's version for the header, and a vhost's queue depths (the
//! `--chaos` mode's check for jobs nothing will deliver).

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value, json};

/// The management API, authenticated as the AMQP URL's user.
#[derive(Clone)]
pub struct Management {
    http: reqwest::Client,
    base: String,
    user: String,
    password: String,
}

impl Management {
    /// `base` is the management URL; the credentials are taken from `amqp_url`.
    pub fn new(http: reqwest::Client, base: &str, amqp_url: &str) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(amqp_url).context("--amqp-url is not a URL")?;
        let user = if parsed.username().is_empty() {
            "guest"
        } else {
            parsed.username()
        };
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            user: user.to_owned(),
            password: parsed.password().unwrap_or("guest").to_owned(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/{path}", self.base)
    }

    async fn put(&self, path: &str, body: Value) -> anyhow::Result<()> {
        let response = self
            .http
            .put(self.url(path))
            .basic_auth(&self.user, Some(&self.password))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("RabbitMQ management API unreachable at {}", self.base))?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "PUT /api/{path} answered {status}");
        Ok(())
    }

    /// Creates `vhost` and gives the user full permissions on it.
    pub async fn create_vhost(&self, vhost: &str) -> anyhow::Result<()> {
        self.put(&format!("vhosts/{vhost}"), json!({}))
            .await
            .with_context(|| format!("creating vhost {vhost}"))?;
        self.put(
            &format!("permissions/{vhost}/{}", self.user),
            json!({ "configure": ".*", "write": ".*", "read": ".*" }),
        )
        .await
        .with_context(|| format!("granting permissions on vhost {vhost}"))
    }

    /// Deletes `vhost` and every queue in it.
    pub async fn delete_vhost(&self, vhost: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(self.url(&format!("vhosts/{vhost}")))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .with_context(|| format!("deleting vhost {vhost}"))?;
        let status = response.status();
        anyhow::ensure!(
            status.is_success() || status == reqwest::StatusCode::NOT_FOUND,
            "deleting vhost {vhost} answered {status}"
        );
        Ok(())
    }

    /// Every queue of `vhost` with its messages (ready and unacknowledged). The broker
    /// refreshes these figures every few seconds, so they may trail by that much.
    pub async fn queue_depths(&self, vhost: &str) -> anyhow::Result<Vec<QueueDepth>> {
        let path = format!("queues/{vhost}?columns=name,messages");
        let response = self
            .http
            .get(self.url(&path))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .with_context(|| format!("RabbitMQ management API unreachable at {}", self.base))?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "GET /api/{path} answered {status}");
        response
            .json()
            .await
            .with_context(|| format!("decoding the answer to GET /api/{path}"))
    }

    /// Whether the management API answers (a broker restart takes it away for a while).
    pub async fn answers(&self) -> bool {
        let response = self
            .http
            .get(self.url("overview"))
            .basic_auth(&self.user, Some(&self.password))
            .timeout(std::time::Duration::from_secs(3))
            .send()
            .await;
        matches!(response, Ok(response) if response.status().is_success())
    }

    /// "RabbitMQ 3.10.8, Erlang 25.2", or why it is unknown.
    pub async fn version(&self) -> String {
        let overview = async {
            let response = self
                .http
                .get(self.url("overview"))
                .basic_auth(&self.user, Some(&self.password))
                .send()
                .await?
                .error_for_status()?;
            response.json::<Value>().await
        };
        match overview.await {
            Ok(body) => format!(
                "RabbitMQ {}, Erlang {}",
                body["rabbitmq_version"].as_str().unwrap_or("?"),
                body["erlang_version"].as_str().unwrap_or("?")
            ),
            Err(error) => format!("RabbitMQ version unknown ({error})"),
        }
    }
}

/// One queue of a vhost, as the management API lists it.
#[derive(Debug, Deserialize)]
pub struct QueueDepth {
    pub name: String,
    /// Ready plus unacknowledged; absent until the broker has counted the queue once.
    #[serde(default)]
    pub messages: u64,
}
