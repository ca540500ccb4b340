//! The one HTTP client every outbound request of a job goes through, held to the fleet's
//! [`EgressPolicy`].
//!
//! The address that is checked is the address that is connected to: host names are
//! resolved by [`PolicyResolver`], which hands the connector only addresses it has checked
//! (so a name that resolves to a public address for a check and to 127.0.0.1 for the
//! connection — DNS rebinding — cannot pass), and address literals, which the connector
//! never resolves, are checked before the request is built. Redirects are never followed
//! and no proxy is used, so a request cannot be steered anywhere after its check.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use engine_shared::config::Settings;
use engine_shared::egress::{EgressPolicy, Refusal};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// How long resolving one of the fleet's service hosts may take.
const SERVICE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the service hosts are resolved again: managed endpoints move.
const SERVICE_REFRESH: Duration = Duration::from_secs(60);

/// An HTTP client that only reaches destinations the policy allows.
#[derive(Clone, Debug)]
pub struct EgressClient {
    http: reqwest::Client,
    policy: Arc<EgressPolicy>,
}

/// A destination the policy refused, as the error a request fails with.
#[derive(Debug)]
pub struct Refused {
    /// The host as the URL named it.
    pub host: String,
    /// Why, for the fleet's own log only: it names internal addresses, and tells the
    /// fleet's service hosts apart from other internal ones.
    pub reason: Refusal,
}

/// What the tenant sees: only the host they wrote, so a refusal maps nothing of the
/// fleet's network (which internal names exist, what they resolve to, which are services).
impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "destination not allowed: {} is not a public address",
            self.host
        )
    }
}

impl StdError for Refused {}

impl EgressClient {
    pub fn new(policy: EgressPolicy) -> anyhow::Result<Self> {
        let policy = Arc::new(policy);
        let http = reqwest::Client::builder()
            .user_agent("tl-engine webhook")
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver {
                policy: policy.clone(),
            }))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the egress HTTP client")?;
        Ok(Self { http, policy })
    }

    /// The fleet's client: `egress.allow` opened, and the fleet's own service hosts
    /// refused, with the addresses they resolve to (looked up now, all at once, and again
    /// every minute while the client lives).
    pub async fn for_fleet(settings: &Settings) -> anyhow::Result<Self> {
        let mut policy = EgressPolicy::new(settings.egress_allow.clone());
        for host in settings.service_hosts() {
            policy = policy.with_service(&host);
        }
        resolve_services(&policy).await;
        let client = Self::new(policy)?;
        let policy = Arc::downgrade(&client.policy);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SERVICE_REFRESH).await;
                let Some(policy) = policy.upgrade() else {
                    return;
                };
                resolve_services(&policy).await;
            }
        });
        Ok(client)
    }

    /// A POST to `url`, or why its destination is refused. Its host is checked here; the
    /// addresses a host name resolves to are checked as the connection is made.
    pub fn post(&self, url: &Url) -> Result<reqwest::RequestBuilder, Refused> {
        let checked = match url.host() {
            Some(Host::Domain(name)) => self.policy.check_host(name),
            Some(Host::Ipv4(ip)) => self.policy.check_address(None, IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.policy.check_address(None, IpAddr::V6(ip)),
            None => Err(Refusal::NoHost),
        };
        checked.map_err(|reason| Refused {
            host: url.host_str().unwrap_or_default().to_owned(),
            reason,
        })?;
        Ok(self.http.post(url.clone()))
    }

    /// The refusal behind a failed request, if the policy is why it failed.
    pub fn refusal(error: &reqwest::Error) -> Option<&Refused> {
        let mut source = error.source();
        while let Some(cause) = source {
            if let Some(refused) = cause.downcast_ref::<Refused>() {
                return Some(refused);
            }
            source = cause.source();
        }
        None
    }
}

impl Default for EgressClient {
    /// The default policy, with no service hosts known (processes that never send).
    fn default() -> Self {
        Self::new(EgressPolicy::default()).expect("a client with default settings builds")
    }
}

/// Resolves every service host name at once and records what each resolves to now. A
/// name that cannot be resolved keeps what it resolved to last (it is refused by name in
/// any case), and is tried again at the next refresh.
async fn resolve_services(policy: &EgressPolicy) {
    let lookups = policy.service_names().map(|name| async move {
        let found =
            tokio::time::timeout(SERVICE_LOOKUP_TIMEOUT, tokio::net::lookup_host((name, 0))).await;
        (name, found)
    });
    for (name, found) in futures_util::future::join_all(lookups).await {
        match found {
            Ok(Ok(addresses)) => policy.set_resolved(name, addresses.map(|a| a.ip())),
            Ok(Err(error)) => {
                tracing::warn!(host = %name, %error, "could not resolve a service host; refusing it by name and its last known addresses");
            }
            Err(_) => {
                tracing::warn!(host = %name, "resolving a service host timed out; refusing it by name and its last known addresses");
            }
        }
    }
}

/// Resolves like the system does, then refuses the whole name if any address it gave is
/// refused: a name that mixes public and internal addresses is not trusted with either.
struct PolicyResolver {
    policy: Arc<EgressPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let refused = |reason| Refused {
                host: host.clone(),
                reason,
            };
            policy.check_host(&host).map_err(refused)?;
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for address in &addresses {
                policy
                    .check_address(Some(&host), address.ip())
                    .map_err(refused)?;
            }
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}
