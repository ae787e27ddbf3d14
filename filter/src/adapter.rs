//! The proxy-wasm adapter: maps the SDK's callbacks onto the engine and implements [`Host`] with
//! hostcalls. Compiled for `wasm32` only.
//!
//! One VM runs on one Envoy worker thread and may hold several root contexts: one per plugin
//! configuration, and a new one each time the configuration changes. The engine's
//! [`SharedState`] (cache, look-ups in flight) and [`Worker`] (requests under way) are VM-wide
//! ([`VM`]), so they survive configuration changes; each root context only holds its [`Filter`].
//!
//! The SDK panics (and the VM traps) on any hostcall status it does not expect, so the statuses
//! that reach us are the documented ones; each is logged or handled, never dropped. A panic hook
//! logs the panic through the host before the trap.
//!
//! Hot path costs: the header map is read in the host's own serialisation without a copy per
//! header ([`Headers::from_proxy_wasm`]); counters are counted in the guest and flushed on the
//! tick; the clock is read only when a decision needs it.

use std::cell::RefCell;
use std::ptr::null_mut;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action as WasmAction, BufferType, ContextType, LogLevel, MapType, MetricType, Status,
};

use crate::config;
use crate::engine::answers::JSON_CONTENT_TYPE;
use crate::engine::{
    error_body, Action, CallHandle, CallRequest, Filter, Headers, Host, Level, SharedState, Worker,
};
use crate::metrics::Metric;
use crate::realm::CallResponse;

/// How often each root context ticks: realm call deadlines and lost answers, body waits, and
/// the counters' flush.
const TICK_PERIOD: Duration = Duration::from_millis(200);

proxy_wasm::main! {{
    std::panic::set_hook(Box::new(|info| {
        // The VM traps after this hook: say why first. If even logging fails, nothing more can
        // be done from here.
        if hostcalls::log(LogLevel::Critical, &format!("keyrealm: internal error, the wasm VM traps: {info}")).is_err() {}
    }));
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root { context_id, filter: None })
    });
}}

/// What the VM's root contexts and requests share.
struct Vm {
    shared: Arc<SharedState>,
    worker: Worker,
    /// The ids the host gave to our counters (0 = not defined).
    metrics: [u32; Metric::ALL.len()],
}

thread_local! {
    /// The VM-wide engine state (a wasm VM is single-threaded).
    static VM: RefCell<Vm> = RefCell::new({
        let shared = SharedState::new(1);
        Vm { worker: Worker::new(shared.clone()), shared, metrics: [0; Metric::ALL.len()] }
    });
}

/// Runs `f` on the VM state; `None` if it is already in use (a host calling back into the
/// module from inside a hostcall, which proxy-wasm hosts do not do).
fn with_vm<R>(f: impl FnOnce(&mut Vm) -> R) -> Option<R> {
    VM.with(|vm| vm.try_borrow_mut().ok().map(|mut vm| f(&mut vm)))
}

/// Logs through the host; a failure to log has nowhere else to go.
fn log(level: LogLevel, message: &str) {
    if hostcalls::log(level, message).is_err() {}
}

/// Logs a hostcall that did not do what was asked.
fn check(what: &str, result: Result<(), Status>) {
    if let Err(status) = result {
        log(
            LogLevel::Warn,
            &format!("keyrealm: {what} failed: {status:?}"),
        );
    }
}

fn define_metrics(ids: &mut [u32; Metric::ALL.len()]) {
    if ids.iter().any(|id| *id != 0) {
        return;
    }
    for m in Metric::ALL {
        match hostcalls::define_metric(MetricType::Counter, m.name()) {
            Ok(id) => ids[m.index()] = id,
            Err(status) => log(
                LogLevel::Warn,
                &format!("keyrealm: could not define metric {}: {status:?}", m.name()),
            ),
        }
    }
}

/// Adds the worker's counts to the host's counters.
fn flush_counters(vm: &mut Vm) {
    let ids = vm.metrics;
    vm.worker.drain_counters(|metric, n| {
        let id = ids[metric.index()];
        if id != 0 {
            let delta = i64::try_from(n).unwrap_or(i64::MAX);
            check(
                "incrementing a counter",
                hostcalls::increment_metric(id, delta),
            );
        }
    });
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// The request headers in the host's serialisation, kept as they are.
fn request_headers() -> Headers {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size through the two out-pointers, which point to
    // live locals. The pointer, if not null, is memory the host allocated in this module through
    // the SDK's `proxy_on_memory_allocate` (a `Vec<u8>` of capacity `size`, forgotten), so it is
    // ours to take back as a `Vec` of that length and capacity, exactly once.
    let status =
        unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) };
    match status {
        Status::Ok if !data.is_null() => {
            // SAFETY: see above.
            let buf = unsafe { Vec::from_raw_parts(data, size, size) };
            Headers::from_proxy_wasm(buf)
        }
        Status::Ok => Headers::new(),
        status => {
            log(
                LogLevel::Warn,
                &format!("keyrealm: reading the request headers failed: {status:?}"),
            );
            Headers::new()
        }
    }
}

/// [`Host`] over hostcalls; request operations act on the host's effective context.
struct WasmHost {
    /// The context the host is calling into (where the SDK files an HTTP call).
    current: u32,
}

impl Host for WasmHost {
    fn request_headers(&mut self) -> Headers {
        request_headers()
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        check(
            "setting a request header",
            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)),
        );
    }

    fn add_request_header(&mut self, name: &str, value: &str) {
        check(
            "adding a request header",
            hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value),
        );
    }

    fn remove_request_header(&mut self, name: &str) {
        check(
            "removing a request header",
            hostcalls::remove_map_value(MapType::HttpRequestHeaders, name),
        );
    }

    fn request_body(&mut self, size: usize) -> Option<Vec<u8>> {
        match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size) {
            Ok(body) => body,
            Err(status) => {
                log(
                    LogLevel::Warn,
                    &format!("keyrealm: reading the request body failed: {status:?}"),
                );
                None
            }
        }
    }

    fn replace_request_body(&mut self, size: usize, body: &[u8]) {
        check(
            "replacing the request body",
            hostcalls::set_buffer(BufferType::HttpRequestBody, 0, size, body),
        );
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        check(
            "sending a local response",
            hostcalls::send_http_response(status, headers.to_vec(), Some(body)),
        );
    }

    fn resume_request(&mut self) {
        check("resuming the request", hostcalls::resume_http_request());
    }

    fn dispatch_call(&mut self, call: &CallRequest<'_>) -> Result<CallHandle, String> {
        hostcalls::dispatch_http_call(
            call.cluster,
            call.headers.to_vec(),
            Some(call.body),
            vec![],
            Duration::from_millis(call.timeout_ms),
        )
        .map(|token| CallHandle {
            token,
            receiver: self.current,
        })
        .map_err(|status| format!("{status:?} (is there a cluster named {}?)", call.cluster))
    }

    fn now_ms(&mut self) -> u64 {
        match hostcalls::get_current_time() {
            Ok(t) => t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            Err(status) => {
                log(
                    LogLevel::Warn,
                    &format!("keyrealm: reading the clock failed: {status:?}"),
                );
                0
            }
        }
    }

    fn log(&mut self, level: Level, message: &str) {
        let level = match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        log(level, message);
    }

    fn set_effective_context(&mut self, context_id: u32) {
        check(
            "switching the effective context",
            hostcalls::set_effective_context(context_id),
        );
    }
}

fn to_wasm(action: Action) -> WasmAction {
    match action {
        Action::Continue => WasmAction::Continue,
        Action::Pause => WasmAction::Pause,
    }
}

/// Reads the answer to an HTTP call from the host and hands it to the worker (whichever context
/// the SDK delivered it to).
fn deliver_call_response(context_id: u32, token_id: u32, num_headers: usize, body_size: usize) {
    let response = call_response(num_headers, body_size);
    let delivered = with_vm(|vm| {
        let mut host = WasmHost {
            current: context_id,
        };
        vm.worker
            .on_call_response(context_id, token_id, response, &mut host);
    });
    if delivered.is_none() {
        log(
            LogLevel::Error,
            "keyrealm: a realm answer arrived while the filter was busy; the look-up ends at its deadline",
        );
    }
}

/// The answer to an HTTP call, read from the host. No headers means the call failed.
fn call_response(num_headers: usize, body_size: usize) -> CallResponse {
    let status = if num_headers == 0 {
        None
    } else {
        match hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status") {
            Ok(s) => s.and_then(|s| s.parse::<u32>().ok()),
            Err(status) => {
                log(
                    LogLevel::Warn,
                    &format!("keyrealm: reading a realm answer's status failed: {status:?}"),
                );
                None
            }
        }
    };
    let body = if body_size > 0 {
        match hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size) {
            Ok(b) => b.unwrap_or_default(),
            Err(status) => {
                log(
                    LogLevel::Warn,
                    &format!("keyrealm: reading a realm answer's body failed: {status:?}"),
                );
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    CallResponse { status, body }
}

struct Root {
    context_id: u32,
    filter: Option<Arc<Filter>>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        deliver_call_response(self.context_id, token_id, num_headers, body_size);
    }

    fn on_done(&mut self) -> bool {
        // The root context goes (its plugin was removed or replaced): calls it received are
        // made again by another root's tick; the counters are flushed now.
        let root = self.context_id;
        with_vm(|vm| {
            vm.worker.on_done(root);
            flush_counters(vm);
        });
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        ) {
            Ok(b) => b.unwrap_or_default(),
            Err(status) => {
                log(
                    LogLevel::Critical,
                    &format!("keyrealm: reading the configuration failed: {status:?}"),
                );
                return false;
            }
        };
        let now = WasmHost {
            current: self.context_id,
        }
        .now_ms();
        let cfg = match config::parse(&bytes, now, &|name| std::env::var(name).ok()) {
            Ok(cfg) => cfg,
            Err(err) => {
                log(
                    LogLevel::Critical,
                    &format!("keyrealm: configuration refused: {err}"),
                );
                return false;
            }
        };
        let made = with_vm(|vm| {
            define_metrics(&mut vm.metrics);
            Filter::new(cfg, &vm.shared)
        });
        match made {
            Some(filter) => self.filter = Some(filter),
            None => return false,
        }
        check(
            "setting the tick period",
            hostcalls::set_tick_period(TICK_PERIOD),
        );
        true
    }

    fn on_tick(&mut self) {
        let root = self.context_id;
        with_vm(|vm| {
            let mut host = WasmHost { current: root };
            vm.worker.on_tick(root, &mut host);
            flush_counters(vm);
        });
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            context_id,
            filter: self.filter.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    context_id: u32,
    filter: Option<Arc<Filter>>,
}

impl Http {
    /// Runs `f` on the worker; without a configuration (or with the worker busy, which does not
    /// happen) the request is refused.
    fn with_worker(
        &mut self,
        f: impl FnOnce(&mut Worker, &Arc<Filter>, u32, &mut WasmHost) -> Action,
    ) -> WasmAction {
        let ctx = self.context_id;
        let mut host = WasmHost { current: ctx };
        let action = match &self.filter {
            Some(filter) => with_vm(|vm| f(&mut vm.worker, filter, ctx, &mut host)),
            None => None,
        };
        match action {
            Some(action) => to_wasm(action),
            None => {
                log(
                    LogLevel::Error,
                    "keyrealm: a request arrived with no usable filter state; answered 500",
                );
                let body = error_body("An unexpected error occurred", None);
                host.send_response(500, &[("content-type", JSON_CONTENT_TYPE)], &body);
                WasmAction::Pause
            }
        }
    }
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        deliver_call_response(self.context_id, token_id, num_headers, body_size);
    }

    fn on_done(&mut self) -> bool {
        let ctx = self.context_id;
        with_vm(|vm| vm.worker.on_done(ctx));
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> WasmAction {
        self.with_worker(|w, filter, ctx, host| {
            w.on_request_headers(filter, ctx, end_of_stream, host)
        })
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> WasmAction {
        self.with_worker(|w, _, ctx, host| w.on_request_body(ctx, body_size, end_of_stream, host))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> WasmAction {
        self.with_worker(|w, _, ctx, host| w.on_request_trailers(ctx, host))
    }
}
