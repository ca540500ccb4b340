//! TLS for tests against the plain servers they share: a throwaway certificate authority
//! ([`TestCa`]), and a TLS-terminating TCP proxy ([`TlsProxy`]) that accepts TLS on a
//! loopback port with a certificate that authority signed for `127.0.0.1` and `localhost`,
//! and pipes the decrypted bytes to one plain server. So a client speaks `amqps://` or
//! `rediss://` to the test RabbitMQ or Redis, and the proxy's handshake counts prove it did
//! (or that it refused the certificate).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority made for one test, trusted by nothing until a client is told to.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate (PEM), for a client to trust: a child process is given it as
    /// `SSL_CERT_FILE`. Deleted on drop.
    file: PathBuf,
}

impl TestCa {
    pub fn new() -> Self {
        Self::generate().unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn generate() -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("generating the test CA's key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tl-engine test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let certificate = params
            .self_signed(&key)
            .context("self-signing the test CA")?;
        let file =
            std::env::temp_dir().join(format!("tl-engine-test-ca-{}.pem", rand::random::<u64>()));
        std::fs::write(&file, certificate.pem())
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            file,
        })
    }

    /// The PEM file holding the authority's certificate.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// A server configuration with a fresh certificate for `127.0.0.1` and `localhost`,
    /// signed by this authority.
    fn server_config(&self) -> anyhow::Result<ServerConfig> {
        // IP addresses become IP SANs: a client given `127.0.0.1` checks the address itself.
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .context("the proxy's names")?;
        params
            .distinguished_name
            .push(DnType::CommonName, "tl-engine test proxy");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().context("generating the proxy's key")?;
        let certificate = params
            .signed_by(&key, &self.issuer)
            .context("signing the proxy's certificate")?;
        // The provider is named rather than taken from the process default, so the proxy
        // works whether or not the test installed one.
        ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(
            vec![certificate.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .context("the proxy's TLS configuration")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

pub struct TlsProxy {
    address: SocketAddr,
    /// Shared with the accept loop, which counts every handshake's outcome.
    handshakes: Arc<Handshakes>,
    /// The accept loop; it owns every piped connection, so aborting it ends them all.
    accept: AbortHandle,
}

#[derive(Default)]
struct Handshakes {
    completed: AtomicUsize,
    failed: AtomicUsize,
}

impl TlsProxy {
    /// Accepts TLS on 127.0.0.1:<random port> with a certificate `ca` signs, and forwards
    /// the plain stream to `target`.
    pub async fn start(ca: &TestCa, target: SocketAddr) -> Self {
        let config = ca.server_config().unwrap_or_else(|e| panic!("{e:#}"));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the TLS proxy");
        let address = listener.local_addr().unwrap();
        let handshakes = Arc::new(Handshakes::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(Arc::new(config)),
            target,
            handshakes.clone(),
        ))
        .abort_handle();
        Self {
            address,
            handshakes,
            accept,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// TLS handshakes that completed: a client trusted the certificate and is piped through.
    pub fn completed_handshakes(&self) -> usize {
        self.handshakes.completed.load(Ordering::SeqCst)
    }

    /// Connections whose handshake failed (a client that refused the certificate, or one
    /// that spoke no TLS at all).
    pub fn failed_handshakes(&self) -> usize {
        self.handshakes.failed.load(Ordering::SeqCst)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    target: SocketAddr,
    handshakes: Arc<Handshakes>,
) {
    // Owned here so that aborting this loop drops (and ends) every piped connection too.
    let mut connections = JoinSet::new();
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let (acceptor, handshakes) = (acceptor.clone(), handshakes.clone());
        connections.spawn(async move {
            let Ok(mut decrypted) = acceptor.accept(inbound).await else {
                handshakes.failed.fetch_add(1, Ordering::SeqCst);
                return;
            };
            handshakes.completed.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut decrypted, &mut outbound).await;
            }
        });
    }
}
