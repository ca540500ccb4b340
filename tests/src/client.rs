//! One typed client for the API: every call returns the status and the JSON body.

use std::net::SocketAddr;

use reqwest::{Method, StatusCode};
use serde_json::Value;

#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    address: SocketAddr,
    key: Option<String>,
}

/// An answer: status, JSON body (`Null` if none), and the content type.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub content_type: String,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
}

impl Answer {
    /// The `id` field as a string (submit answers).
    pub fn id(&self) -> String {
        self.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {self:?}"))
            .to_owned()
    }
}

impl ApiClient {
    pub fn new(address: SocketAddr, key: Option<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{address}"),
            address,
            key,
        }
    }

    /// The API's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The same API with another key (or none).
    pub fn with_key(&self, key: Option<&str>) -> Self {
        Self {
            key: key.map(str::to_owned),
            ..self.clone()
        }
    }

    /// Sends raw bytes as the body (for malformed and oversized bodies).
    pub async fn raw(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("the API answered");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await.expect("reading the body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            body,
            content_type,
            retry_after,
        }
    }

    /// GETs `path` as text, with extra request headers: the status, the response headers
    /// and the raw body bytes (not decoded: a test may ask for gzip).
    pub async fn get_raw(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the API answered");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("reading the body").to_vec();
        (status, headers, body)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.raw(Method::POST, path, Some(serde_json::to_vec(body).unwrap()))
            .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.raw(Method::GET, path, None).await
    }

    pub async fn submit(&self, job: &Value) -> Answer {
        self.post("/v1/jobs", job).await
    }

    /// Submits `count` copies of `job` in one batch, asserts 202, and returns their ids in
    /// order.
    pub async fn submit_copies(&self, count: usize, job: &Value) -> Vec<String> {
        let jobs: Vec<_> = (0..count).map(|_| job.clone()).collect();
        let answer = self
            .post("/v1/jobs/batch", &serde_json::json!({ "jobs": jobs }))
            .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
        answer.body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|job| job["id"].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn job(&self, id: &str) -> Answer {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    pub async fn cancel(&self, id: &str) -> Answer {
        self.raw(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
            .await
    }
}
