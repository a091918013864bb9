//! A TCP relay to cut: it forwards a port to an upstream address until `cut` drops its listener
//! and every connection through it, as if the upstream (PostgreSQL, say) had gone away, and
//! `restore` listens on the same port again.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub struct Relay {
    pub port: u16,
    upstream: SocketAddr,
    accepting: Option<JoinHandle<()>>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Relay {
            port,
            upstream,
            accepting: Some(tokio::spawn(relay(listener, upstream))),
        }
    }

    /// Closes the port and every connection through it.
    pub async fn cut(&mut self) {
        if let Some(accepting) = self.accepting.take() {
            accepting.abort();
            let _ = accepting.await;
        }
    }

    /// Listens on the same port again.
    pub async fn restore(&mut self) {
        assert!(self.accepting.is_none(), "the relay is not cut");
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.accepting = Some(tokio::spawn(relay(listener, self.upstream)));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(accepting) = self.accepting.take() {
            accepting.abort();
        }
    }
}

/// Accepts and forwards; its connections live in its `JoinSet`, so aborting it closes them all.
async fn relay(listener: TcpListener, upstream: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut inbound, _)) = accepted else { continue };
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
