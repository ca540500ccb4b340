//! Storage settings under the seed's names: `AWS_S3_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_S3_BUCKET_NAME` (plus `AWS_REGION`).

use secrecy::SecretString;

/// Where and how objects are stored.
#[derive(Clone, Debug)]
pub struct StorageSettings {
    /// A custom endpoint (B2: `https://s3.<region>.backblazeb2.com`; a local server:
    /// `http://127.0.0.1:<port>`); `None` is AWS itself.
    pub endpoint: Option<String>,
    /// B2's region is part of its endpoint (e.g. `us-west-004`); AWS needs a real one.
    pub region: String,
    pub access_key_id: SecretString,
    pub secret_access_key: SecretString,
    pub bucket: String,
    /// `https://host/bucket/key` instead of `https://bucket.host/key`: local servers and
    /// some providers need it.
    pub force_path_style: bool,
}
