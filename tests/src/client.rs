//! One typed client for the API: `submit::<Kind>(args)` gives a [`JobId`], and every raw
//! call returns the status and the JSON body.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;

use engine_jobs::Job;
use engine_shared::JobId;

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
    /// The `id` field (a submit answer, a job).
    pub fn job_id(&self) -> JobId {
        job_id_in(&self.body["id"]).unwrap_or_else(|| panic!("no job id in {self:?}"))
    }

    /// The ids of the jobs a batch answer or a listing holds, in order.
    pub fn job_ids(&self) -> Vec<JobId> {
        self.body["jobs"]
            .as_array()
            .unwrap_or_else(|| panic!("no jobs in {self:?}"))
            .iter()
            .map(|job| job_id_in(&job["id"]).unwrap_or_else(|| panic!("no job id in {job}")))
            .collect()
    }
}

fn job_id_in(id: &Value) -> Option<JobId> {
    id.as_str()?.parse().ok()
}

/// What a submitter may set beside a job's kind and args; unset fields are left to the
/// kind's (or the fleet's) defaults. `JobOptions::default().max_attempts(1)`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    /// Seconds one attempt may take.
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<f64>,
    /// Seconds from now before it may run.
    #[serde(skip_serializing_if = "Option::is_none")]
    delay: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff: Option<BackoffOption>,
}

/// `backoff`: seconds after the first failure, doubling up to `max`.
#[derive(Clone, Copy, Debug, Serialize)]
struct BackoffOption {
    min: f64,
    max: f64,
}

impl JobOptions {
    pub fn queue(self, queue: &str) -> Self {
        Self {
            queue: Some(queue.to_owned()),
            ..self
        }
    }

    pub fn max_attempts(self, attempts: u32) -> Self {
        Self {
            max_attempts: Some(attempts),
            ..self
        }
    }

    pub fn timeout(self, timeout: Duration) -> Self {
        Self {
            timeout: Some(timeout.as_secs_f64()),
            ..self
        }
    }

    pub fn delay(self, delay: Duration) -> Self {
        Self {
            delay: Some(delay.as_secs_f64()),
            ..self
        }
    }

    pub fn run_at(self, at: DateTime<Utc>) -> Self {
        Self {
            run_at: Some(at),
            ..self
        }
    }

    pub fn idempotency_key(self, key: &str) -> Self {
        Self {
            idempotency_key: Some(key.to_owned()),
            ..self
        }
    }

    pub fn backoff(self, min: Duration, max: Duration) -> Self {
        Self {
            backoff: Some(BackoffOption {
                min: min.as_secs_f64(),
                max: max.as_secs_f64(),
            }),
            ..self
        }
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

    /// Submits a job of kind `K`, asserts 202, and returns its id.
    pub async fn submit<K: Job>(&self, args: K::Args) -> JobId
    where
        K::Args: Serialize,
    {
        self.submit_with::<K>(args, JobOptions::default()).await
    }

    /// Submits a job of kind `K` with `options`, asserts 202, and returns its id.
    pub async fn submit_with<K: Job>(&self, args: K::Args, options: JobOptions) -> JobId
    where
        K::Args: Serialize,
    {
        let args = serde_json::to_value(args).expect("args serialize");
        self.submit_args_with::<K>(args, options).await
    }

    /// [`ApiClient::submit`] with the args as JSON, for args that leave fields to the kind's
    /// defaults where its typed `Args` would spell every one out (`export.jobs_csv`).
    pub async fn submit_args<K: Job>(&self, args: Value) -> JobId {
        self.submit_args_with::<K>(args, JobOptions::default())
            .await
    }

    /// [`ApiClient::submit_with`] with the args as JSON.
    async fn submit_args_with<K: Job>(&self, args: Value, options: JobOptions) -> JobId {
        let mut job = serde_json::to_value(options).expect("options serialize");
        job["kind"] = Value::from(K::KIND);
        job["args"] = args;
        let answer = self.submit_json(&job).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
        answer.job_id()
    }

    /// `POST /v1/jobs` with `job` as it is, for tests of what the API answers.
    pub async fn submit_json(&self, job: &Value) -> Answer {
        self.post("/v1/jobs", job).await
    }

    /// Submits `count` copies of `job` in one batch, asserts 202, and returns their ids in
    /// order.
    pub async fn submit_copies(&self, count: usize, job: &Value) -> Vec<JobId> {
        let jobs: Vec<_> = (0..count).map(|_| job.clone()).collect();
        let answer = self
            .post("/v1/jobs/batch", &serde_json::json!({ "jobs": jobs }))
            .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
        answer.job_ids()
    }

    pub async fn job(&self, id: JobId) -> Answer {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    pub async fn cancel(&self, id: JobId) -> Answer {
        self.raw(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
            .await
    }
}
