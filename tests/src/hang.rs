//! Misbehaving realm services: one that accepts connections and never answers, one that answers
//! every request with a 500.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

/// A task serving a loopback port; aborted when dropped.
struct Served {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Binds a free loopback port and spawns `serve` on its listener.
    async fn start<F>(serve: impl FnOnce(TcpListener) -> F) -> anyhow::Result<Self>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener));
        Ok(Self { addr, task })
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct HangingServer(Served);

impl HangingServer {
    pub async fn start() -> anyhow::Result<Self> {
        let served = Served::start(|listener| async move {
            // Keep every accepted socket open, read nothing, write nothing.
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Ok(Self(served.await?))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
}

/// An HTTP server that answers every request with `500 Internal Server Error`.
pub struct FailingServer(Served);

impl FailingServer {
    pub async fn start() -> anyhow::Result<Self> {
        let app = axum::Router::new().fallback(|| async {
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "realm service broken on purpose",
            )
        });
        let served = Served::start(|listener| async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self(served.await?))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
}

/// A TCP proxy in front of a server that holds each piece of the server's answer for `delay`
/// before passing it on: a realm service that answers late.
pub struct SlowProxy(Served);

impl SlowProxy {
    pub async fn start(target: SocketAddr, delay: std::time::Duration) -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let served = Served::start(|listener| async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upstream = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                        let _ = server_write.shutdown().await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = client_write.shutdown().await;
                    upstream.abort();
                });
            }
        });
        Ok(Self(served.await?))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
}
