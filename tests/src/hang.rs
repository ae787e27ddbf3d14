//! A TCP server that accepts connections and never answers: a realm service that hangs.

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
