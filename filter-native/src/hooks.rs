//! What each hook does, in safe Rust: the engine ([`keyrealm_filter::engine::Worker`]) driven
//! through [`NativeHost`], an implementation of the engine's [`Host`] on the ABI handles.
//!
//! Threads: Envoy creates filter configurations on the main thread and runs every hook of an
//! HTTP stream on that stream's worker thread. One [`SharedState`] per process (the realm answer
//! cache, negative entries, look-ups in flight) is shared by every worker thread and every
//! configuration (so a configuration change keeps it); a configuration is an engine
//! [`Filter`] (`Send + Sync`), shared by all workers; each worker thread has its own engine
//! [`Worker`] ([`ThreadState`], thread-local) for its requests. A request of one worker that
//! waits for a look-up started on another is woken through Envoy's scheduler ([`FilterWaker`]).
//!
//! Re-entrancy: a callback into Envoy may call back into the module synchronously (a local reply
//! runs the response hooks and `on_local_reply`; resuming a request may end its stream). Those
//! hooks touch no state here; a hook that finds the state busy answers 500 instead of panicking.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyrealm_filter::config;
use keyrealm_filter::engine::lookups::Waker;
use keyrealm_filter::engine::{
    error_body, Action, CallHandle, CallRequest, Filter, Headers, Host, Level as EngineLevel,
    SharedState, Worker, PROCESS_SHARDS,
};
use keyrealm_filter::metrics::Metric;
use keyrealm_filter::realm::CallResponse;

use crate::abi::{
    self, CalloutAnswer, ConfigHandle, FilterHandle, Level, Scheduler, BODY_CONTINUE,
    BODY_STOP_AND_BUFFER, HEADERS_CONTINUE, HEADERS_STOP_ITERATION, TRAILERS_CONTINUE,
    TRAILERS_STOP,
};

/// The `filter_name` this module answers to.
pub const FILTER_NAME: &str = "keyrealm";

/// How often paused requests are looked after (realm calls whose receiver went away, requests
/// waiting for a body that does not come): the engine's tick, as the wasm form's root context.
const TICK_PERIOD: Duration = Duration::from_millis(200);

/// Scheduler event: run the engine's tick on this thread.
const EVENT_TICK: u64 = 1;
/// Scheduler event: answers for this thread's requests were posted by another worker.
const EVENT_MAIL: u64 = 2;

/// The process's one shared state (cache, negative entries, look-ups in flight).
fn shared_state() -> &'static Arc<SharedState> {
    static SHARED: OnceLock<Arc<SharedState>> = OnceLock::new();
    SHARED.get_or_init(|| SharedState::new(PROCESS_SHARDS))
}

/// A filter configuration, shared by every worker.
pub struct FilterConfig {
    shared: Arc<ConfigShared>,
}

struct ConfigShared {
    filter: Arc<Filter>,
    /// Counter ids, by [`Metric::index`] (`None`: Envoy refused to define it).
    counters: [Option<usize>; Metric::ALL.len()],
}

/// The module's object for one HTTP stream.
pub struct StreamFilter {
    ctx: u32,
    handle: FilterHandle,
    config: Arc<ConfigShared>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn program_init() {}

/// Validates the configuration (the same JSON as the wasm filter's) and defines the counters.
pub fn config_new(handle: &ConfigHandle, name: &[u8], json: &[u8]) -> Option<FilterConfig> {
    if name != FILTER_NAME.as_bytes() {
        abi::log(
            Level::Critical,
            &format!(
                "keyrealm: configuration refused: filter_name: must be {FILTER_NAME:?}, got {:?}",
                String::from_utf8_lossy(name)
            ),
        );
        return None;
    }
    let parsed = match config::parse(json, now_ms(), &|name| std::env::var(name).ok()) {
        Ok(parsed) => parsed,
        Err(err) => {
            abi::log(
                Level::Critical,
                &format!("keyrealm: configuration refused: {err}"),
            );
            return None;
        }
    };
    let mut counters = [None; Metric::ALL.len()];
    for metric in Metric::ALL {
        counters[metric.index()] = handle.define_counter(metric.name());
        if counters[metric.index()].is_none() {
            abi::log(
                Level::Warn,
                &format!("keyrealm: could not define counter {}", metric.name()),
            );
        }
    }
    Some(FilterConfig {
        shared: Arc::new(ConfigShared {
            filter: Filter::new(parsed, shared_state()),
            counters,
        }),
    })
}

pub fn config_destroy(config: FilterConfig) {
    drop(config);
}

// ---------------------------------------------------------------------------------------------
// Per-thread state
// ---------------------------------------------------------------------------------------------

/// A stream known to this thread.
struct Slot {
    handle: FilterHandle,
    /// Callouts this stream started: (Envoy's callout id, the engine's token).
    callouts: Vec<(u64, u32)>,
    /// Registered with the ticker (it paused once).
    ticking: bool,
    /// Its scheduler, shared with the wakers given to the engine; emptied when it ends.
    waker: Option<Arc<FilterWaker>>,
}

struct ThreadState {
    worker: Worker,
    slots: HashMap<u32, Slot>,
    next_ctx: u32,
    next_token: u32,
}

thread_local! {
    static STATE: RefCell<ThreadState> = RefCell::new(ThreadState {
        worker: Worker::new(shared_state().clone()),
        slots: HashMap::new(),
        next_ctx: 0,
        next_token: 0,
    });
}

impl ThreadState {
    fn new_ctx(&mut self) -> u32 {
        loop {
            self.next_ctx = self.next_ctx.wrapping_add(1);
            if self.next_ctx != 0 && !self.slots.contains_key(&self.next_ctx) {
                return self.next_ctx;
            }
        }
    }
}

/// Wakes a request of this thread from another (an answer was posted to its mailbox): commits
/// [`EVENT_MAIL`] to its filter's scheduler, which Envoy runs on the request's worker thread.
struct FilterWaker {
    scheduler: Mutex<Option<Scheduler>>,
}

impl Waker for FilterWaker {
    fn wake(&self) {
        if let Ok(scheduler) = self.scheduler.lock() {
            if let Some(scheduler) = scheduler.as_ref() {
                scheduler.commit(EVENT_MAIL);
            }
        }
    }
}

/// Runs `f` on this thread's engine with a host acting on `stream`, then adds the engine's
/// counts to Envoy's counters. `None`: the state is busy (re-entered).
fn with_engine<R>(
    stream: &StreamFilter,
    in_body_hook: bool,
    f: impl FnOnce(&mut Worker, &mut NativeHost<'_>) -> R,
) -> Option<R> {
    STATE.with(|cell| {
        let mut state = cell.try_borrow_mut().ok()?;
        let ThreadState {
            worker,
            slots,
            next_token,
            ..
        } = &mut *state;
        let mut host = NativeHost {
            slots,
            current: stream.ctx,
            next_token,
            body_hook: in_body_hook.then_some(stream.ctx),
        };
        let result = f(worker, &mut host);
        if worker.has_counts() {
            // Counted by the engine, added here through the stream Envoy called in for (every
            // configuration defines the same counters).
            worker.drain_counters(|metric, n| {
                if let Some(id) = stream.config.counters[metric.index()] {
                    stream.handle.increment_counter(id, n);
                }
            });
        }
        Some(result)
    })
}

// ---------------------------------------------------------------------------------------------
// Hooks
// ---------------------------------------------------------------------------------------------

pub fn filter_new(config: &FilterConfig, handle: FilterHandle) -> StreamFilter {
    let ctx = STATE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut state) => {
            let ctx = state.new_ctx();
            state.slots.insert(
                ctx,
                Slot {
                    handle,
                    callouts: Vec::new(),
                    ticking: false,
                    waker: None,
                },
            );
            ctx
        }
        Err(_) => 0, // no slot: its hooks answer 500
    });
    StreamFilter {
        ctx,
        handle,
        config: config.shared.clone(),
    }
}

pub fn filter_destroy(stream: StreamFilter) {
    let ticking = STATE
        .with(|cell| {
            let mut state = cell.try_borrow_mut().ok()?;
            state.worker.on_done(stream.ctx);
            let slot = state.slots.remove(&stream.ctx)?;
            if let Some(waker) = slot.waker {
                // Deleted here, on the filter's thread, and never committed to afterwards.
                if let Ok(mut scheduler) = waker.scheduler.lock() {
                    scheduler.take();
                }
            }
            Some(slot.ticking)
        })
        .unwrap_or(false);
    if ticking {
        ticker().remove(stream.ctx);
    }
}

/// A panic was caught or the state was unusable: a 500 with the filter's error body.
pub fn internal_error(handle: FilterHandle) {
    let body = error_body("An unexpected error occurred", None);
    handle.send_response(
        500,
        &[("content-type", "application/json; charset=utf-8")],
        &body,
    );
}

/// After a hook paused `stream`: let the ticker look after it.
fn paused(stream: &StreamFilter) {
    let register = STATE.with(|cell| {
        let Ok(mut state) = cell.try_borrow_mut() else {
            return false;
        };
        match state.slots.get_mut(&stream.ctx) {
            Some(slot) if !slot.ticking => {
                slot.ticking = true;
                true
            }
            _ => false,
        }
    });
    if register {
        if let Some(scheduler) = stream.handle.scheduler() {
            ticker().add(stream.ctx, scheduler);
        }
    }
}

pub fn request_headers(stream: &StreamFilter, end_of_stream: bool) -> u32 {
    match with_engine(stream, false, |w, host| {
        w.on_request_headers(&stream.config.filter, stream.ctx, end_of_stream, host)
    }) {
        Some(Action::Continue) => HEADERS_CONTINUE,
        Some(Action::Pause) => {
            paused(stream);
            HEADERS_STOP_ITERATION
        }
        None => {
            internal_error(stream.handle);
            HEADERS_STOP_ITERATION
        }
    }
}

pub fn request_body(stream: &StreamFilter, end_of_stream: bool) -> u32 {
    let size = stream.handle.request_body_size(true);
    match with_engine(stream, true, |w, host| {
        w.on_request_body(stream.ctx, size, end_of_stream, host)
    }) {
        Some(Action::Continue) => BODY_CONTINUE,
        Some(Action::Pause) => {
            paused(stream);
            BODY_STOP_AND_BUFFER
        }
        None => {
            internal_error(stream.handle);
            BODY_STOP_AND_BUFFER
        }
    }
}

pub fn request_trailers(stream: &StreamFilter) -> u32 {
    match with_engine(stream, false, |w, host| {
        w.on_request_trailers(stream.ctx, host)
    }) {
        Some(Action::Continue) => TRAILERS_CONTINUE,
        Some(Action::Pause) => {
            paused(stream);
            TRAILERS_STOP
        }
        None => {
            internal_error(stream.handle);
            TRAILERS_STOP
        }
    }
}

pub fn callout_done(stream: &StreamFilter, callout_id: u64, answer: CalloutAnswer) {
    let response = CallResponse {
        status: answer.status,
        body: answer.body,
    };
    let handled = with_engine(stream, false, |w, host| {
        let token = host.slots.get_mut(&stream.ctx).and_then(|slot| {
            let at = slot.callouts.iter().position(|(id, _)| *id == callout_id)?;
            Some(slot.callouts.swap_remove(at).1)
        });
        if let Some(token) = token {
            w.on_call_response(stream.ctx, token, response, host);
        }
    });
    if handled.is_none() {
        abi::log(
            Level::Error,
            "keyrealm: a realm answer arrived while the filter state was busy; dropped",
        );
    }
}

pub fn scheduled(stream: &StreamFilter, event_id: u64) {
    let _ = with_engine(stream, false, |w, host| match event_id {
        EVENT_TICK => w.on_tick(stream.ctx, host),
        EVENT_MAIL => w.on_mail(stream.ctx, host),
        _ => {}
    });
}

// ---------------------------------------------------------------------------------------------
// The engine's Host over the ABI
// ---------------------------------------------------------------------------------------------

/// [`Host`] for the streams of one worker thread; request operations act on `current` (the
/// engine's effective context).
struct NativeHost<'a> {
    slots: &'a mut HashMap<u32, Slot>,
    current: u32,
    next_token: &'a mut u32,
    /// The stream whose body hook is running (its received chunk is readable).
    body_hook: Option<u32>,
}

impl NativeHost<'_> {
    fn handle(&self) -> Option<FilterHandle> {
        self.slots.get(&self.current).map(|s| s.handle)
    }

    fn in_body_hook(&self) -> bool {
        self.body_hook == Some(self.current)
    }
}

impl Host for NativeHost<'_> {
    fn request_headers(&mut self) -> Headers {
        let mut headers = Headers::new();
        if let Some(h) = self.handle() {
            h.request_headers(|name, value| headers.push(name, value));
        }
        headers
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        if let Some(h) = self.handle() {
            h.set_request_header(name, value);
        }
    }

    fn add_request_header(&mut self, name: &str, value: &str) {
        if let Some(h) = self.handle() {
            h.add_request_header(name, value);
        }
    }

    fn remove_request_header(&mut self, name: &str) {
        if let Some(h) = self.handle() {
            h.remove_request_header(name);
        }
    }

    fn request_body(&mut self, size: usize) -> Option<Vec<u8>> {
        let in_body_hook = self.in_body_hook();
        let mut body = self.handle()?.request_body(in_body_hook);
        body.truncate(size);
        Some(body)
    }

    fn replace_request_body(&mut self, _size: usize, body: &[u8]) {
        let in_body_hook = self.in_body_hook();
        if let Some(h) = self.handle() {
            h.replace_request_body(in_body_hook, body);
        }
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        if let Some(h) = self.handle() {
            h.send_response(status, headers, body);
        }
    }

    fn resume_request(&mut self) {
        if let Some(h) = self.handle() {
            h.continue_decoding();
        }
    }

    fn dispatch_call(&mut self, call: &CallRequest<'_>) -> Result<CallHandle, String> {
        let Some(slot) = self.slots.get_mut(&self.current) else {
            return Err("the request that would make the call is gone".to_string());
        };
        let cluster = call.cluster;
        let id = slot
            .handle
            .http_callout(cluster, call.headers, call.body, call.timeout_ms)
            .map_err(|e| format!("{e} (is there a cluster named {cluster}?)"))?;
        *self.next_token = self.next_token.wrapping_add(1);
        let token = *self.next_token;
        slot.callouts.push((id, token));
        Ok(CallHandle {
            token,
            receiver: self.current,
        })
    }

    fn now_ms(&mut self) -> u64 {
        now_ms()
    }

    fn log(&mut self, level: EngineLevel, message: &str) {
        let level = match level {
            EngineLevel::Debug => Level::Debug,
            EngineLevel::Info => Level::Info,
            EngineLevel::Warn => Level::Warn,
            EngineLevel::Error => Level::Error,
        };
        if abi::log_enabled(level) {
            abi::log(level, message);
        }
    }

    fn set_effective_context(&mut self, context_id: u32) {
        self.current = context_id;
    }

    fn waker(&mut self) -> Option<Arc<dyn Waker>> {
        let slot = self.slots.get_mut(&self.current)?;
        if slot.waker.is_none() {
            slot.waker = Some(Arc::new(FilterWaker {
                scheduler: Mutex::new(slot.handle.scheduler()),
            }));
        }
        slot.waker.clone().map(|w| w as Arc<dyn Waker>)
    }
}

// ---------------------------------------------------------------------------------------------
// The ticker
// ---------------------------------------------------------------------------------------------

/// Paused streams' schedulers. A module thread wakes one stream per worker thread every
/// [`TICK_PERIOD`]; that stream's `scheduled` hook runs the engine's tick
/// on its own thread. Only paused requests are registered, so the request path of a cached key
/// never takes this lock.
struct Ticker {
    targets: Mutex<Vec<TickTarget>>,
}

struct TickTarget {
    thread: ThreadId,
    ctx: u32,
    scheduler: Scheduler,
}

fn ticker() -> &'static Ticker {
    static TICKER: OnceLock<&'static Ticker> = OnceLock::new();
    TICKER.get_or_init(|| {
        let ticker: &'static Ticker = Box::leak(Box::new(Ticker {
            targets: Mutex::new(Vec::new()),
        }));
        let spawned = std::thread::Builder::new()
            .name("keyrealm-tick".to_string())
            .spawn(move || loop {
                std::thread::sleep(TICK_PERIOD);
                ticker.tick();
            });
        if let Err(err) = spawned {
            abi::log(
                Level::Error,
                &format!("keyrealm: could not start the tick thread: {err}"),
            );
        }
        ticker
    })
}

impl Ticker {
    fn add(&self, ctx: u32, scheduler: Scheduler) {
        let target = TickTarget {
            thread: std::thread::current().id(),
            ctx,
            scheduler,
        };
        if let Ok(mut targets) = self.targets.lock() {
            targets.push(target);
        }
    }

    /// Removes (and deletes the scheduler of) `ctx` of the calling thread, under the lock, so
    /// that the tick thread never commits to a deleted scheduler.
    fn remove(&self, ctx: u32) {
        let thread = std::thread::current().id();
        if let Ok(mut targets) = self.targets.lock() {
            targets.retain(|t| !(t.thread == thread && t.ctx == ctx));
        }
    }

    fn tick(&self) {
        let Ok(targets) = self.targets.lock() else {
            return;
        };
        let mut woken: Vec<ThreadId> = Vec::new();
        for target in targets.iter() {
            let key = target.thread;
            if !woken.contains(&key) {
                woken.push(key);
                target.scheduler.commit(EVENT_TICK);
            }
        }
    }
}
