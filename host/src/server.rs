//! The server: worker threads, their listening sockets, and the HTTP connections they accept.
//!
//! Each worker is an OS thread with a current-thread tokio runtime and a `LocalSet`; it owns one
//! instance of every plugin (a [`FilterSlot`] each), has its own listening socket per listener
//! (`SO_REUSEPORT`, so the kernel spreads connections and only one worker wakes for each), and
//! serves every request of a connection it accepted start to end on its thread
//! ([`crate::proxy::handle`]).
//!
//! Draining (SIGTERM/SIGINT, [`crate::RunningHost::drain`]): a worker closes its listening
//! sockets, asks each connection to finish (HTTP/1.1: after the request in flight, with
//! `Connection: close`; HTTP/2: GOAWAY), waits for them up to the drain timeout, then stops.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::config::{ClusterConfig, Codec, ListenerConfig};
use crate::filter_slot::FilterSlot;
use crate::limits::{ConnectionBudget, Limits, ProcessBudget};
use crate::metrics::MetricsRegistry;
use crate::proxy::ListenerRuntime;
use crate::upstream::{Pool, WorkerCtx};
use crate::wasm::instance::VmError;
use crate::wasm::Plugin;

/// How long a connection may stay open with no request in flight (Envoy's HTTP connection
/// manager `idle_timeout` default: 1 hour).
pub const DOWNSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// What every worker of one host shares.
pub struct HostShared {
    pub listeners: Vec<(ListenerConfig, Vec<Arc<Plugin>>)>,
    pub clusters: Arc<BTreeMap<String, ClusterConfig>>,
    pub metrics: Arc<MetricsRegistry>,
    pub budget: Arc<ProcessBudget>,
    pub limits: Limits,
}

/// What the workers are told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Serve,
    /// Stop accepting, let open requests finish within the given time, then stop.
    Drain(Duration),
    /// Stop now: open connections are closed.
    Stop,
}

/// A listening socket bound with `SO_REUSEADDR` and `SO_REUSEPORT`, so that every worker can
/// bind its own to the same address.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The single-threaded runtime a worker (or the admin thread) runs its `LocalSet` on.
pub(crate) fn local_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Runs one worker until told to stop. `ready` receives the start-up result; `sockets` are the
/// worker's own listening sockets, one per listener.
pub fn run(
    index: usize,
    shared: Arc<HostShared>,
    sockets: Vec<std::net::TcpListener>,
    ready: std::sync::mpsc::Sender<Result<(), VmError>>,
    mut control: watch::Receiver<Control>,
) {
    let runtime = match local_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(VmError::Instantiate {
                plugin: String::new(),
                message: format!("worker {index}: cannot build a runtime: {e}"),
            }));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let ctx = Rc::new(WorkerCtx {
            pool: Pool::default(),
            clusters: shared.clusters.clone(),
            metrics: shared.metrics.clone(),
            budget: shared.budget.clone(),
            limits: shared.limits,
            changed: tokio::sync::Notify::new(),
        });
        let runtimes = match start_filters(&shared, &ctx) {
            Ok(r) => r,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let mut listeners = Vec::new();
        for socket in sockets {
            match tokio::net::TcpListener::from_std(socket) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    let _ = ready.send(Err(VmError::Instantiate {
                        plugin: String::new(),
                        message: format!("worker {index}: listener: {e}"),
                    }));
                    return;
                }
            }
        }
        let _ = ready.send(Ok(()));
        let connections = Rc::new(Connections::default());
        let (drain_tx, drain_rx) = watch::channel(false);
        let mut accepting = Vec::new();
        for (listener, rt) in listeners.into_iter().zip(runtimes) {
            let serve = Serve {
                rt,
                ctx: ctx.clone(),
                connections: connections.clone(),
                drain: drain_rx.clone(),
            };
            accepting.push(tokio::task::spawn_local(accept_loop(listener, serve)));
        }
        let _ = control.wait_for(|c| *c != Control::Serve).await;
        let how = *control.borrow();
        if let Control::Drain(timeout) = how {
            // Closing the sockets stops accepting; open connections are asked to finish.
            for a in &accepting {
                a.abort();
            }
            let _ = drain_tx.send(true);
            let finished = async {
                while connections.open.get() > 0 {
                    let notified = connections.closed.notified();
                    if connections.open.get() == 0 {
                        break;
                    }
                    notified.await;
                }
            };
            tokio::select! {
                _ = finished => {}
                _ = tokio::time::sleep(timeout) => {
                    tracing::warn!("worker {index}: drain timeout; closing {} connections", connections.open.get());
                }
                _ = control.wait_for(|c| *c == Control::Stop) => {}
            }
            // Contexts of finished requests end on local tasks: let them run.
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        }
    });
    // Dropping the runtime drops every connection task: open connections close.
    drop(local);
    drop(runtime);
}

/// Starts every plugin's instance for every listener.
fn start_filters(
    shared: &HostShared,
    ctx: &Rc<WorkerCtx>,
) -> Result<Vec<Rc<ListenerRuntime>>, VmError> {
    let mut runtimes = Vec::new();
    for (config, plugins) in &shared.listeners {
        let mut filters = Vec::new();
        for plugin in plugins {
            filters.push(FilterSlot::start(plugin.clone(), ctx.clone())?);
        }
        runtimes.push(Rc::new(ListenerRuntime {
            config: config.clone(),
            filters,
        }));
    }
    Ok(runtimes)
}

/// The open connections of a worker.
#[derive(Default)]
struct Connections {
    open: Cell<usize>,
    closed: Notify,
}

/// Counts a connection as open while it lives.
struct OpenConnection(Rc<Connections>);

impl OpenConnection {
    fn new(c: Rc<Connections>) -> Self {
        c.open.set(c.open.get() + 1);
        OpenConnection(c)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get().saturating_sub(1));
        self.0.closed.notify_waiters();
    }
}

/// What serving one listener's connections needs.
#[derive(Clone)]
struct Serve {
    rt: Rc<ListenerRuntime>,
    ctx: Rc<WorkerCtx>,
    connections: Rc<Connections>,
    drain: watch::Receiver<bool>,
}

/// Runs HTTP/2 streams on the worker's `LocalSet`: the proxy's futures hold the worker's
/// instances (`Rc`), so they never leave its thread.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, serve: Serve) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::task::spawn_local(serve_connection(stream, remote, serve.clone()));
    }
}

/// The hyper connection builder for a listener: Envoy's header limits and timeouts.
fn connection_builder(codec: Codec) -> hyper_util::server::conn::auto::Builder<LocalExec> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(crate::proxy::HEADER_READ_TIMEOUT);
    // The request header limit is Envoy's, checked by the proxy; the HTTP/2 header list (which
    // also counts 32 bytes per field) must let such requests through (hyper's default is 16 KiB).
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(2 * crate::proxy::MAX_REQUEST_HEADERS as u32);
    match codec {
        Codec::Auto => builder,
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
    }
}

/// Tracks whether a connection has requests in flight and when it last had one.
#[derive(Default)]
struct Activity {
    in_flight: Cell<usize>,
    idle_since: Cell<Option<tokio::time::Instant>>,
}

struct InFlight(Rc<Activity>);

impl InFlight {
    fn new(a: Rc<Activity>) -> Self {
        a.in_flight.set(a.in_flight.get() + 1);
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = self.0.in_flight.get().saturating_sub(1);
        self.0.in_flight.set(n);
        if n == 0 {
            self.0.idle_since.set(Some(tokio::time::Instant::now()));
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, remote: SocketAddr, serve: Serve) {
    let _open = OpenConnection::new(serve.connections.clone());
    let _ = stream.set_nodelay(true);
    let local_addr = stream.local_addr().ok();
    let budget = ConnectionBudget::new(serve.ctx.limits.connection_body_bytes);
    let activity = Rc::new(Activity::default());
    activity.idle_since.set(Some(tokio::time::Instant::now()));
    let (rt, ctx) = (serve.rt.clone(), serve.ctx.clone());
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        let in_flight = InFlight::new(seen.clone());
        let (rt, ctx, budget) = (rt.clone(), ctx.clone(), budget.clone());
        async move {
            let r = crate::proxy::handle(req, rt, ctx, budget, Some(remote), local_addr).await;
            drop(in_flight);
            r
        }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let builder = connection_builder(serve.rt.config.codec);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut drain = serve.drain;
    // Once asked to finish (drain or idle timeout), the connection is only waited for.
    let mut closing = *drain.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        // Envoy's idle timeout: a connection with no request in flight for this long closes.
        let idle_deadline = match (activity.in_flight.get(), activity.idle_since.get()) {
            (0, Some(since)) => since + DOWNSTREAM_IDLE_TIMEOUT,
            _ => tokio::time::Instant::now() + DOWNSTREAM_IDLE_TIMEOUT,
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection from {remote}: {e}");
                }
                return;
            }
            _ = drain.wait_for(|d| *d), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(idle_deadline), if !closing => {
                if activity.in_flight.get() == 0 {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
