//! keyrealm-host: a proxy-wasm (ABI 0.2.1) host on wasmtime plus an HTTP reverse proxy
//! (hyper, tokio; HTTP/1.1 and h2c) that serves the subset of Envoy's `envoy.yaml` this project uses, with Envoy's
//! behaviour: static listeners with an HTTP connection manager, prefix/path routes to static
//! clusters, `envoy.filters.http.wasm` filters, and the admin address (`/ready`,
//! `/stats/prometheus`).
//!
//! The module of each wasm filter is compiled once; every worker thread runs its own instance
//! and serves each request start to end. See `docs/host.md`.
//!
//! The modules read one way: [`server`] (worker threads, sockets, connections) calls `proxy`
//! (the request path: routing, the upstream exchange), which streams each direction through
//! the filters with `chain`, which drives each filter's `filter_slot` (an instance's lifecycle
//! on one worker), which calls into [`wasm::instance`], whose guest calls reach the host
//! functions in [`wasm::abi`]. [`limits`], [`metrics`], [`config`], [`body`] and [`upstream`]
//! are used from above and use nothing above them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keyrealm_host::HostError> {
//! let host = keyrealm_host::start(std::path::Path::new("envoy.yaml")).await?;
//! println!("listening on {:?}", host.listener_addrs());
//! host.shutdown().await;
//! # Ok(()) }
//! ```

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admin;
pub mod body;
mod chain;
pub mod config;
mod filter_slot;
pub mod limits;
pub mod log;
pub mod metrics;
mod proxy;
pub mod server;
pub mod upstream;
pub mod wasm;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

pub use config::ConfigError;
pub use limits::Limits;
pub use wasm::instance::VmError;
pub use wasm::VmLimits;

use limits::ProcessBudget;
use metrics::MetricsRegistry;
use server::Control;
use wasm::shared::{SharedData, SharedQueues};
use wasm::Plugin;

/// Errors that stop the host from starting.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("{path}: cannot read the wasm module: {source}")]
    ReadModule {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("{path}: cannot open the log file: {source}")]
    LogFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// Knobs that are not part of `envoy.yaml`.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Worker threads (default: the number of cores), like Envoy's `--concurrency`.
    pub workers: Option<usize>,
    /// The limits (see [`limits::Limits`]).
    pub limits: Limits,
    /// Values for `host_env_keys` that take precedence over the process environment (lets
    /// in-process tests give each host its own environment).
    pub env: Vec<(String, String)>,
    /// Append the log (guest lines, host warnings and errors) to this file, like Envoy's
    /// `--log-path`.
    pub log_path: Option<std::path::PathBuf>,
    /// Least proxy-wasm log level passed on (0 trace … 5 critical; default 2, info, as Envoy).
    pub log_level: Option<u32>,
}

/// A running host.
pub struct RunningHost {
    listeners: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    control: watch::Sender<Control>,
    threads: Vec<std::thread::JoinHandle<()>>,
    metrics: Arc<MetricsRegistry>,
    log: Arc<log::HostLog>,
}

impl RunningHost {
    /// The bound address of each listener, in configuration order.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.clone()
    }

    /// The bound admin address, if the configuration has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The metrics registry (what `/stats/prometheus` shows).
    pub fn metrics(&self) -> &MetricsRegistry {
        &self.metrics
    }

    /// Everything logged so far (guest log lines, host warnings and errors), in Envoy's line
    /// format.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Stops accepting, closes open connections, and waits for the workers to end.
    pub async fn shutdown(self) {
        self.stop(Control::Stop).await;
    }

    /// Drains: stops accepting, lets the requests in flight finish (each context still ends
    /// with `on_log`/`on_done`) for at most `timeout`, then closes what is left and waits for
    /// the workers to end.
    pub async fn drain(self, timeout: std::time::Duration) {
        self.stop(Control::Drain(timeout)).await;
    }

    async fn stop(mut self, how: Control) {
        let _ = self.control.send(how);
        // The admin address closes at once (a load balancer polling `/ready` sees it go).
        let _ = self.shutdown.send(true);
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for RunningHost {
    /// A host dropped without [`RunningHost::shutdown`] still stops: its threads are told to
    /// end (without waiting for them).
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
        let _ = self.shutdown.send(true);
    }
}

/// Checks a configuration without serving it (like `envoy --mode validate`): the file must be
/// in the supported subset, and every wasm module must load and link against the host's ABI.
pub fn validate(config_path: &Path) -> Result<(), HostError> {
    let config = config::load(config_path)?;
    for l in &config.listeners {
        for w in &l.wasm_filters {
            let display = w.code_path.display().to_string();
            let bytes = std::fs::read(&w.code_path).map_err(|source| HostError::ReadModule {
                path: display.clone(),
                source,
            })?;
            let module = wasm::instance::compile(&display, &bytes)?;
            wasm::instance::prelink(&w.name, &module)?;
        }
    }
    Ok(())
}

/// Reads `config_path` (an envoy.yaml subset) and starts serving it with default options.
pub async fn start(config_path: &Path) -> Result<RunningHost, HostError> {
    start_with_options(config_path, HostOptions::default()).await
}

/// Like [`start`], with explicit options.
pub async fn start_with_options(
    config_path: &Path,
    options: HostOptions,
) -> Result<RunningHost, HostError> {
    let path = config_path.to_path_buf();
    match tokio::task::spawn_blocking(move || start_blocking(&path, options)).await {
        Ok(r) => r,
        Err(e) => Err(HostError::Thread(std::io::Error::other(e.to_string()))),
    }
}

fn start_blocking(config_path: &Path, options: HostOptions) -> Result<RunningHost, HostError> {
    let config = config::load(config_path)?;
    let limits = options.limits;
    let host_log = Arc::new(match &options.log_path {
        Some(p) => log::HostLog::with_file(p, limits.log_kept_bytes).map_err(|source| {
            HostError::LogFile {
                path: p.display().to_string(),
                source,
            }
        })?,
        None => log::HostLog::new(limits.log_kept_bytes),
    });
    let metrics = Arc::new(MetricsRegistry::new(limits.metrics));
    let shared_data = Arc::new(SharedData::new(limits.shared_data_bytes));
    let queues = Arc::new(SharedQueues::new(limits.queue_items, limits.queue_bytes));
    let clusters = Arc::new(config.clusters.clone());

    // Compile each distinct module once.
    let mut compiled: Vec<(std::path::PathBuf, wasmtime::Module)> = Vec::new();
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let mut plugins = Vec::new();
        for w in &l.wasm_filters {
            let module = match compiled.iter().find(|(p, _)| *p == w.code_path) {
                Some((_, m)) => m.clone(),
                None => {
                    let display = w.code_path.display().to_string();
                    let bytes =
                        std::fs::read(&w.code_path).map_err(|source| HostError::ReadModule {
                            path: display.clone(),
                            source,
                        })?;
                    let m = wasm::instance::compile(&display, &bytes)?;
                    compiled.push((w.code_path.clone(), m.clone()));
                    m
                }
            };
            let pre = wasm::instance::prelink(w.log_name(), &module)?;
            let env = wasm::guest_env(w, &options.env);
            plugins.push(Arc::new(Plugin {
                config: w.clone(),
                pre,
                env,
                clusters: clusters.clone(),
                shared_data: shared_data.clone(),
                queues: queues.clone(),
                metrics: metrics.clone(),
                limits,
                log: host_log.clone(),
                log_level: options.log_level.unwrap_or(2).min(5),
            }));
        }
        listeners.push((l.clone(), plugins));
    }

    let workers = options
        .workers
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    // One socket per listener per worker, all bound to the same address (SO_REUSEPORT); a
    // listener on port 0 gets its port from the first socket.
    let mut sockets: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for l in &config.listeners {
        let bind =
            |addr| server::bind_reuseport(addr).map_err(|source| HostError::Bind { addr, source });
        let first = bind(l.address)?;
        let addr = first.local_addr().map_err(|source| HostError::Bind {
            addr: l.address,
            source,
        })?;
        bound.push(addr);
        sockets[0].push(first);
        for worker_sockets in sockets.iter_mut().skip(1) {
            worker_sockets.push(bind(addr)?);
        }
    }
    let admin_socket = match config.admin {
        Some(addr) => Some(bind(addr)?),
        None => None,
    };
    let admin = match &admin_socket {
        Some(s) => Some(s.local_addr().map_err(|source| HostError::Bind {
            addr: config.admin.unwrap_or(bound[0]),
            source,
        })?),
        None => None,
    };

    let shared = Arc::new(server::HostShared {
        listeners,
        clusters,
        metrics: metrics.clone(),
        budget: ProcessBudget::new(limits.process_body_bytes),
        limits,
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (control_tx, control_rx) = watch::channel(Control::Serve);
    let mut threads = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stop = |threads: Vec<std::thread::JoinHandle<()>>, tx: &watch::Sender<Control>| {
        let _ = tx.send(Control::Stop);
        for t in threads {
            let _ = t.join();
        }
    };
    let mut pending = 0usize;
    for (index, worker_sockets) in sockets.into_iter().enumerate() {
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let rx = control_rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("keyrealm-worker-{index}"))
            .spawn(move || server::run(index, shared, worker_sockets, ready, rx));
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop(threads, &control_tx);
                return Err(HostError::Thread(e));
            }
        }
        pending += 1;
        if index == 0 {
            // The first worker starts alone, so that a refused configuration is reported once.
            if let Err(e) = worker_ready(&ready_rx, &host_log) {
                stop(threads, &control_tx);
                return Err(e);
            }
            pending -= 1;
        }
    }
    drop(ready_tx);
    for _ in 0..pending {
        if let Err(e) = worker_ready(&ready_rx, &host_log) {
            stop(threads, &control_tx);
            return Err(e);
        }
    }
    if let Some(socket) = admin_socket {
        let m = metrics.clone();
        let rx = shutdown_rx.clone();
        match std::thread::Builder::new()
            .name("keyrealm-admin".into())
            .spawn(move || admin::run(socket, m, rx))
        {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop(threads, &control_tx);
                return Err(HostError::Thread(e));
            }
        }
    }
    Ok(RunningHost {
        listeners: bound,
        admin,
        shutdown: shutdown_tx,
        control: control_tx,
        threads,
        metrics,
        log: host_log,
    })
}

/// Waits for one worker's start-up result.
fn worker_ready(
    rx: &std::sync::mpsc::Receiver<Result<(), VmError>>,
    host_log: &log::HostLog,
) -> Result<(), HostError> {
    match rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            host_log.write(4, "main", &e.to_string());
            Err(HostError::Vm(e))
        }
        Err(_) => Err(HostError::Thread(std::io::Error::other(
            "a worker ended during start-up",
        ))),
    }
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, HostError> {
    let socket =
        std::net::TcpListener::bind(addr).map_err(|source| HostError::Bind { addr, source })?;
    socket
        .set_nonblocking(true)
        .map_err(|source| HostError::Bind { addr, source })?;
    Ok(socket)
}
