//! A TCP proxy between the fleet and one server, so a test can cut and restore that
//! server's reachability without stopping the shared server other tests use.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
        });
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !accept_state.open.load(Ordering::SeqCst) {
                    drop(inbound); // cut: the connection is refused at once
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
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
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
