//! One instance of a plugin's module on one worker: its store, its exported callbacks, and the
//! proxy-wasm lifecycle (root context, `on_vm_start`, `on_configure`, HTTP contexts).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::{Engine, InstancePre, Linker, Module, Store, Trap, TypedFunc};

use super::{
    engine, CallResponse, HostState, PendingHttpCall, Plugin, RequestInfo, StreamState, VmLimits,
    EPOCH_TICK,
};

/// Errors of a guest instance. [`VmError::instance_usable`] tells whether the instance may serve
/// more calls; when it may not, the worker replaces it.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot load wasm module {path}: {message}")]
    Load { path: String, message: String },
    #[error("plugin {plugin}: cannot instantiate the module: {message}")]
    Instantiate { plugin: String, message: String },
    #[error("plugin {plugin}: the module does not export proxy_abi_version_0_2_1 or proxy_abi_version_0_2_0")]
    UnsupportedAbi { plugin: String },
    #[error("plugin {plugin}: on_vm_start failed")]
    VmStartFailed { plugin: String },
    #[error("plugin {plugin}: on_configure refused the plugin configuration{}", detail(.log))]
    ConfigureRefused { plugin: String, log: Vec<String> },
    #[error("plugin {plugin}: the guest trapped in {call}: {message}")]
    Trap {
        plugin: String,
        call: &'static str,
        message: String,
    },
    #[error("plugin {plugin}: {call} ran past its time budget of {budget_ms} ms")]
    Timeout {
        plugin: String,
        call: &'static str,
        budget_ms: u128,
    },
    #[error("plugin {plugin}: the instance failed earlier and is waiting to be replaced")]
    Broken { plugin: String },
}

impl VmError {
    /// Whether the instance that returned this error can still be used.
    pub fn instance_usable(&self) -> bool {
        false
    }
}

fn detail(log: &[String]) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(": {}", log.join("; "))
    }
}

/// What a request/response callback answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// The linker with every ABI function, built once.
pub fn linker() -> Result<&'static Linker<HostState>, String> {
    static LINKER: OnceLock<Result<Linker<HostState>, String>> = OnceLock::new();
    LINKER
        .get_or_init(|| {
            let mut linker = Linker::new(engine());
            super::abi::add_to_linker(&mut linker).map_err(|e| e.to_string())?;
            Ok(linker)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Compiles a module (once per plugin; instances share the compiled code).
///
/// Compiled modules are kept per process (the last few, by content), so that a process that
/// starts several hosts with the same module (tests) compiles it once.
pub fn compile(path: &str, bytes: &[u8]) -> Result<Module, VmError> {
    static CACHE: std::sync::Mutex<Vec<(Vec<u8>, Module)>> = std::sync::Mutex::new(Vec::new());
    const KEPT: usize = 8;
    {
        let cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, m)) = cache.iter().find(|(b, _)| b.as_slice() == bytes) {
            return Ok(m.clone());
        }
    }
    let module = Module::new(engine(), bytes).map_err(|e| VmError::Load {
        path: path.to_string(),
        message: format!("{e:#}"),
    })?;
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() == KEPT {
        cache.remove(0);
    }
    cache.push((bytes.to_vec(), module.clone()));
    Ok(module)
}

/// Pre-links a module: checks every import is provided.
pub fn prelink(plugin_name: &str, module: &Module) -> Result<InstancePre<HostState>, VmError> {
    let err = |message: String| VmError::Instantiate {
        plugin: plugin_name.to_string(),
        message,
    };
    let linker = linker().map_err(err)?;
    linker
        .instantiate_pre(module)
        .map_err(|e| err(format!("{e:#}")))
}

type Cb1 = TypedFunc<i32, ()>;
type Cb2 = TypedFunc<(i32, i32), i32>;
type Cb3 = TypedFunc<(i32, i32, i32), i32>;
type Cb5 = TypedFunc<(i32, i32, i32, i32, i32), ()>;

struct Exports {
    on_context_create: TypedFunc<(i32, i32), ()>,
    on_vm_start: Option<Cb2>,
    on_configure: Option<Cb2>,
    on_request_headers: Option<Cb3>,
    on_request_body: Option<Cb3>,
    on_response_headers: Option<Cb3>,
    on_response_body: Option<Cb3>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_log: Option<Cb1>,
    on_delete: Option<Cb1>,
    on_tick: Option<Cb1>,
    on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    on_http_call_response: Option<Cb5>,
}

/// A live instance.
pub struct VmInstance {
    store: Store<HostState>,
    instance: wasmtime::Instance,
    exports: Exports,
    next_context_id: u32,
    broken: bool,
}

impl VmInstance {
    /// Instantiates the plugin's module and runs start-up: `_initialize`, the root context,
    /// `on_vm_start` and `on_configure` (a refusal is an error).
    pub fn start(plugin: Arc<Plugin>, pre: &InstancePre<HostState>) -> Result<Self, VmError> {
        let name = plugin.log_name().to_string();
        let limits = plugin.limits;
        let mut store = Store::new(engine(), HostState::new(plugin.clone()));
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(limits.start_budget));
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| classify(&name, "instantiate", limits.start_budget, e))?;
        if instance
            .get_func(&mut store, "proxy_abi_version_0_2_1")
            .is_none()
            && instance
                .get_func(&mut store, "proxy_abi_version_0_2_0")
                .is_none()
        {
            return Err(VmError::UnsupportedAbi { plugin: name });
        }
        let inst_err = |message: String| VmError::Instantiate {
            plugin: name.clone(),
            message,
        };
        macro_rules! opt {
            ($n:literal) => {
                match instance.get_func(&mut store, $n) {
                    Some(f) => Some(
                        f.typed(&store)
                            .map_err(|e| inst_err(format!("{}: {e}", $n)))?,
                    ),
                    None => None,
                }
            };
        }
        let on_context_create = instance
            .get_typed_func::<(i32, i32), ()>(&mut store, "proxy_on_context_create")
            .map_err(|e| inst_err(format!("proxy_on_context_create: {e}")))?;
        let exports = Exports {
            on_context_create,
            on_vm_start: opt!("proxy_on_vm_start"),
            on_configure: opt!("proxy_on_configure"),
            on_request_headers: opt!("proxy_on_request_headers"),
            on_request_body: opt!("proxy_on_request_body"),
            on_response_headers: opt!("proxy_on_response_headers"),
            on_response_body: opt!("proxy_on_response_body"),
            on_done: opt!("proxy_on_done"),
            on_log: opt!("proxy_on_log"),
            on_delete: opt!("proxy_on_delete"),
            on_tick: opt!("proxy_on_tick"),
            on_queue_ready: opt!("proxy_on_queue_ready"),
            on_http_call_response: opt!("proxy_on_http_call_response"),
        };
        let init: Option<TypedFunc<(), ()>> = match opt!("_initialize") {
            Some(f) => Some(f),
            None => opt!("_start"),
        };
        let mut vm = VmInstance {
            store,
            instance,
            exports,
            next_context_id: 1,
            broken: false,
        };
        if let Some(init) = init {
            vm.run("_initialize", 0, limits.start_budget, |s| init.call(s, ()))?;
        }
        let root = vm.next_id();
        vm.store.data_mut().root_context_id = root;
        let create = vm.exports.on_context_create.clone();
        vm.run("proxy_on_context_create", root, limits.start_budget, |s| {
            create.call(s, (root as i32, 0))
        })?;
        let vm_config_len = vm.store.data().plugin.config.vm_configuration.len() as i32;
        if let Some(f) = vm.exports.on_vm_start.clone() {
            let ok = vm.run("proxy_on_vm_start", root, limits.start_budget, |s| {
                f.call(s, (root as i32, vm_config_len))
            })?;
            if ok == 0 {
                return Err(VmError::VmStartFailed { plugin: name });
            }
        }
        let config_len = vm.store.data().plugin.config.configuration.len() as i32;
        if let Some(f) = vm.exports.on_configure.clone() {
            let ok = vm.run("proxy_on_configure", root, limits.start_budget, |s| {
                f.call(s, (root as i32, config_len))
            })?;
            if ok == 0 {
                let log = vm.store.data_mut().start_errors.take().unwrap_or_default();
                return Err(VmError::ConfigureRefused { plugin: name, log });
            }
        }
        vm.store.data_mut().start_errors = None;
        Ok(vm)
    }

    /// The next context id: never 0, never one a live context has (ids wrap after 2^32).
    fn next_id(&mut self) -> u32 {
        loop {
            let id = self.next_context_id;
            self.next_context_id = self.next_context_id.wrapping_add(1).max(1);
            let state = self.store.data();
            if id != state.root_context_id && !state.streams.contains_key(&id) {
                return id;
            }
        }
    }

    /// Sets the next context id (for tests of id reuse).
    pub fn set_next_context_id(&mut self, id: u32) {
        self.next_context_id = id.max(1);
    }

    /// An HTTP call of this instance was answered or dropped: it no longer counts against the
    /// instance's limits.
    pub fn http_call_done(&mut self, bytes: usize) {
        let state = self.store.data_mut();
        state.outstanding_calls = state.outstanding_calls.saturating_sub(1);
        state.outstanding_call_bytes = state.outstanding_call_bytes.saturating_sub(bytes);
    }

    fn plugin_name(&self) -> String {
        self.store.data().plugin.log_name().to_string()
    }

    fn limits(&self) -> VmLimits {
        self.store.data().plugin.limits
    }

    /// Runs one guest call with `context` as the effective context and a time budget.
    fn run<R>(
        &mut self,
        call: &'static str,
        context: u32,
        budget: Duration,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, VmError> {
        if self.broken {
            return Err(VmError::Broken {
                plugin: self.plugin_name(),
            });
        }
        let callback = super::hostcalls::callback_index(call);
        let state = self.store.data_mut();
        state.effective_context = context;
        state.call_context = context;
        state.callback = callback;
        self.store.set_epoch_deadline(ticks(budget));
        let result = f(&mut self.store);
        let state = self.store.data_mut();
        state.hostcalls.callback_done(callback);
        state.effective_context = state.root_context_id;
        result.map_err(|e| {
            self.broken = true;
            classify(&self.plugin_name(), call, budget, e)
        })
    }

    fn budget(&self) -> Duration {
        self.limits().call_budget
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn root_context_id(&self) -> u32 {
        self.store.data().root_context_id
    }

    /// Creates an HTTP context (`proxy_on_context_create(id, root)`).
    pub fn create_http_context(&mut self, info: RequestInfo) -> Result<u32, VmError> {
        let id = self.next_id();
        let root = self.root_context_id();
        self.store.data_mut().streams.insert(
            id,
            StreamState {
                info,
                ..StreamState::default()
            },
        );
        let f = self.exports.on_context_create.clone();
        let budget = self.budget();
        self.run("proxy_on_context_create", id, budget, |s| {
            f.call(s, (id as i32, root as i32))
        })?;
        Ok(id)
    }

    pub fn stream(&self, id: u32) -> Option<&StreamState> {
        self.store.data().streams.get(&id)
    }

    pub fn stream_mut(&mut self, id: u32) -> Option<&mut StreamState> {
        self.store.data_mut().streams.get_mut(&id)
    }

    fn action_call(
        &mut self,
        call: &'static str,
        f: Option<Cb3>,
        id: u32,
        a: usize,
        eos: bool,
    ) -> Result<Action, VmError> {
        let Some(f) = f else {
            return Ok(Action::Continue);
        };
        let budget = self.budget();
        let r = self.run(call, id, budget, |s| {
            f.call(s, (id as i32, a as i32, i32::from(eos)))
        })?;
        Ok(if r == 1 {
            Action::Pause
        } else {
            Action::Continue
        })
    }

    pub fn on_request_headers(
        &mut self,
        id: u32,
        count: usize,
        eos: bool,
    ) -> Result<Action, VmError> {
        let f = self.exports.on_request_headers.clone();
        self.action_call("proxy_on_request_headers", f, id, count, eos)
    }

    pub fn on_request_body(&mut self, id: u32, size: usize, eos: bool) -> Result<Action, VmError> {
        let f = self.exports.on_request_body.clone();
        self.action_call("proxy_on_request_body", f, id, size, eos)
    }

    pub fn on_response_headers(
        &mut self,
        id: u32,
        count: usize,
        eos: bool,
    ) -> Result<Action, VmError> {
        let f = self.exports.on_response_headers.clone();
        self.action_call("proxy_on_response_headers", f, id, count, eos)
    }

    pub fn on_response_body(&mut self, id: u32, size: usize, eos: bool) -> Result<Action, VmError> {
        let f = self.exports.on_response_body.clone();
        self.action_call("proxy_on_response_body", f, id, size, eos)
    }

    /// Ends an HTTP context as Envoy does: `on_log`, `on_done`, `on_delete`, then forgets its
    /// state.
    pub fn finish_http_context(&mut self, id: u32) -> Result<(), VmError> {
        if !self.store.data().streams.contains_key(&id) {
            return Ok(());
        }
        let budget = self.budget();
        let result = (|| {
            if let Some(f) = self.exports.on_log.clone() {
                self.run("proxy_on_log", id, budget, |s| f.call(s, id as i32))?;
            }
            if let Some(f) = self.exports.on_done.clone() {
                self.run("proxy_on_done", id, budget, |s| f.call(s, id as i32))?;
            }
            if let Some(f) = self.exports.on_delete.clone() {
                self.run("proxy_on_delete", id, budget, |s| f.call(s, id as i32))?;
            }
            Ok(())
        })();
        let state = self.store.data_mut();
        state.streams.remove(&id);
        // Calls recorded by the context and not started are dropped (nobody would hear them).
        let (dropped, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut state.pending_calls)
            .into_iter()
            .partition(|c| c.context_id == id);
        state.pending_calls = kept;
        for call in dropped {
            self.http_call_done(call.bytes());
        }
        result
    }

    /// `proxy_on_tick` on the root context.
    pub fn on_tick(&mut self) -> Result<(), VmError> {
        let Some(f) = self.exports.on_tick.clone() else {
            return Ok(());
        };
        let root = self.root_context_id();
        let budget = self.budget();
        self.run("proxy_on_tick", root, budget, |s| f.call(s, root as i32))
    }

    /// Whether a context (root or HTTP) is still alive.
    pub fn context_alive(&self, id: u32) -> bool {
        id == self.root_context_id() || self.store.data().streams.contains_key(&id)
    }

    /// Delivers an HTTP call's answer on the root context; `None` is a failed call (no headers).
    pub fn on_http_call_response(
        &mut self,
        token: u32,
        response: Option<CallResponse>,
    ) -> Result<(), VmError> {
        let Some(f) = self.exports.on_http_call_response.clone() else {
            return Ok(());
        };
        let response = response.unwrap_or_default();
        let (h, b, t) = (
            response.headers.len(),
            response.body.len(),
            response.trailers.len(),
        );
        self.store.data_mut().call_response = Some(response);
        let root = self.root_context_id();
        let budget = self.budget();
        let result = self.run("proxy_on_http_call_response", root, budget, |s| {
            f.call(s, (root as i32, token as i32, h as i32, b as i32, t as i32))
        });
        self.store.data_mut().call_response = None;
        result
    }

    /// The HTTP calls recorded since the last time this was asked.
    pub fn take_pending_calls(&mut self) -> Vec<PendingHttpCall> {
        std::mem::take(&mut self.store.data_mut().pending_calls)
    }

    /// Whether the guest continued, answered or reset a stream other than the one whose
    /// callback ran (through `proxy_set_effective_context`) since the last time this was asked.
    pub fn take_other_streams_changed(&mut self) -> bool {
        std::mem::take(&mut self.store.data_mut().other_streams_changed)
    }

    /// The new tick period, if the guest changed it.
    /// The queues registered since the last look, with the context that registered each.
    pub fn take_queue_registrations(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.store.data_mut().queue_registrations)
    }

    /// `proxy_on_queue_ready` on the context that registered the queue, if it still lives.
    pub fn on_queue_ready(&mut self, context_id: u32, queue_id: u32) -> Result<(), VmError> {
        let Some(f) = self.exports.on_queue_ready.clone() else {
            return Ok(());
        };
        if !self.context_alive(context_id) {
            return Ok(());
        }
        let budget = self.budget();
        self.run("proxy_on_queue_ready", context_id, budget, |s| {
            f.call(s, (context_id as i32, queue_id as i32))
        })
    }

    pub fn take_tick_change(&mut self) -> Option<Duration> {
        let state = self.store.data_mut();
        if state.tick_changed {
            state.tick_changed = false;
            Some(state.tick_period)
        } else {
            None
        }
    }

    /// The engine (for tests).
    pub fn engine(&self) -> &Engine {
        self.store.engine()
    }

    /// Calls any exported function with i32 arguments, with `context` as the effective
    /// context and the call budget; returns its i32 results. For tests and diagnostics.
    pub fn call_export(
        &mut self,
        name: &str,
        context: u32,
        args: &[i32],
    ) -> Result<Vec<i32>, VmError> {
        let plugin = self.plugin_name();
        let Some(export) = self.instance_func(name) else {
            return Err(VmError::Instantiate {
                plugin,
                message: format!("no export {name}"),
            });
        };
        let params: Vec<wasmtime::Val> = args.iter().map(|a| wasmtime::Val::I32(*a)).collect();
        let ty = export.ty(&self.store);
        if ty.params().len() != params.len() {
            return Err(VmError::Instantiate {
                plugin,
                message: format!("{name} takes {} arguments", ty.params().len()),
            });
        }
        let n = ty.results().len();
        let mut results = vec![wasmtime::Val::I32(0); n];
        let budget = self.budget();
        self.run("export", context, budget, |s| {
            export.call(s, &params, &mut results)
        })?;
        Ok(results.iter().filter_map(wasmtime::Val::i32).collect())
    }

    fn instance_func(&mut self, name: &str) -> Option<wasmtime::Func> {
        self.instance.get_func(&mut self.store, name)
    }

    /// A copy of guest memory (`len` bytes at `ptr`), if in bounds. For tests and diagnostics.
    pub fn read_memory(&mut self, ptr: u32, len: u32) -> Option<Vec<u8>> {
        let mem = self.instance.get_memory(&mut self.store, "memory")?;
        let start = ptr as usize;
        mem.data(&self.store)
            .get(start..start.checked_add(len as usize)?)
            .map(<[u8]>::to_vec)
    }

    /// Current size of the guest's linear memory in bytes.
    pub fn memory_size(&mut self) -> usize {
        match self.instance.get_memory(&mut self.store, "memory") {
            Some(m) => m.data_size(&self.store),
            None => 0,
        }
    }

    /// The HTTP contexts alive in this instance.
    pub fn http_context_count(&self) -> usize {
        self.store.data().streams.len()
    }
}

fn ticks(budget: Duration) -> u64 {
    (budget.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64 + 1
}

fn classify(plugin: &str, call: &'static str, budget: Duration, e: wasmtime::Error) -> VmError {
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        VmError::Timeout {
            plugin: plugin.to_string(),
            call,
            budget_ms: budget.as_millis(),
        }
    } else {
        VmError::Trap {
            plugin: plugin.to_string(),
            call,
            message: format!("{e:#}"),
        }
    }
}
