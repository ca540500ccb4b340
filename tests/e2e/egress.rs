//! The egress policy, black-box through a tenant's key: a webhook can reach neither the
//! fleet's own services nor any internal address unless `egress.allow` opens it, follows
//! no redirect, and cannot carry credentials or headers that reframe the request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{HeaderMap, HeaderValue, StatusCode as AxumStatus, header};
use axum::routing::post;
use engine_shared::JobStatus;
use engine_tests::{RECEIVER_HOST, TestFleet};
use reqwest::StatusCode;
use serde_json::json;

const SECRET: &str = "whsec_egress";

/// A receiver on [`RECEIVER_HOST`] counting the requests that reach it, answering `status`
/// (with `Location: location` if given).
async fn receiver(status: u16, location: Option<String>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move || {
            let (count, location) = (count.clone(), location.clone());
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                let mut headers = HeaderMap::new();
                if let Some(location) = location {
                    headers.insert(header::LOCATION, HeaderValue::from_str(&location).unwrap());
                }
                (AxumStatus::from_u16(status).unwrap(), headers)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind((RECEIVER_HOST, 0))
        .await
        .unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

fn webhook(url: &str) -> serde_json::Value {
    json!({ "kind": "webhook.deliver", "args": { "url": url, "body": { "a": 1 } } })
}

/// Submits a webhook to `url`; it must end `dead` after one attempt, refused, not retried,
/// saying no more than that its host is not public: which internal range it hit, or that
/// it is one of the fleet's services, is for the fleet's log only.
async fn assert_refused(fleet: &TestFleet, url: &str) {
    let answer = fleet.client.submit_json(&webhook(url)).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{url}: {answer:?}");
    let record = fleet.wait_for(answer.job_id(), JobStatus::Dead).await;
    let error = record.last_error.unwrap_or_default();
    assert_eq!(
        record.attempts, 1,
        "{url}: a refusal is never retried ({error})"
    );
    let host = reqwest::Url::parse(url)
        .unwrap()
        .host_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        error,
        format!("destination not allowed: {host} is not a public address"),
        "{url}"
    );
}

#[tokio::test]
async fn by_default_a_webhook_reaches_no_internal_address() {
    let fleet = TestFleet::builder()
        .settings(|s| s.sign_webhooks_with(SECRET))
        .settings(|s| s.egress.allow = Vec::new())
        .start()
        .await;
    let (url, hits) = receiver(204, None).await;
    let port = url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let cases = [
        // The broker's management API, on the services' address.
        "http://127.0.0.1:15672/api/vhosts".to_owned(),
        "http://[::1]:6379/".to_owned(),
        "http://0.0.0.0:8080/".to_owned(),
        // A listening receiver: refused before any connection (it counts no request).
        url.clone(),
        format!("http://[::ffff:{RECEIVER_HOST}]:{port}/hook"),
        // A name is judged by the addresses it resolves to, as it is connected (here
        // 127.0.0.1, the services', or ::1, a loopback address).
        format!("http://localhost:{port}/hook"),
        // Decimal and hex forms of 127.0.0.2 are the same address to the URL parser.
        format!("http://2130706434:{port}/hook"),
        format!("http://0x7f.0.0.2:{port}/hook"),
    ];
    for destination in &cases {
        assert_refused(&fleet, destination).await;
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a refused request reached the receiver"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn egress_allow_opens_a_receiver_but_never_the_fleets_own_services() {
    let fleet = TestFleet::builder()
        .settings(|s| {
            s.sign_webhooks_with(SECRET);
            s.egress.allow = vec!["127.0.0.0/8".into()];
        })
        .start()
        .await;
    let (url, hits) = receiver(204, None).await;
    let id = fleet.client.submit_json(&webhook(&url)).await.job_id();
    fleet.wait_for(id, JobStatus::Succeeded).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // 127.0.0.1 is where this fleet's database, broker, Redis and storage live: allowing
    // its range does not open them (nor the broker's management API beside them).
    for destination in [
        "http://127.0.0.1:15672/api/vhosts",
        "http://127.0.0.1:5432/",
        "http://[::ffff:127.0.0.1]:6379/",
    ] {
        assert_refused(&fleet, destination).await;
    }
    fleet.stop().await;
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let fleet = TestFleet::builder()
        .settings(|s| s.sign_webhooks_with(SECRET))
        .start()
        .await;
    let (target, target_hits) = receiver(204, None).await;
    let (url, hits) = receiver(307, Some(target)).await;
    let job = json!({
        "kind": "webhook.deliver", "args": { "url": url, "body": {} }, "max_attempts": 1
    });
    let id = fleet.client.submit_json(&job).await.job_id();
    let record = fleet.wait_for(id, JobStatus::Dead).await;
    let error = record.last_error.unwrap_or_default();
    assert!(error.contains("redirects are not followed"), "{error:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        target_hits.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn credentials_in_the_url_and_reserved_or_invalid_headers_are_refused_at_submit() {
    let fleet = TestFleet::builder().without_worker().start().await;
    let with_headers = |name: &str, value: &str| {
        json!({ "kind": "webhook.deliver", "args": {
            "url": "http://127.0.0.2:9/hook", "body": {}, "headers": { name: value } } })
    };
    let mut cases = vec![(
        webhook("http://guest:guest@127.0.0.2:15672/api/vhosts"),
        "args.url",
        "user name or password".to_owned(),
    )];
    for name in [
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Upgrade",
        "TE",
        "Proxy-Authorization",
        "X-TL-Job-Id",
        "Content-Type",
        // Rack, WSGI and PHP read this as X-TL-Signature.
        "X_TL_Signature",
    ] {
        cases.push((
            with_headers(name, "x"),
            "args.headers",
            format!("the header \"{name}\" may not be set"),
        ));
    }
    cases.push((
        with_headers("bad name", "x"),
        "args.headers",
        "not a valid header name".into(),
    ));
    cases.push((
        with_headers("X-Fine", "two\nlines"),
        "args.headers",
        "not a valid header value".into(),
    ));
    cases.push((
        json!({ "kind": "webhook.deliver", "args": {
            "url": "http://127.0.0.2:9/hook", "body": {}, "headers": { "X-A": "1", "x-a": "2" } } }),
        "args.headers",
        "name the same header".into(),
    ));
    for (job, field, message) in cases {
        let answer = fleet.client.submit_json(&job).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{job}: {answer:?}"
        );
        assert_eq!(
            answer.body["errors"][0]["field"], field,
            "{job}: {answer:?}"
        );
        let detail = answer.body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(&message),
            "{job}: {detail:?} lacks {message:?}"
        );
    }
    let listed = fleet.client.get("/v1/jobs").await;
    assert_eq!(
        listed.body["jobs"].as_array().unwrap().len(),
        0,
        "nothing was stored"
    );
    fleet.stop().await;
}
