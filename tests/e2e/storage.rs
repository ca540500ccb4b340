//! The storage client against a real S3-compatible server (s3s-fs on loopback): everything
//! later features rely on — put, head, get, range get, list v2, a 12 MiB multipart upload,
//! presigned GET and PUT, delete — each test under its own prefix.

use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use engine_shared::objects::build_client;
use engine_tests::services;

#[tokio::test]
async fn the_client_round_trips_objects_with_a_real_s3_server() {
    engine_shared::tls::install_crypto_provider();
    let settings = services::s3_settings();
    let client = build_client(&settings);
    let bucket = settings.bucket.as_str();
    let prefix = format!("{}/", services::unique_namespace());
    let key = format!("{prefix}logs/one.log");

    client
        .put_object()
        .bucket(bucket)
        .key(&key)
        .body(ByteStream::from_static(b"0123456789"))
        .send()
        .await
        .expect("put (is the S3 server running? infra/local/prepare.sh test)");
    let head = client
        .head_object()
        .bucket(bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(10));
    let whole = client
        .get_object()
        .bucket(bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        &whole.body.collect().await.unwrap().into_bytes()[..],
        b"0123456789"
    );
    let range = client
        .get_object()
        .bucket(bucket)
        .key(&key)
        .range("bytes=2-4")
        .send()
        .await
        .unwrap();
    assert_eq!(
        &range.body.collect().await.unwrap().into_bytes()[..],
        b"234"
    );

    // 12 MiB in three parts (5 + 5 + 2 MiB; S3's smallest part but the last is 5 MiB).
    let big_key = format!("{prefix}backups/big.dump");
    let upload = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(&big_key)
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    let mut parts = Vec::new();
    for (number, size) in [(1, 5 << 20), (2, 5 << 20), (3, 2 << 20)] {
        let part = client
            .upload_part()
            .bucket(bucket)
            .key(&big_key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(vec![number as u8; size]))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .e_tag(part.e_tag().unwrap())
                .build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(&big_key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let big = client
        .head_object()
        .bucket(bucket)
        .key(&big_key)
        .send()
        .await
        .unwrap();
    assert_eq!(big.content_length(), Some(12 << 20));

    let listed = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(&prefix)
        .send()
        .await
        .unwrap();
    let mut keys: Vec<_> = listed.contents().iter().filter_map(|o| o.key()).collect();
    keys.sort_unstable();
    assert_eq!(keys, [big_key.as_str(), key.as_str()]);

    let presign = PresigningConfig::expires_in(Duration::from_secs(300)).unwrap();
    let put_url = client
        .put_object()
        .bucket(bucket)
        .key(format!("{prefix}artifacts/uploaded.txt"))
        .presigned(presign.clone())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let uploaded = http
        .put(put_url.uri())
        .body("from a presigned PUT")
        .send()
        .await
        .unwrap();
    assert!(uploaded.status().is_success(), "{}", uploaded.status());
    let get_url = client
        .get_object()
        .bucket(bucket)
        .key(format!("{prefix}artifacts/uploaded.txt"))
        .presigned(presign)
        .await
        .unwrap();
    let downloaded = http.get(get_url.uri()).send().await.unwrap();
    assert_eq!(downloaded.text().await.unwrap(), "from a presigned PUT");

    for key in [&key, &big_key, &format!("{prefix}artifacts/uploaded.txt")] {
        client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
    }
    let after = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(&prefix)
        .send()
        .await
        .unwrap();
    assert!(after.contents().is_empty(), "every object deleted");
}
