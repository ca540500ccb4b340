//! `webhook.deliver`: POSTs a JSON body to a URL, signed with the namespace's secret.
//!
//! Signature header, as receivers verify it:
//! `X-TL-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//! The timestamp is signed too, so a captured request cannot be replayed later unnoticed.
//! `X-TL-Job-Id` and `X-TL-Attempt` let receivers drop duplicates of an at-least-once delivery.
//!
//! Every request goes through the fleet's [`EgressClient`]: a destination its policy refuses
//! fails the job at once ("destination not allowed: …"), never retried, and a redirect is
//! not followed. URLs with credentials and headers that would reframe the request or pass
//! as the fleet's own are refused at submit.

use std::collections::BTreeMap;
use std::time::Duration;

use engine_shared::Namespace;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::egress::{EgressClient, Refused};
use crate::{Job, JobContext, JobError, ResultExt};

/// Headers a tenant may not set: they would reframe the request (`Content-Length`,
/// `Transfer-Encoding`, hop-by-hop ones), redirect it (`Host`, `Proxy-*`), contradict the
/// signed body (`Content-Type`), or forge the fleet's own (`X-TL-*`, which receivers trust
/// for signatures and de-duplication). Names are compared lower-cased with `_` read as
/// `-`, as CGI-style servers (Rack, WSGI, PHP) read them.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
];
const FORBIDDEN_PREFIXES: &[&str] = &["proxy-", "x-tl-"];

pub struct WebhookDeliver {
    http: EgressClient,
    /// Signing secret per namespace; a namespace without one cannot send webhooks.
    secrets: BTreeMap<Namespace, SecretString>,
}

impl WebhookDeliver {
    pub fn new(http: EgressClient, secrets: BTreeMap<Namespace, SecretString>) -> Self {
        Self { http, secrets }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDeliverArgs {
    /// Where to POST; `http` or `https`.
    #[serde(deserialize_with = "http_url")]
    pub url: url::Url,
    /// The JSON body sent as is.
    pub body: serde_json::Value,
    /// Extra request headers: valid names and values, none of [`FORBIDDEN_HEADERS`].
    #[serde(default, deserialize_with = "request_headers")]
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout, 1 ms to 60 s (default 10 s).
    #[serde(default = "default_timeout_ms", deserialize_with = "timeout_ms")]
    pub timeout_ms: u64,
}

/// The result: the receiver's answer and how long it took.
#[derive(Debug, Serialize)]
pub struct WebhookDeliverOutput {
    /// The HTTP status the receiver answered (always a 2xx: other answers fail the attempt).
    pub status: u16,
    pub duration_ms: u64,
}

fn http_url<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<url::Url, D::Error> {
    let url = url::Url::deserialize(deserializer)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(serde::de::Error::custom("the scheme must be http or https"));
    }
    // reqwest would send them as Basic credentials: a way to log in to internal services.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(serde::de::Error::custom(
            "must not carry a user name or password; send credentials in a header",
        ));
    }
    Ok(url)
}

fn request_headers<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let headers = BTreeMap::<String, String>::deserialize(deserializer)?;
    let mut seen = BTreeMap::new();
    for (name, value) in &headers {
        check_header(name, value).map_err(serde::de::Error::custom)?;
        // Two spellings of one header would both be sent, and receivers disagree on
        // which one counts.
        if let Some(first) = seen.insert(cgi_name(name), name) {
            return Err(serde::de::Error::custom(format!(
                "the headers {first:?} and {name:?} name the same header"
            )));
        }
    }
    Ok(headers)
}

/// A header name as a CGI-style server sees it: lower case, `_` and `-` alike.
fn cgi_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Why a tenant's header cannot be sent, if it cannot.
fn check_header(name: &str, value: &str) -> Result<(), String> {
    reqwest::header::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    let seen_as = cgi_name(name);
    if FORBIDDEN_HEADERS.contains(&seen_as.as_str())
        || FORBIDDEN_PREFIXES.iter().any(|p| seen_as.starts_with(p))
    {
        return Err(format!("the header {name:?} may not be set"));
    }
    reqwest::header::HeaderValue::from_str(value)
        .map_err(|_| format!("the value of {name:?} is not a valid header value"))?;
    Ok(())
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn timeout_ms<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let ms = u64::deserialize(deserializer)?;
    if !(1..=60_000).contains(&ms) {
        return Err(serde::de::Error::custom("must be between 1 and 60000"));
    }
    Ok(ms)
}

/// `t=<t>,v1=<hex>` for `body` signed at unix time `t`.
pub fn signature(secret: &SecretString, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

impl Job for WebhookDeliver {
    const KIND: &'static str = "webhook.deliver";
    type Args = WebhookDeliverArgs;
    type Output = WebhookDeliverOutput;

    fn max_attempts(&self) -> u32 {
        8
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(70)
    }

    /// Per destination host, so one slow receiver's limit never holds back the others
    /// (`per_key = true` in a `[[limits]]` rule for `webhook.deliver`).
    fn limit_key(&self, args: &WebhookDeliverArgs) -> Option<String> {
        args.url.host_str().map(str::to_owned)
    }

    async fn run(
        &self,
        context: JobContext,
        args: WebhookDeliverArgs,
    ) -> Result<WebhookDeliverOutput, JobError> {
        let secret = self.secrets.get(&context.namespace).ok_or_else(|| {
            JobError::fatal(format_args!(
                "namespace {} has no webhook_signing_secret configured",
                context.namespace
            ))
        })?;
        let body = serde_json::to_vec(&args.body).fatal()?;
        let signed = signature(secret, chrono::Utc::now().timestamp(), &body);
        let request = self
            .http
            .post(&args.url)
            .map_err(|refused| refusal(&context, &refused))?
            .timeout(Duration::from_millis(args.timeout_ms))
            .headers(headers(&context, &args.headers, signed)?);
        // Webhook URLs often carry their token in the path (Slack, Discord) or the query: the
        // log names the scheme and host only.
        context.log.info(format_args!(
            "POST {}://{}{}",
            args.url.scheme(),
            args.url.host_str().unwrap_or_default(),
            args.url
                .port()
                .map(|port| format!(":{port}"))
                .unwrap_or_default()
        ));
        let started = std::time::Instant::now();
        let response = tokio::select! {
            response = request.body(body).send() => response,
            _ = context.cancellation.cancelled() => return Err(JobError::Cancelled),
        };
        let response = response.map_err(|error| match EgressClient::refusal(&error) {
            Some(refused) => refusal(&context, refused),
            // reqwest's errors include the URL, which may carry a token in its query.
            None => JobError::retryable(format_args!("request failed: {}", error.without_url())),
        })?;
        let status = response.status();
        context.log.info(format_args!(
            "the receiver answered {status} in {} ms",
            started.elapsed().as_millis()
        ));
        if status.is_redirection() {
            return Err(JobError::retryable(format_args!(
                "the receiver answered {status}; redirects are not followed"
            )));
        }
        if !status.is_success() {
            return Err(JobError::retryable(format_args!(
                "the receiver answered {status}"
            )));
        }
        Ok(WebhookDeliverOutput {
            status: status.as_u16(),
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}

/// The request's headers: the tenant's, then the fleet's over them (`insert` replaces),
/// so nothing a tenant sends can stand beside or in place of the signature.
fn headers(
    context: &JobContext,
    extra: &BTreeMap<String, String>,
    signed: String,
) -> Result<HeaderMap, JobError> {
    let mut headers = HeaderMap::new();
    for (name, value) in extra {
        // Checked at submit; a row edited by hand could still hold a bad one.
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| JobError::fatal(format_args!("{name:?} is not a valid header name")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| JobError::fatal(format_args!("the value of {name} is not valid")))?;
        headers.append(name, value);
    }
    let fleet = [
        ("content-type", "application/json".to_owned()),
        ("x-tl-signature", signed),
        ("x-tl-job-id", context.id.to_string()),
        ("x-tl-attempt", context.attempt.to_string()),
    ];
    // The receiver joins the submitting request's trace.
    let trace = context
        .traceparent
        .as_ref()
        .map(|trace| ("traceparent", trace.child().to_string()));
    for (name, value) in fleet.into_iter().chain(trace) {
        let value = HeaderValue::from_str(&value)
            .map_err(|_| JobError::fatal(format_args!("the fleet's {name} header is not valid")))?;
        headers.insert(HeaderName::from_static(name), value);
    }
    Ok(headers)
}

/// A refused destination: fatal, with the tenant's host only; the reason (an internal
/// address, a range, whether it is one of the fleet's services) goes to the fleet's log.
fn refusal(context: &JobContext, refused: &Refused) -> JobError {
    tracing::warn!(
        namespace = %context.namespace,
        job = %context.id,
        host = %refused.host,
        reason = %refused.reason,
        "egress refused a webhook's destination"
    );
    JobError::fatal(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // Computed independently: python3 hmac.new(b"whsec_test", b'1700000000.{"a":1}', sha256)
        let secret = SecretString::from("whsec_test".to_owned());
        let signed = signature(&secret, 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            signed,
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn credentials_in_the_url_are_refused() {
        let bad = serde_json::json!({ "url": "http://guest:guest@example.com/", "body": {} });
        let error = serde_json::from_value::<WebhookDeliverArgs>(bad).unwrap_err();
        assert!(
            error.to_string().contains("user name or password"),
            "{error}"
        );
    }

    #[test]
    fn headers_that_reframe_or_forge_the_request_are_refused() {
        for name in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "Connection",
            "Upgrade",
            "TE",
            "Proxy-Authorization",
            "X-TL-Signature",
            "Content-Type",
            "X_TL_Signature",
            "content_length",
        ] {
            let error = check_header(name, "x").unwrap_err();
            assert!(error.contains("may not be set"), "{name}: {error}");
        }
        assert!(
            check_header("bad name", "x")
                .unwrap_err()
                .contains("valid header name")
        );
        assert!(
            check_header("X-Ok", "line\nbreak")
                .unwrap_err()
                .contains("valid header value")
        );
        assert_eq!(check_header("Authorization", "Bearer t"), Ok(()));
    }

    #[test]
    fn two_spellings_of_one_header_are_refused() {
        let args = serde_json::json!({
            "url": "http://127.0.0.2:9/", "body": {}, "headers": { "X-A": "1", "x_a": "2" } });
        let error = serde_json::from_value::<WebhookDeliverArgs>(args).unwrap_err();
        assert!(
            error.to_string().contains("name the same header"),
            "{error}"
        );
    }

    #[test]
    fn the_output_is_the_json_the_fleet_stored_before_it_was_typed() {
        let output = WebhookDeliverOutput {
            status: 204,
            duration_ms: 12,
        };
        assert_eq!(
            serde_json::to_value(output).unwrap(),
            serde_json::json!({ "status": 204, "duration_ms": 12 })
        );
    }

    #[test]
    fn only_http_urls_are_accepted() {
        let bad = serde_json::json!({ "url": "file:///etc/passwd", "body": {} });
        let error = serde_json::from_value::<WebhookDeliverArgs>(bad).unwrap_err();
        assert!(error.to_string().contains("http or https"), "{error}");
    }
}
