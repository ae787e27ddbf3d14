//! Serving the router over TCP, with a shutdown that also drops idle keep-alive connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::api::app;
use crate::error::Error;
use crate::state::AppState;
use crate::store::Database;

/// How the service is started.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// A SQLite file (created and migrated on start) or a PostgreSQL URL.
    pub database: Database,
    /// Accepted as an admin token (like `REALM_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Serve the web console at `/console/` (`--no-console` turns it off).
    pub console: bool,
}

impl ServiceConfig {
    /// Listens on 127.0.0.1:0, no admin token, console on.
    pub fn new(database: impl Into<Database>) -> Self {
        ServiceConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database: database.into(),
            admin_token: None,
            console: true,
        }
    }
}

/// A service serving on a tokio task. Dropping it leaves the service running until the runtime
/// ends; [`RunningService::shutdown`] stops it.
pub struct RunningService {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// How long in-flight requests get to finish at shutdown before their connections are dropped.
const DRAIN: Duration = Duration::from_millis(800);
/// A client must send its request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

impl RunningService {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes idle keep-alive connections at once and drops the rest after a
    /// short drain (within about a second).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Opens the database, binds and serves on a tokio task.
pub async fn spawn(config: ServiceConfig) -> Result<RunningService, Error> {
    let state = AppState::connect(&config.database, config.admin_token.as_deref()).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    let (stop, stopped) = watch::channel(false);
    let router = if config.console {
        crate::console::mount(app(state))
    } else {
        app(state)
    };
    let task = tokio::spawn(serve(listener, router, stopped));
    Ok(RunningService { addr, stop, task })
}

/// Resolves when shutdown is asked for; never if the handle was dropped without asking.
async fn stop_requested(mut stopped: watch::Receiver<bool>) {
    loop {
        if *stopped.borrow_and_update() {
            return;
        }
        if stopped.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn serve(listener: TcpListener, router: Router, stopped: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    // One shutdown signal per connection (a oneshot costs a connection nothing while it waits;
    // a shared watch/notify would be re-polled under a lock on every wake-up of every connection).
    let mut signals: HashMap<tokio::task::Id, oneshot::Sender<()>> = HashMap::new();
    let stop = stop_requested(stopped);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(router.clone());
                let (signal, shutdown) = oneshot::channel::<()>();
                let task = connections.spawn(async move {
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        biased;
                        _ = connection.as_mut() => {}
                        _ = shutdown => {
                            connection.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(DRAIN, connection).await;
                        }
                    }
                });
                signals.insert(task.id(), signal);
            }
            Some(done) = connections.join_next_with_id(), if !connections.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                signals.remove(&id);
            }
        }
    }
    drop(listener);
    for (_, signal) in signals.drain() {
        let _ = signal.send(());
    }
    let drained = tokio::time::timeout(DRAIN + Duration::from_millis(100), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}
