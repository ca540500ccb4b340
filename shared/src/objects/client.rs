//! Building the S3 client, the one place its options are set, for S3-compatible providers
//! (Backblaze B2) as much as for AWS:
//!
//! - a custom endpoint and region, and path-style addressing when asked;
//! - static credentials from the settings (never the ambient AWS chain, so a pod cannot
//!   silently pick up another role);
//! - request checksum calculation and response checksum validation **when required** only:
//!   recent AWS SDKs add `x-amz-checksum-*` / `x-amz-sdk-checksum-algorithm` headers (and
//!   trailing checksums) to every upload by default, which B2 and other S3-compatible
//!   stores reject. A local test server accepts them, so a unit test below captures what
//!   the client really sends. `DeleteObjects` (batch) sends a checksum even then: delete
//!   one key at a time;
//! - TLS by rustls on ring, the crypto provider every binary installs.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    timeout::TimeoutConfig,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use secrecy::ExposeSecret;

use super::settings::StorageSettings;

/// A client for `settings`' endpoint and credentials.
pub fn build_client(settings: &StorageSettings) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let credentials = Credentials::new(
        settings.access_key_id.expose_secret(),
        settings.secret_access_key.expose_secret(),
        None,
        None,
        "tl-engine settings",
    );
    let mut config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(settings.region.clone()))
        .credentials_provider(credentials)
        .force_path_style(settings.force_path_style)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(endpoint) = &settings.endpoint {
        config = config.endpoint_url(endpoint);
    }
    Client::from_conf(config.build())
}

#[cfg(test)]
mod tests {
    //! The checksum options only show on the wire, so these tests point the client at a
    //! tiny HTTP server that records each request's headers and answers 200.

    use std::sync::{Arc, Mutex};

    use aws_sdk_s3::primitives::ByteStream;
    use secrecy::SecretString;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    type Recorded = Arc<Mutex<Vec<Vec<(String, String)>>>>;

    /// Serves `answers` (status line + headers + body) in turn and records request headers.
    async fn recording_server(body: &'static str) -> (String, Recorded) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let recorded: Recorded = Arc::default();
        let log = recorded.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    loop {
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                                return;
                            }
                            head.push(byte[0]);
                        }
                        let text = String::from_utf8_lossy(&head).to_string();
                        let headers: Vec<(String, String)> = text
                            .lines()
                            .skip(1)
                            .filter_map(|line| line.split_once(':'))
                            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                            .collect();
                        let length = headers
                            .iter()
                            .find(|(k, _)| k == "content-length")
                            .and_then(|(_, v)| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        let mut request_body = vec![0u8; length];
                        stream.read_exact(&mut request_body).await.unwrap();
                        log.lock().unwrap().push(headers);
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\netag: \"e\"\r\n\r\n{body}",
                            body.len()
                        );
                        stream.write_all(answer.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (format!("http://{address}"), recorded)
    }

    fn settings(endpoint: String) -> StorageSettings {
        StorageSettings {
            endpoint: Some(endpoint),
            region: "us-west-004".into(),
            access_key_id: SecretString::from("key-id"),
            secret_access_key: SecretString::from("secret"),
            bucket: "bucket".into(),
            force_path_style: true,
        }
    }

    fn checksum_headers(headers: &[(String, String)]) -> Vec<String> {
        headers
            .iter()
            .filter(|(k, v)| {
                k.starts_with("x-amz-checksum")
                    || k == "x-amz-sdk-checksum-algorithm"
                    || k == "x-amz-trailer"
                    || (k == "content-encoding" && v.contains("aws-chunked"))
            })
            .map(|(k, v)| format!("{k}: {v}"))
            .collect()
    }

    async fn put(client: &Client) {
        client
            .put_object()
            .bucket("bucket")
            .key("acme/logs/x.log.gz")
            .body(ByteStream::from_static(b"hello"))
            .send()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn uploads_and_downloads_carry_no_checksum_headers() {
        crate::tls::install_crypto_provider();
        let (endpoint, recorded) = recording_server("hello").await;
        let client = build_client(&settings(endpoint));

        put(&client).await;
        let object = client
            .get_object()
            .bucket("bucket")
            .key("acme/logs/x.log.gz")
            .send()
            .await
            .unwrap();
        let body = object.body.collect().await.unwrap().into_bytes();
        client
            .delete_object()
            .bucket("bucket")
            .key("acme/logs/x.log.gz")
            .send()
            .await
            .unwrap();

        assert_eq!(&body[..], b"hello");
        let requests = recorded.lock().unwrap().clone();
        assert_eq!(requests.len(), 3);
        for (name, headers) in ["PutObject", "GetObject", "DeleteObject"]
            .iter()
            .zip(&requests)
        {
            assert!(
                checksum_headers(headers).is_empty(),
                "{name} sent {:?}",
                checksum_headers(headers)
            );
        }
        assert!(
            !requests[1].iter().any(|(k, _)| k == "x-amz-checksum-mode"),
            "GetObject asked for checksum validation"
        );
    }

    #[tokio::test]
    async fn the_sdk_default_would_send_them_so_the_capture_can_tell() {
        crate::tls::install_crypto_provider();
        let (endpoint, recorded) = recording_server("").await;
        let client = build_client(&settings(endpoint));
        let defaults = aws_sdk_s3::Client::from_conf(
            client
                .config()
                .to_builder()
                .request_checksum_calculation(RequestChecksumCalculation::WhenSupported)
                .build(),
        );

        put(&defaults).await;

        let requests = recorded.lock().unwrap().clone();
        assert!(
            !checksum_headers(&requests[0]).is_empty(),
            "the SDK's default adds checksum headers: {:?}",
            requests[0]
        );
    }
}
