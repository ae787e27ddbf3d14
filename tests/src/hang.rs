//! Misbehaving realm services: one that accepts connections and never answers, one that answers
//! every request with a 500.

use std::net::SocketAddr;

use tokio::net::TcpListener;

pub struct HangingServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HangingServer {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // Keep every accepted socket open, read nothing, write nothing.
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Ok(Self { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HangingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP server that answers every request with `500 Internal Server Error`.
pub struct FailingServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FailingServer {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().fallback(|| async {
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "realm service broken on purpose",
            )
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for FailingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
