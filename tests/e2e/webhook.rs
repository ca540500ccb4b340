//! `webhook.deliver` against a real local HTTP receiver that checks the signature.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::post;
use engine_jobs::kinds::webhook_deliver::{WebhookDeliver, WebhookDeliverArgs};
use engine_shared::JobStatus;
use engine_tests::{JobOptions, RECEIVER_HOST, TestFleet};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "whsec_test_secret";

#[derive(Default)]
struct Received {
    bodies: Vec<String>,
    signatures_valid: Vec<bool>,
}

fn verify(headers: &HeaderMap, body: &str) -> bool {
    let Some(header) = headers.get("x-tl-signature").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = header.split(',');
    let (Some(t), Some(v1)) = (
        parts.next().and_then(|p| p.strip_prefix("t=")),
        parts.next().and_then(|p| p.strip_prefix("v1=")),
    ) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    hex::encode(mac.finalize().into_bytes()) == v1
}

/// A receiver answering `status`, recording what it got.
async fn receiver(status: u16) -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let record = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let record = record.clone();
            async move {
                let mut received = record.lock().unwrap();
                received.signatures_valid.push(verify(&headers, &body));
                received.bodies.push(body);
                AxumStatus::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind((RECEIVER_HOST, 0))
        .await
        .unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// A delivery of `body` to `url` with the kind's defaults: no extra headers, 10 s timeout.
fn delivery(url: &str, body: Value) -> WebhookDeliverArgs {
    WebhookDeliverArgs {
        url: url.parse().expect("the receiver's URL parses"),
        body,
        headers: BTreeMap::new(),
        timeout_ms: 10_000,
    }
}

#[tokio::test]
async fn a_webhook_is_delivered_signed() {
    let fleet = TestFleet::builder()
        .settings(|s| s.sign_webhooks_with(SECRET))
        .start()
        .await;
    let (url, received) = receiver(204).await;

    let id = fleet
        .client
        .submit::<WebhookDeliver>(delivery(&url, json!({ "order": 42 })))
        .await;

    let record = fleet.wait_for(id, JobStatus::Succeeded).await;
    assert_eq!(record.result.unwrap()["status"], 204);
    {
        let received = received.lock().unwrap();
        assert_eq!(received.bodies, vec![r#"{"order":42}"#.to_owned()]);
        assert_eq!(received.signatures_valid, vec![true]);
    }
    fleet.stop().await;
}

#[tokio::test]
async fn a_non_2xx_answer_fails_the_attempt_and_is_retried() {
    let fleet = TestFleet::builder()
        .settings(|s| s.sign_webhooks_with(SECRET))
        .start()
        .await;
    let (url, received) = receiver(503).await;

    let id = fleet
        .client
        .submit_with::<WebhookDeliver>(
            delivery(&url, json!({})),
            JobOptions::default().max_attempts(2),
        )
        .await;

    let record = fleet.wait_for(id, JobStatus::Dead).await;
    assert_eq!(record.attempts, 2);
    assert!(record.last_error.unwrap().contains("503"));
    assert_eq!(received.lock().unwrap().bodies.len(), 2);
    fleet.stop().await;
}
