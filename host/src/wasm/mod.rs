//! The proxy-wasm side of the host: the shared engine, per-plugin compiled modules, the state a
//! store carries, and the instances that run on each worker.

pub mod abi;
pub mod hostcalls;
pub mod instance;
pub mod shared;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::{Config, Engine, StoreLimits};

use crate::config::{ClusterConfig, WasmFilterConfig};
use crate::metrics::MetricsRegistry;
use shared::{SharedData, SharedQueues};

/// How often the epoch ticker advances the engine's epoch (the granularity of time budgets).
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The process-wide engine: epoch interruption on, a ticker thread advancing the epoch.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Guests run on the worker's own stack budget; keep it modest and explicit.
        config.max_wasm_stack(1 << 20);
        // One memory per instance, so the memory limit is the instance's limit.
        config.wasm_multi_memory(false);
        let engine = match Engine::new(&config) {
            Ok(engine) => engine,
            Err(e) => {
                tracing::error!("wasmtime engine with the requested settings failed ({e}); using defaults with epochs");
                let mut fallback = Config::new();
                fallback.epoch_interruption(true);
                Engine::new(&fallback).unwrap_or_default()
            }
        };
        let ticker = engine.clone();
        let spawned = std::thread::Builder::new()
            .name("keyrealm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                ticker.increment_epoch();
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the epoch ticker thread: {e}; time budgets are not enforced");
        }
        engine
    })
}

/// proxy-wasm ABI status codes (the values the SDKs compare against).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

/// The limits (see [`crate::limits`]); `VmLimits` is their older name.
pub use crate::limits::Limits as VmLimits;

/// Everything about one wasm filter that all workers share: the compiled module, its
/// configuration, the resolved environment, and the process-wide shared state.
pub struct Plugin {
    pub config: WasmFilterConfig,
    /// The module, compiled once and pre-linked against the ABI.
    pub pre: wasmtime::InstancePre<HostState>,
    pub env: Vec<(String, String)>,
    pub clusters: Arc<std::collections::BTreeMap<String, ClusterConfig>>,
    pub shared_data: Arc<SharedData>,
    pub queues: Arc<SharedQueues>,
    pub metrics: Arc<MetricsRegistry>,
    pub limits: VmLimits,
    /// Where guest log lines go (besides tracing).
    pub log: Arc<crate::log::HostLog>,
    /// The level `proxy_get_log_level` reports (proxy-wasm numbering; Envoy's default: info).
    pub log_level: u32,
}

impl Plugin {
    /// A plugin from module bytes (binary or WAT text) with fresh shared state and no
    /// clusters but `clusters`; for embedding and tests.
    pub fn from_module_bytes(
        config: WasmFilterConfig,
        bytes: &[u8],
        clusters: std::collections::BTreeMap<String, ClusterConfig>,
        limits: VmLimits,
    ) -> Result<Arc<Plugin>, instance::VmError> {
        let module = instance::compile("<bytes>", bytes)?;
        let pre = instance::prelink(&config.name, &module)?;
        let env = guest_env(&config, &[]);
        Ok(Arc::new(Plugin {
            config,
            pre,
            env,
            clusters: Arc::new(clusters),
            shared_data: Arc::default(),
            queues: Arc::default(),
            metrics: Arc::default(),
            limits,
            log: Arc::default(),
            log_level: 2,
        }))
    }

    /// A name for log lines: the plugin name, else the root id.
    pub fn log_name(&self) -> &str {
        self.config.log_name()
    }
}

/// The guest's environment, by Envoy's rules: `host_env_keys` copies the named variables of the
/// host's environment (a value in `overrides` first; absent ones are skipped), `key_values`
/// adds fixed ones.
pub(crate) fn guest_env(
    config: &WasmFilterConfig,
    overrides: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = config
        .host_env_keys
        .iter()
        .filter_map(|k| {
            let given = overrides
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone());
            given
                .or_else(|| std::env::var(k).ok())
                .map(|v| (k.clone(), v))
        })
        .collect();
    env.extend(config.key_values.iter().cloned());
    env
}

/// A guest log line cut at `max` bytes (on a character boundary), with how much was cut.
pub fn cut_line(message: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if message.len() <= max {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}... ({} bytes cut)",
        &message[..end],
        message.len() - end
    ))
}

/// A header map as the ABI sees it: lower-case names (pseudo-headers included), byte values,
/// in order.
pub type HeaderList = Vec<(String, Vec<u8>)>;

/// The first value of `name`, as Envoy answers.
pub fn get_value<'a>(map: &'a HeaderList, name: &str) -> Option<&'a [u8]> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Replaces the value of `name` (the first occurrence keeps its place, others are removed), or
/// appends it.
pub fn replace_value(map: &mut HeaderList, name: &str, value: Vec<u8>) {
    let name = name.to_ascii_lowercase();
    let mut value = Some(value);
    map.retain_mut(|(k, v)| {
        if *k != name {
            return true;
        }
        match value.take() {
            Some(new) => {
                *v = new;
                true
            }
            None => false,
        }
    });
    if let Some(v) = value {
        map.push((name, v));
    }
}

/// A local response requested by the guest with `proxy_send_local_response`.
#[derive(Debug, Clone)]
pub struct LocalResponse {
    pub status: u16,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Facts about the downstream connection and request, for properties.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub source: Option<std::net::SocketAddr>,
    pub destination: Option<std::net::SocketAddr>,
    pub protocol: String,
    pub start_time: Option<std::time::SystemTime>,
}

/// The per-request state of one HTTP context.
#[derive(Debug, Default)]
pub struct StreamState {
    pub request_headers: Option<HeaderList>,
    pub request_body: Option<Vec<u8>>,
    pub request_trailers: Option<HeaderList>,
    pub response_headers: Option<HeaderList>,
    pub response_body: Option<Vec<u8>>,
    pub response_trailers: Option<HeaderList>,
    pub local_response: Option<LocalResponse>,
    /// `proxy_continue_stream(HttpRequest)` was called.
    pub request_continued: bool,
    /// `proxy_continue_stream(HttpResponse)` was called.
    pub response_continued: bool,
    /// `proxy_close_stream` was called: the stream is reset.
    pub closed: bool,
    pub info: RequestInfo,
    /// Values stored with `proxy_set_property`.
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
}

/// An HTTP call the guest asked for; started by the worker after the guest call returns.
#[derive(Debug, Clone)]
pub struct PendingHttpCall {
    pub token: u32,
    /// The context that made the call (its answer is dropped if it is gone).
    pub context_id: u32,
    pub cluster: String,
    pub headers: HeaderList,
    pub body: Vec<u8>,
    pub trailers: HeaderList,
    pub timeout: Duration,
}

impl PendingHttpCall {
    /// The bytes the call holds (its request), counted against the instance's limit.
    pub fn bytes(&self) -> usize {
        let map = |m: &HeaderList| m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        map(&self.headers) + self.body.len() + map(&self.trailers) + self.cluster.len()
    }
}

/// The answer of an HTTP call while `proxy_on_http_call_response` runs.
#[derive(Debug, Clone, Default)]
pub struct CallResponse {
    pub headers: HeaderList,
    pub body: Vec<u8>,
    pub trailers: HeaderList,
}

/// The data a wasmtime `Store` carries for one instance.
pub struct HostState {
    pub plugin: Arc<Plugin>,
    pub limits: StoreLimits,
    pub root_context_id: u32,
    /// The context host calls act on: the context of the current callback, or what the guest
    /// chose with `proxy_set_effective_context`.
    pub effective_context: u32,
    pub streams: HashMap<u32, StreamState>,
    pub pending_calls: Vec<PendingHttpCall>,
    /// HTTP calls recorded and not answered yet (`pending_calls` and those in flight), and the
    /// bytes of their requests.
    pub outstanding_calls: usize,
    pub outstanding_call_bytes: usize,
    pub next_token: u32,
    pub call_response: Option<CallResponse>,
    /// Tick period set with `proxy_set_tick_period_milliseconds` (zero: off).
    pub tick_period: Duration,
    /// Set when the tick period changed, so the worker re-arms its timer.
    pub tick_changed: bool,
    /// Queues registered during the running call, with the registering context; the worker
    /// makes itself their owner when the call returns.
    pub queue_registrations: Vec<(u32, u32)>,
    /// The context of the callback that is running.
    pub call_context: u32,
    /// Set when a call acted on a stream other than `call_context`'s (waiters must look).
    pub other_streams_changed: bool,
    /// Guest log lines at warning level or above, kept while the instance starts (they explain
    /// a refused configuration).
    pub start_errors: Option<Vec<String>>,
    /// This instance's crossing counters ([`hostcalls`]).
    pub hostcalls: Arc<hostcalls::InstanceCounts>,
    /// The running callback's row in [`hostcalls::CALLBACKS`].
    pub callback: usize,
}

impl HostState {
    pub fn new(plugin: Arc<Plugin>) -> Self {
        let limits = wasmtime::StoreLimitsBuilder::new()
            .memory_size(plugin.limits.memory_bytes)
            .table_elements(plugin.limits.table_elements)
            .instances(1)
            .tables(8)
            .memories(1)
            .build();
        let hostcalls = plugin.metrics.hostcalls.register(plugin.log_name());
        HostState {
            hostcalls,
            callback: hostcalls::callback_index("other"),
            plugin,
            limits,
            root_context_id: 0,
            effective_context: 0,
            streams: HashMap::new(),
            pending_calls: Vec::new(),
            outstanding_calls: 0,
            outstanding_call_bytes: 0,
            next_token: 1,
            call_response: None,
            tick_period: Duration::ZERO,
            tick_changed: false,
            queue_registrations: Vec::new(),
            start_errors: Some(Vec::new()),
            call_context: 0,
            other_streams_changed: false,
        }
    }

    /// Logs a guest line (Envoy's shape: `wasm log <name> <root_id>: <message>`).
    pub fn guest_log(&mut self, level: u32, message: &str) {
        let c = &self.plugin.config;
        let line = format!("wasm log {} {}: {message}", c.name, c.root_id);
        self.plugin.log.write(level, "wasm", &line);
        if level >= 3 {
            if let Some(errors) = self.start_errors.as_mut() {
                if errors.len() < 20 {
                    errors.push(message.to_string());
                }
            }
        }
    }

    /// The stream the effective context designates, if it is an HTTP context.
    pub fn stream(&self) -> Option<&StreamState> {
        self.streams.get(&self.effective_context)
    }

    pub fn stream_mut(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.effective_context)
    }

    /// The stream a flow-control call (continue, local response, close) acts on; notes when it
    /// is not the running callback's own stream.
    pub fn controlled_stream(&mut self) -> Option<&mut StreamState> {
        if self.effective_context != self.call_context {
            self.other_streams_changed = true;
        }
        self.streams.get_mut(&self.effective_context)
    }
}
