//! A TCP proxy between the fleet and one server, so a test can cut and restore that
//! server's reachability without stopping the shared server other tests use, or lose the
//! answer to one request (see [`TcpProxy::mute_answers_after`]), or make new connections
//! wait (see [`TcpProxy::stall`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct TcpProxy {
    address: SocketAddr,
    state: Arc<ProxyState>,
    accept: AbortHandle,
}

struct ProxyState {
    open: AtomicBool,
    connections: Mutex<Vec<AbortHandle>>,
    /// Bytes that, once a client sends them, silence the server's answers on that
    /// connection (plain-text protocols only).
    trigger: Mutex<Option<Vec<u8>>>,
    /// While `true`, a new connection is accepted but not forwarded: the client's first
    /// bytes wait, as behind a server slow to answer.
    stalled: tokio::sync::watch::Sender<bool>,
}

impl TcpProxy {
    /// Starts forwarding 127.0.0.1:<random port> to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let address = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            open: AtomicBool::new(true),
            connections: Mutex::new(Vec::new()),
            trigger: Mutex::new(None),
            stalled: tokio::sync::watch::Sender::new(false),
        });
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !accept_state.open.load(Ordering::SeqCst) {
                    drop(inbound); // cut: the connection is refused at once
                    continue;
                }
                let connection_state = accept_state.clone();
                let task = tokio::spawn(async move {
                    let mut stalled = connection_state.stalled.subscribe();
                    let _ = stalled.wait_for(|stalled| !stalled).await;
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        forward(inbound, outbound, &connection_state).await;
                    }
                });
                let mut connections = accept_state.connections.lock().unwrap();
                connections.retain(|c| !c.is_finished());
                connections.push(task.abort_handle());
            }
        })
        .abort_handle();
        Self {
            address,
            state,
            accept,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A proxy to the test PostgreSQL, and the test database's URL through it.
    pub async fn database() -> (Self, String) {
        let proxy = Self::start("127.0.0.1:5432".parse().unwrap()).await;
        let url =
            crate::services::database_url().replace("127.0.0.1:5432", &proxy.address().to_string());
        (proxy, url)
    }

    /// Drops every live connection and refuses new ones.
    pub fn cut(&self) {
        self.state.open.store(false, Ordering::SeqCst);
        for connection in self.state.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    pub fn restore(&self) {
        self.state.open.store(true, Ordering::SeqCst);
    }

    /// New connections are accepted but held, unforwarded, until [`TcpProxy::resume`];
    /// live ones carry on.
    pub fn stall(&self) {
        self.state.stalled.send_replace(true);
    }

    /// Forwards the held connections and every new one again.
    pub fn resume(&self) {
        self.state.stalled.send_replace(false);
    }

    /// From the moment a client sends `bytes` on a connection, the server's answers on that
    /// connection are dropped: the server acts on the request, the client never hears of it
    /// (until [`TcpProxy::cut`] ends its wait with a broken connection).
    pub fn mute_answers_after(&self, bytes: &[u8]) {
        *self.state.trigger.lock().unwrap() = Some(bytes.to_vec());
    }
}

/// Copies both ways until either side closes; answers stop once the trigger was sent.
async fn forward(inbound: TcpStream, outbound: TcpStream, state: &ProxyState) {
    let (mut client_reads, mut client_writes) = inbound.into_split();
    let (mut server_reads, mut server_writes) = outbound.into_split();
    let muted = AtomicBool::new(false);
    let requests = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = client_reads.read(&mut buffer).await.unwrap_or(0);
            if read == 0 {
                return;
            }
            let chunk = &buffer[..read];
            if let Some(trigger) = state.trigger.lock().unwrap().as_deref()
                && chunk.windows(trigger.len()).any(|window| window == trigger)
            {
                muted.store(true, Ordering::SeqCst);
            }
            if server_writes.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    let answers = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = server_reads.read(&mut buffer).await.unwrap_or(0);
            if read == 0 {
                return;
            }
            if !muted.load(Ordering::SeqCst)
                && client_writes.write_all(&buffer[..read]).await.is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        () = requests => {}
        () = answers => {}
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
