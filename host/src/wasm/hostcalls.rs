//! Counts of the crossings between the host and a wasm filter, always on: how many times each
//! callback (`proxy_on_request_headers`, ...) ran, and how many times each host function
//! (`proxy_get_header_map_pairs`, ...) was called from each callback. Rendered on the admin
//! address as `keyrealm_host_wasm_callbacks_total` and `keyrealm_host_wasm_hostcalls_total`
//! (see `docs/host.md`); a test counts the host calls of a cached-key request with them
//! (`host/tests/hostcalls.rs`).
//!
//! Cost: every host function is registered through [`CountedLinker::counted`], which adds one
//! increment of a counter owned by the instance (a relaxed load and store of a cell only the
//! instance's thread writes: a plain `add` on x86 and ARM, no read-modify-write atomic, no lock).
//! The admin thread reads the same cells. The registry's lock is taken when an instance starts
//! and when the admin renders, never on a request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::{Caller, Linker, WasmRet, WasmTy};

use super::HostState;

/// The guest entry points the host calls, in the order they are rendered. A callback outside
/// the list (a test calling an export by name) counts as the last one, `other`.
pub const CALLBACKS: &[&str] = &[
    "_initialize",
    "proxy_on_context_create",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_log",
    "proxy_on_done",
    "proxy_on_delete",
    "proxy_on_tick",
    "proxy_on_queue_ready",
    "proxy_on_http_call_response",
    "other",
];

/// The row of `callback` in [`CALLBACKS`].
pub fn callback_index(callback: &str) -> usize {
    CALLBACKS
        .iter()
        .position(|c| *c == callback)
        .unwrap_or(CALLBACKS.len() - 1)
}

/// The name under which the host's calls into the guest allocator are counted (they happen
/// inside host functions that hand data to the guest).
pub const GUEST_ALLOC: &str = "proxy_on_memory_allocate";

/// Host function names, in registration order; a function's index is its column.
static FUNCTIONS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// The column of `name`, registering it on first use.
fn function_index(name: &'static str) -> usize {
    let mut names = FUNCTIONS.lock().unwrap_or_else(|p| p.into_inner());
    match names.iter().position(|n| *n == name) {
        Some(i) => i,
        None => {
            names.push(name);
            names.len() - 1
        }
    }
}

fn function_names() -> Vec<&'static str> {
    FUNCTIONS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Adds one to a cell only one thread writes (see the module comment).
#[inline]
fn bump(cell: &AtomicU64, order: Ordering) {
    cell.store(cell.load(Ordering::Relaxed).wrapping_add(1), order);
}

/// The counters of one instance: written by the thread that runs the instance, read by the
/// admin.
#[derive(Debug)]
pub struct InstanceCounts {
    plugin: String,
    functions: Vec<&'static str>,
    /// Completed calls per callback (`CALLBACKS`).
    callbacks: Box<[AtomicU64]>,
    /// Host function calls, `[callback * functions.len() + function]`.
    calls: Box<[AtomicU64]>,
}

impl InstanceCounts {
    fn new(plugin: &str) -> Self {
        let functions = function_names();
        let cells = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        InstanceCounts {
            plugin: plugin.to_string(),
            callbacks: cells(CALLBACKS.len()),
            calls: cells(CALLBACKS.len() * functions.len()),
            functions,
        }
    }

    /// A host function call (column `function`) made by the running callback (row `callback`).
    #[inline]
    pub fn host_call(&self, callback: usize, function: usize) {
        let width = self.functions.len();
        if function >= width {
            return;
        }
        if let Some(cell) = self.calls.get(callback * width + function) {
            bump(cell, Ordering::Relaxed);
        }
    }

    /// A callback returned. Released after the host calls it made, so a reader that sees the
    /// callback counted sees its host calls too.
    #[inline]
    pub fn callback_done(&self, callback: usize) {
        if let Some(cell) = self.callbacks.get(callback) {
            bump(cell, Ordering::Release);
        }
    }
}

/// Every instance's counters, for the admin; instances that are gone are folded into totals.
#[derive(Debug, Default)]
pub struct HostCallRegistry {
    inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    live: Vec<Arc<InstanceCounts>>,
    /// (plugin, callback) -> count, of instances that are gone.
    callbacks: BTreeMap<(String, &'static str), u64>,
    /// (plugin, callback, function) -> count, of instances that are gone.
    calls: BTreeMap<(String, &'static str, &'static str), u64>,
}

/// A snapshot: (plugin, callback) and (plugin, callback, function) totals, zeros left out.
pub type Snapshot = (
    BTreeMap<(String, &'static str), u64>,
    BTreeMap<(String, &'static str, &'static str), u64>,
);

impl RegistryInner {
    fn fold(into: &mut Snapshot, counts: &InstanceCounts) {
        // Callbacks first (acquire): the host calls of every callback seen are seen.
        for (i, cell) in counts.callbacks.iter().enumerate() {
            let n = cell.load(Ordering::Acquire);
            if n > 0 {
                *into
                    .0
                    .entry((counts.plugin.clone(), CALLBACKS[i]))
                    .or_default() += n;
            }
        }
        let width = counts.functions.len();
        for (i, cell) in counts.calls.iter().enumerate() {
            let n = cell.load(Ordering::Relaxed);
            if n > 0 && width > 0 {
                let key = (
                    counts.plugin.clone(),
                    CALLBACKS[i / width],
                    counts.functions[i % width],
                );
                *into.1.entry(key).or_default() += n;
            }
        }
    }
}

impl HostCallRegistry {
    /// Counters for a new instance of `plugin`. Instances that are gone (only the registry still
    /// holds their counters) are folded into the totals here.
    pub fn register(&self, plugin: &str) -> Arc<InstanceCounts> {
        let counts = Arc::new(InstanceCounts::new(plugin));
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (gone, live): (Vec<_>, Vec<_>) = std::mem::take(&mut inner.live)
            .into_iter()
            .partition(|c| Arc::strong_count(c) == 1);
        inner.live = live;
        let mut totals = (
            std::mem::take(&mut inner.callbacks),
            std::mem::take(&mut inner.calls),
        );
        for c in &gone {
            RegistryInner::fold(&mut totals, c);
        }
        inner.callbacks = totals.0;
        inner.calls = totals.1;
        inner.live.push(counts.clone());
        counts
    }

    /// The totals over all instances, past and present.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut totals = (inner.callbacks.clone(), inner.calls.clone());
        for c in &inner.live {
            RegistryInner::fold(&mut totals, c);
        }
        totals
    }

    /// Prometheus text of [`HostCallRegistry::snapshot`].
    pub fn render_prometheus(&self, out: &mut String) {
        let (callbacks, calls) = self.snapshot();
        let name = "keyrealm_host_wasm_callbacks_total";
        let _ = writeln!(
            out,
            "# HELP {name} Calls into wasm filters, by callback (counted when the callback returns)\n# TYPE {name} counter"
        );
        for ((plugin, callback), n) in &callbacks {
            let _ = writeln!(
                out,
                "{name}{{plugin=\"{}\",callback=\"{callback}\"}} {n}",
                label(plugin)
            );
        }
        let name = "keyrealm_host_wasm_hostcalls_total";
        let _ = writeln!(
            out,
            "# HELP {name} Host functions called by wasm filters, by the callback that called them\n# TYPE {name} counter"
        );
        for ((plugin, callback, function), n) in &calls {
            let _ = writeln!(
                out,
                "{name}{{plugin=\"{}\",callback=\"{callback}\",function=\"{function}\"}} {n}",
                label(plugin)
            );
        }
    }
}

/// A Prometheus label value, escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

static GUEST_ALLOC_INDEX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Gives the guest allocator its column; called where the host functions are linked, so that
/// instances have the column.
pub fn register_guest_alloc() {
    GUEST_ALLOC_INDEX.get_or_init(|| function_index(GUEST_ALLOC));
}

/// Counts a call into the guest allocator made by a host function.
#[inline]
pub fn count_guest_alloc(state: &HostState) {
    if let Some(index) = GUEST_ALLOC_INDEX.get() {
        state.hostcalls.host_call(state.callback, *index);
    }
}

/// Registers host functions with a call counter in front of each (see the module comment).
pub trait CountedLinker {
    /// `Linker::func_wrap`, counted under `name`.
    fn counted<Params, Results>(
        &mut self,
        module: &str,
        name: &'static str,
        func: impl HostFunc<Params, Results>,
    ) -> wasmtime::Result<()>;
}

impl CountedLinker for Linker<HostState> {
    fn counted<Params, Results>(
        &mut self,
        module: &str,
        name: &'static str,
        func: impl HostFunc<Params, Results>,
    ) -> wasmtime::Result<()> {
        func.link(self, module, name)
    }
}

/// A host function of any arity (`Fn(Caller, A1, ..., An) -> R`), linked with a counter.
pub trait HostFunc<Params, Results>: Send + Sync + 'static {
    fn link(
        self,
        linker: &mut Linker<HostState>,
        module: &str,
        name: &'static str,
    ) -> wasmtime::Result<()>;
}

macro_rules! host_func {
    ($($arg:ident)*) => {
        #[allow(non_snake_case)]
        impl<F, $($arg: WasmTy,)* R: WasmRet> HostFunc<($($arg,)*), R> for F
        where
            F: Fn(Caller<'_, HostState>, $($arg),*) -> R + Send + Sync + 'static,
        {
            fn link(
                self,
                linker: &mut Linker<HostState>,
                module: &str,
                name: &'static str,
            ) -> wasmtime::Result<()> {
                let index = function_index(name);
                linker.func_wrap(
                    module,
                    name,
                    move |caller: Caller<'_, HostState>, $($arg: $arg),*| -> R {
                        let state = caller.data();
                        state.hostcalls.host_call(state.callback, index);
                        self(caller, $($arg),*)
                    },
                )?;
                Ok(())
            }
        }
    };
}

host_func!();
host_func!(A1);
host_func!(A1 A2);
host_func!(A1 A2 A3);
host_func!(A1 A2 A3 A4);
host_func!(A1 A2 A3 A4 A5);
host_func!(A1 A2 A3 A4 A5 A6);
host_func!(A1 A2 A3 A4 A5 A6 A7);
host_func!(A1 A2 A3 A4 A5 A6 A7 A8);
host_func!(A1 A2 A3 A4 A5 A6 A7 A8 A9);
host_func!(A1 A2 A3 A4 A5 A6 A7 A8 A9 A10);
host_func!(A1 A2 A3 A4 A5 A6 A7 A8 A9 A10 A11);
host_func!(A1 A2 A3 A4 A5 A6 A7 A8 A9 A10 A11 A12);
