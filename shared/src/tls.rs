//! Chooses the process-wide rustls crypto provider before any TLS connection is made.

/// sqlx, lapin and reqwest each pull in rustls; if two crypto providers end up compiled in,
/// rustls panics with "no default provider" on the first TLS handshake. Installing `ring`
/// here, first thing in `main`, makes every TLS client of the process agree.
pub fn install_crypto_provider() {
    // Err means one is installed already (a second call, or a test harness): that is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
