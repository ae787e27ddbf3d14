//! The proxy-wasm adapter: maps the SDK's callbacks onto [`Worker`] and implements [`Host`] with
//! hostcalls. Compiled for `wasm32` only. Hostcall errors are logged or ignored, never unwrapped.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action as WasmAction, BufferType, ContextType, LogLevel, MapType, MetricType,
};

use crate::config;
use crate::engine::{error_body, Action, Host, Level, Worker};
use crate::metrics::Metric;
use crate::realm::CallResponse;

/// How often the root context checks realm calls (lost answers, deadlines) and body waits.
const TICK_PERIOD: Duration = Duration::from_millis(200);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root {
            context_id,
            worker: None,
            metrics: Rc::new(MetricIds::default()),
        })
    });
}}

/// The ids the host gave to our counters (0 = not defined).
#[derive(Default)]
struct MetricIds([u32; Metric::ALL.len()]);

impl MetricIds {
    fn define() -> MetricIds {
        let mut ids = [0u32; Metric::ALL.len()];
        for m in Metric::ALL {
            match hostcalls::define_metric(MetricType::Counter, m.name()) {
                Ok(id) => ids[m.index()] = id,
                Err(status) => {
                    let _ = hostcalls::log(
                        LogLevel::Warn,
                        &format!("keyrealm: could not define metric {}: {status:?}", m.name()),
                    );
                }
            }
        }
        MetricIds(ids)
    }
}

/// [`Host`] over hostcalls; request operations act on the host's effective context.
struct WasmHost<'a> {
    metrics: &'a MetricIds,
}

impl Host for WasmHost<'_> {
    fn request_headers(&mut self) -> Vec<(String, String)> {
        hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
            .map(|pairs| {
                pairs
                    .into_iter()
                    .map(|(k, v)| match String::from_utf8(v) {
                        Ok(v) => (k, v),
                        Err(e) => (k, String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }

    fn add_request_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value);
    }

    fn remove_request_header(&mut self, name: &str) {
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
    }

    fn request_body(&mut self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
            .ok()
            .flatten()
    }

    fn replace_request_body(&mut self, size: usize, body: &[u8]) {
        let _ = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, size, body);
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        let _ = hostcalls::send_http_response(status, headers.to_vec(), Some(body));
    }

    fn resume_request(&mut self) {
        let _ = hostcalls::resume_http_request();
    }

    fn dispatch_call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, String> {
        hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            Some(body),
            vec![],
            Duration::from_millis(timeout_ms),
        )
        .map_err(|status| format!("{status:?} (is there a cluster named {cluster}?)"))
    }

    fn now_ms(&mut self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn log(&mut self, level: Level, message: &str) {
        let level = match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        let _ = hostcalls::log(level, message);
    }

    fn increment(&mut self, metric: Metric) {
        let id = self.metrics.0[metric.index()];
        if id != 0 {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    fn set_effective_context(&mut self, context_id: u32) {
        let _ = hostcalls::set_effective_context(context_id);
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
fn deliver_call_response(
    worker: Option<&Rc<RefCell<Worker>>>,
    metrics: &MetricIds,
    context_id: u32,
    token_id: u32,
    num_headers: usize,
    body_size: usize,
) {
    let response = call_response(num_headers, body_size);
    if let Some(Ok(mut w)) = worker.map(|w| w.try_borrow_mut()) {
        let mut host = WasmHost { metrics };
        w.on_call_response(context_id, token_id, response, &mut host);
    }
}

/// The answer to an HTTP call, read from the host. No headers means the call failed.
fn call_response(num_headers: usize, body_size: usize) -> CallResponse {
    let status = if num_headers == 0 {
        None
    } else {
        hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u32>().ok())
    };
    let body = if body_size > 0 {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    CallResponse { status, body }
}

struct Root {
    context_id: u32,
    worker: Option<Rc<RefCell<Worker>>>,
    metrics: Rc<MetricIds>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        deliver_call_response(
            self.worker.as_ref(),
            &self.metrics,
            self.context_id,
            token_id,
            num_headers,
            body_size,
        );
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let now = WasmHost {
            metrics: &self.metrics,
        }
        .now_ms();
        let parsed = config::parse(&bytes, now, &|name| std::env::var(name).ok());
        let cfg = match parsed {
            Ok(cfg) => cfg,
            Err(err) => {
                let _ = hostcalls::log(
                    LogLevel::Critical,
                    &format!("keyrealm: configuration refused: {err}"),
                );
                return false;
            }
        };
        if self.metrics.0.iter().all(|id| *id == 0) {
            self.metrics = Rc::new(MetricIds::define());
        }
        // The tick looks after realm calls and requests waiting for a body.
        let needs_tick = cfg.has_realms() || cfg.key_in_body;
        match &self.worker {
            Some(worker) => match worker.try_borrow_mut() {
                Ok(mut w) => w.configure(cfg),
                Err(_) => return false,
            },
            None => self.worker = Some(Rc::new(RefCell::new(Worker::new(cfg)))),
        }
        if needs_tick {
            let _ = hostcalls::set_tick_period(TICK_PERIOD);
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(worker) = &self.worker {
            if let Ok(mut w) = worker.try_borrow_mut() {
                let mut host = WasmHost {
                    metrics: &self.metrics,
                };
                w.on_tick(self.context_id, &mut host);
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            context_id,
            worker: self.worker.clone(),
            metrics: self.metrics.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    context_id: u32,
    worker: Option<Rc<RefCell<Worker>>>,
    metrics: Rc<MetricIds>,
}

impl Http {
    /// Runs `f` on the worker; without one (never configured) the request is refused.
    fn with_worker(
        &mut self,
        f: impl FnOnce(&mut Worker, u32, &mut WasmHost<'_>) -> Action,
    ) -> WasmAction {
        let mut host = WasmHost {
            metrics: &self.metrics,
        };
        let borrowed = self.worker.as_ref().and_then(|w| w.try_borrow_mut().ok());
        match borrowed {
            Some(mut w) => to_wasm(f(&mut w, self.context_id, &mut host)),
            None => {
                let body = error_body("An unexpected error occurred", None);
                host.send_response(
                    500,
                    &[("content-type", "application/json; charset=utf-8")],
                    &body,
                );
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
        deliver_call_response(
            self.worker.as_ref(),
            &self.metrics,
            self.context_id,
            token_id,
            num_headers,
            body_size,
        );
    }

    fn on_done(&mut self) -> bool {
        if let Some(worker) = &self.worker {
            if let Ok(mut w) = worker.try_borrow_mut() {
                w.on_done(self.context_id);
            }
        }
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> WasmAction {
        self.with_worker(|w, ctx, host| w.on_request_headers(ctx, end_of_stream, host))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> WasmAction {
        self.with_worker(|w, ctx, host| w.on_request_body(ctx, body_size, end_of_stream, host))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> WasmAction {
        self.with_worker(|w, ctx, host| w.on_request_trailers(ctx, host))
    }
}
