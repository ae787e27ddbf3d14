//! Worker threads. Each worker is an OS thread with a current-thread tokio runtime and a
//! `LocalSet`; it owns one instance of every plugin, accepts connections from the shared
//! listeners, and serves each request start to end on that thread.
//!
//! Callouts (`proxy_http_call`) and ticks run as local tasks of the worker and call back into
//! the instance only between other guest calls, never from inside a host function.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use crate::config::{ClusterConfig, Codec, ListenerConfig};
use crate::metrics::MetricsRegistry;
use crate::upstream::Pool;
use crate::wasm::instance::{VmError, VmInstance};
use crate::wasm::shared::QueueOwner;
use crate::wasm::{CallResponse, PendingHttpCall, Plugin, RequestInfo};

/// What every worker of one host shares.
pub struct HostShared {
    pub listeners: Vec<(ListenerConfig, Vec<Arc<Plugin>>)>,
    pub clusters: Arc<BTreeMap<String, ClusterConfig>>,
    pub metrics: Arc<MetricsRegistry>,
}

/// Per-worker context.
pub struct WorkerCtx {
    pub pool: Pool,
    pub clusters: Arc<BTreeMap<String, ClusterConfig>>,
    pub metrics: Arc<MetricsRegistry>,
}

/// One listener as a worker runs it.
pub struct ListenerRuntime {
    pub config: ListenerConfig,
    pub filters: Vec<Rc<WorkerFilter>>,
}

struct Slot {
    vm: Option<VmInstance>,
    generation: u64,
}

/// A plugin's instance on one worker, replaced when it fails.
pub struct WorkerFilter {
    pub plugin: Arc<Plugin>,
    slot: RefCell<Slot>,
    /// Woken after callouts and ticks, so paused requests look at their state again.
    pub notify: Notify,
    ctx: Rc<WorkerCtx>,
    tick_epoch: Cell<u64>,
    /// Where shared queues this instance registered announce new items (context id, queue id).
    queue_ready: tokio::sync::mpsc::UnboundedSender<(u32, u32)>,
}

/// A handle to an HTTP context: which filter, which instance generation, which context id.
#[derive(Clone)]
pub struct ContextHandle {
    pub filter: Rc<WorkerFilter>,
    pub generation: u64,
    pub id: u32,
}

impl WorkerFilter {
    /// Starts the plugin's instance on this worker.
    pub fn start(plugin: Arc<Plugin>, ctx: Rc<WorkerCtx>) -> Result<Rc<Self>, VmError> {
        let vm = VmInstance::start(plugin.clone(), &plugin.pre)?;
        let (queue_ready, mut announcements) = tokio::sync::mpsc::unbounded_channel();
        let filter = Rc::new(WorkerFilter {
            plugin,
            slot: RefCell::new(Slot {
                vm: Some(vm),
                generation: 1,
            }),
            notify: Notify::new(),
            ctx,
            tick_epoch: Cell::new(0),
            queue_ready,
        });
        // `on_queue_ready` runs here, on the worker, never from inside the enqueuing call.
        let weak = Rc::downgrade(&filter);
        tokio::task::spawn_local(async move {
            while let Some((context_id, queue_id)) = announcements.recv().await {
                let Some(me) = weak.upgrade() else { return };
                if let Err(e) = me.with_vm(None, |vm| vm.on_queue_ready(context_id, queue_id)) {
                    tracing::warn!("on_queue_ready: {e}");
                }
                me.notify.notify_waiters();
            }
        });
        filter.after_call();
        Ok(filter)
    }

    /// The current instance generation.
    pub fn generation(&self) -> u64 {
        self.slot.borrow().generation
    }

    /// Runs `f` on the instance. With `generation`, fails if the instance was replaced since
    /// (the context it refers to is gone). A failed instance is replaced at once.
    pub fn with_vm<R>(
        self: &Rc<Self>,
        generation: Option<u64>,
        f: impl FnOnce(&mut VmInstance) -> Result<R, VmError>,
    ) -> Result<R, VmError> {
        let result = {
            let mut slot = self.slot.borrow_mut();
            if slot.vm.is_none() {
                self.replace(&mut slot);
            }
            if generation.is_some_and(|g| g != slot.generation) {
                return Err(VmError::Broken {
                    plugin: self.plugin.log_name().to_string(),
                });
            }
            // No instance: replacing it failed (`after_call` would have nothing to do).
            let Some(vm) = slot.vm.as_mut() else {
                return Err(VmError::Broken {
                    plugin: self.plugin.log_name().to_string(),
                });
            };
            let result = f(vm);
            if vm.take_other_streams_changed() {
                self.notify.notify_waiters();
            }
            if vm.is_broken() {
                if let Err(e) = &result {
                    self.log_error(&format!("{e}; replacing the instance"));
                }
                self.ctx
                    .metrics
                    .host
                    .vm_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.replace(&mut slot);
                self.notify.notify_waiters();
            }
            result
        };
        self.after_call();
        result
    }

    fn replace(&self, slot: &mut Slot) {
        slot.generation += 1;
        slot.vm = None;
        self.tick_epoch.set(self.tick_epoch.get() + 1);
        match VmInstance::start(self.plugin.clone(), &self.plugin.pre) {
            Ok(vm) => {
                self.ctx
                    .metrics
                    .host
                    .vm_replacements
                    .fetch_add(1, Ordering::Relaxed);
                slot.vm = Some(vm);
            }
            Err(e) => self.log_error(&format!("cannot replace the failed instance: {e}")),
        }
    }

    /// An error about this plugin's instance, to tracing and to the host log.
    fn log_error(&self, message: &str) {
        tracing::error!("{message}");
        self.plugin.log.write(4, "wasm", message);
    }

    /// Starts the HTTP calls the guest recorded, re-arms the tick timer if it changed, and takes
    /// ownership of the shared queues it registered.
    fn after_call(self: &Rc<Self>) {
        let (calls, tick, queues, generation) = {
            let mut slot = self.slot.borrow_mut();
            let generation = slot.generation;
            match slot.vm.as_mut() {
                Some(vm) => (
                    vm.take_pending_calls(),
                    vm.take_tick_change(),
                    vm.take_queue_registrations(),
                    generation,
                ),
                None => return,
            }
        };
        for (queue_id, context_id) in queues {
            let owner = QueueOwner {
                notify: self.queue_ready.clone(),
                context_id,
            };
            self.plugin.queues.set_owner(queue_id, owner);
        }
        for call in calls {
            let me = self.clone();
            tokio::task::spawn_local(async move { me.run_call(call, generation).await });
        }
        if let Some(period) = tick {
            self.arm_tick(period);
        }
    }

    fn arm_tick(self: &Rc<Self>, period: Duration) {
        let epoch = self.tick_epoch.get() + 1;
        self.tick_epoch.set(epoch);
        if period.is_zero() {
            return;
        }
        let me = self.clone();
        tokio::task::spawn_local(async move {
            let mut interval =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if me.tick_epoch.get() != epoch {
                    return;
                }
                if let Err(e) = me.with_vm(None, |vm| vm.on_tick()) {
                    tracing::warn!("on_tick: {e}");
                }
                me.notify.notify_waiters();
            }
        });
    }

    async fn run_call(self: Rc<Self>, call: PendingHttpCall, generation: u64) {
        let metrics = &self.ctx.metrics.host;
        metrics.http_calls.fetch_add(1, Ordering::Relaxed);
        let (token, context_id) = (call.token, call.context_id);
        let response = self.call_answer(call).await;
        if response.is_none() {
            metrics.http_call_failures.fetch_add(1, Ordering::Relaxed);
        }
        let delivered = self.with_vm(Some(generation), |vm| {
            if !vm.context_alive(context_id) {
                return Ok(());
            }
            vm.on_http_call_response(token, response)
        });
        if let Err(e) = delivered {
            tracing::debug!("http call answer not delivered: {e}");
        }
        self.notify.notify_waiters();
    }

    /// Sends an HTTP call and returns the answer the guest gets; `None` when it cannot be sent
    /// (unknown cluster, bad request).
    async fn call_answer(&self, call: PendingHttpCall) -> Option<CallResponse> {
        let cluster = self.ctx.clusters.get(&call.cluster)?;
        let request = match crate::upstream::build_request(&call.headers, Bytes::from(call.body)) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(cluster = %call.cluster, "http call has a bad request: {e}");
                return None;
            }
        };
        match self.ctx.pool.exchange(cluster, request, call.timeout).await {
            Ok(r) => {
                let mut headers = vec![(":status".to_string(), r.status.to_string().into_bytes())];
                headers.extend(r.headers);
                Some(CallResponse {
                    headers,
                    body: Vec::from(r.body),
                    trailers: Vec::new(),
                })
            }
            Err(e) => {
                // As Envoy: the router's local reply is the call's answer.
                tracing::debug!(cluster = %call.cluster, "http call failed: {e}");
                self.ctx
                    .metrics
                    .host
                    .http_call_failures
                    .fetch_add(1, Ordering::Relaxed);
                let (status, body) = e.router_reply();
                Some(CallResponse {
                    headers: vec![
                        (":status".to_string(), status.to_string().into_bytes()),
                        (
                            "content-length".to_string(),
                            body.len().to_string().into_bytes(),
                        ),
                        ("content-type".to_string(), b"text/plain".to_vec()),
                    ],
                    body: body.as_bytes().to_vec(),
                    trailers: Vec::new(),
                })
            }
        }
    }

    /// Creates an HTTP context on the current instance.
    pub fn create_context(self: &Rc<Self>, info: RequestInfo) -> Result<ContextHandle, VmError> {
        // Any instance will do (a missing one is started first); the context belongs to the
        // generation that created it (nothing runs between the call and reading it).
        let id = self.with_vm(None, |vm| vm.create_http_context(info))?;
        let generation = self.generation();
        Ok(ContextHandle {
            filter: self.clone(),
            generation,
            id,
        })
    }
}

impl ContextHandle {
    /// Runs `f` on the instance that owns this context.
    pub fn with_vm<R>(
        &self,
        f: impl FnOnce(&mut VmInstance, u32) -> Result<R, VmError>,
    ) -> Result<R, VmError> {
        let id = self.id;
        self.filter.with_vm(Some(self.generation), |vm| f(vm, id))
    }

    /// Ends the context (`on_done`, `on_log`, `on_delete`), if its instance still lives.
    pub fn finish(&self) {
        if let Err(e) = self.with_vm(|vm, id| vm.finish_http_context(id)) {
            tracing::debug!("finishing context {}: {e}", self.id);
        }
    }
}

/// The single-threaded runtime a worker (or the admin thread) runs its `LocalSet` on.
pub(crate) fn local_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Runs one worker until `shutdown` turns true. `ready` receives the start-up result.
pub fn run(
    index: usize,
    shared: Arc<HostShared>,
    sockets: Vec<std::net::TcpListener>,
    ready: std::sync::mpsc::Sender<Result<(), VmError>>,
    mut shutdown: watch::Receiver<bool>,
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
        });
        let mut runtimes = Vec::new();
        for (config, plugins) in &shared.listeners {
            let mut filters = Vec::new();
            for plugin in plugins {
                match WorkerFilter::start(plugin.clone(), ctx.clone()) {
                    Ok(f) => filters.push(f),
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                }
            }
            runtimes.push(Rc::new(ListenerRuntime {
                config: config.clone(),
                filters,
            }));
        }
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
        for (listener, rt) in listeners.into_iter().zip(runtimes) {
            let ctx = ctx.clone();
            tokio::task::spawn_local(accept_loop(listener, rt, ctx));
        }
        let _ = shutdown.wait_for(|stop| *stop).await;
    });
    // Dropping the runtime drops every connection task: open connections close.
    drop(local);
    drop(runtime);
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

async fn accept_loop(
    listener: tokio::net::TcpListener,
    rt: Rc<ListenerRuntime>,
    ctx: Rc<WorkerCtx>,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local_addr = stream.local_addr().ok();
        let codec = rt.config.codec;
        let rt = rt.clone();
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |req| {
                crate::proxy::handle(req, rt.clone(), ctx.clone(), Some(remote), local_addr)
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(crate::proxy::HEADER_READ_TIMEOUT);
            // The request header limit is Envoy's, checked by the proxy; the HTTP/2 header list
            // (which also counts 32 bytes per field) must let such requests through (hyper's
            // default is 16 KiB).
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .max_header_list_size(2 * crate::proxy::MAX_REQUEST_HEADERS as u32);
            let builder = match codec {
                Codec::Auto => builder,
                Codec::Http1 => builder.http1_only(),
                Codec::Http2 => builder.http2_only(),
            };
            if let Err(e) = builder.serve_connection(io, service).await {
                tracing::debug!("connection from {remote}: {e}");
            }
        });
    }
}
