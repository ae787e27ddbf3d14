//! A filter slot: one plugin's instance on one worker, and everything that outlives a single
//! guest call — the instance's replacement after a failure, its HTTP calls, its tick timer and
//! the shared queues it owns.
//!
//! A guest call that traps or runs past its budget marks the instance failed. The request it
//! was serving, and the requests paused on it, fail as Envoy fails them (503 `wasm_fail_stream`,
//! or pass with `fail_open`). With `failure_policy: FAIL_RELOAD`, a new instance is then started
//! off the request path (on the runtime's blocking pool), with Envoy 1.40's timing (its
//! `JitteredLowerBoundBackOffStrategy`): a new load starts once a jittered interval, uniform in
//! `[base, 1.5 x base)` (`reload_config.backoff.base_interval`, 1 s by default), has passed since
//! the last load or load attempt; an instance that served longer than that is re-created at
//! once. Requests that arrive while an instance is starting wait for it (up to the start
//! budget); requests that arrive during a back-off fail at once. Without `FAIL_RELOAD`
//! (`FAIL_CLOSED`, `FAIL_OPEN`, or no policy: Envoy's default), a failed instance is not
//! re-created, as in Envoy: every later request gets 503, or passes with `fail_open`.
//!
//! Callouts (`proxy_http_call`) and ticks run as local tasks of the worker and call back into
//! the instance only between other guest calls, never from inside a host function.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::body::ProxyBody;
use crate::config::FailurePolicy;
use crate::limits::BodyReservation;
use crate::upstream::WorkerCtx;
use crate::wasm::instance::{VmError, VmInstance};
use crate::wasm::shared::QueueOwner;
use crate::wasm::{CallResponse, PendingHttpCall, Plugin, RequestInfo};

struct Slot {
    vm: Option<VmInstance>,
    /// Bumped each time the instance fails: contexts of older generations are gone.
    generation: u64,
}

/// Where the slot's instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// An instance serves.
    Running,
    /// The instance failed; a new one starts at the given time.
    BackingOff(tokio::time::Instant),
    /// A new instance is being started.
    Starting,
    /// The instance failed and is not re-created (`FAIL_CLOSED`).
    Failed,
}

/// A plugin's instance on one worker.
pub struct FilterSlot {
    pub plugin: Arc<Plugin>,
    slot: RefCell<Slot>,
    /// Woken when a new instance is ready (or failed to start).
    started: Notify,
    phase: Cell<Phase>,
    /// When the last load (or load attempt) of an instance began: the reload interval counts
    /// from here, as Envoy's `last_load`.
    last_load: Cell<Instant>,
    ctx: Rc<WorkerCtx>,
    tick_epoch: Cell<u64>,
    /// Where shared queues this instance registered announce new items (context id, queue id).
    queue_ready: tokio::sync::mpsc::UnboundedSender<(u32, u32)>,
}

/// A handle to an HTTP context: which filter, which instance generation, which context id.
#[derive(Clone)]
pub struct ContextHandle {
    pub filter: Rc<FilterSlot>,
    pub generation: u64,
    pub id: u32,
}

impl FilterSlot {
    /// Starts the plugin's instance on this worker (on the calling thread: this is start-up).
    pub fn start(plugin: Arc<Plugin>, ctx: Rc<WorkerCtx>) -> Result<Rc<Self>, VmError> {
        let last_load = Instant::now();
        let vm = VmInstance::start(plugin.clone(), &plugin.pre)?;
        let (queue_ready, mut announcements) = tokio::sync::mpsc::unbounded_channel();
        let filter = Rc::new(FilterSlot {
            plugin,
            slot: RefCell::new(Slot {
                vm: Some(vm),
                generation: 1,
            }),
            started: Notify::new(),
            phase: Cell::new(Phase::Running),
            last_load: Cell::new(last_load),
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
                me.wake();
            }
        });
        filter.after_call();
        Ok(filter)
    }

    /// After callouts, ticks, failures and calls that touched other streams: every request of
    /// the worker waiting on a filter looks at its state again.
    fn wake(&self) {
        self.ctx.changed.notify_waiters();
    }

    /// The current instance generation.
    pub fn generation(&self) -> u64 {
        self.slot.borrow().generation
    }

    fn broken(&self) -> VmError {
        VmError::Broken {
            plugin: self.plugin.log_name().to_string(),
        }
    }

    /// Runs `f` on the instance. With `generation`, fails if the instance was replaced since
    /// (the context it refers to is gone). A call that fails the instance retires it and
    /// starts its replacement (off the request path).
    pub fn with_vm<R>(
        self: &Rc<Self>,
        generation: Option<u64>,
        f: impl FnOnce(&mut VmInstance) -> Result<R, VmError>,
    ) -> Result<R, VmError> {
        let result = {
            let mut slot = self.slot.borrow_mut();
            if generation.is_some_and(|g| g != slot.generation) {
                return Err(self.broken());
            }
            let Some(vm) = slot.vm.as_mut() else {
                return Err(self.broken());
            };
            let result = f(vm);
            if vm.take_other_streams_changed() {
                self.wake();
            }
            if vm.is_broken() {
                if let Err(e) = &result {
                    self.log_error(&format!("{e}; the instance is retired"));
                }
                self.ctx
                    .metrics
                    .host
                    .vm_failures
                    .fetch_add(1, Ordering::Relaxed);
                slot.generation += 1;
                slot.vm = None;
                self.tick_epoch.set(self.tick_epoch.get() + 1);
                drop(slot);
                self.retire();
                self.wake();
                return result;
            }
            result
        };
        self.after_call();
        result
    }

    /// The instance failed: re-create it as the failure policy says.
    fn retire(self: &Rc<Self>) {
        // As Envoy: only FAIL_RELOAD re-creates; otherwise the filter stays failed and its
        // requests get 503 (FAIL_CLOSED) or pass it (FAIL_OPEN, or `fail_open`).
        if self.plugin.config.failure_policy != FailurePolicy::FailReload {
            self.phase.set(Phase::Failed);
            return;
        }
        self.schedule_start();
    }

    /// Starts a new instance once the reload interval has passed since the last load.
    fn schedule_start(self: &Rc<Self>) {
        let delay = reload_delay(
            reload_interval(self.plugin.config.reload_base_interval),
            self.last_load.get().elapsed(),
        );
        let at = tokio::time::Instant::now() + delay;
        self.phase.set(if delay.is_zero() {
            Phase::Starting
        } else {
            Phase::BackingOff(at)
        });
        let me = self.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep_until(at).await;
            me.phase.set(Phase::Starting);
            me.last_load.set(Instant::now());
            let plugin = me.plugin.clone();
            // Compiling is done; instantiating and `on_configure` still take a while: on the
            // blocking pool, so the worker keeps serving meanwhile.
            let started =
                tokio::task::spawn_blocking(move || VmInstance::start(plugin.clone(), &plugin.pre))
                    .await;
            let metrics = &me.ctx.metrics.host;
            match started {
                Ok(Ok(vm)) => {
                    metrics.vm_replacements.fetch_add(1, Ordering::Relaxed);
                    me.slot.borrow_mut().vm = Some(vm);
                    me.phase.set(Phase::Running);
                    me.after_call();
                }
                Ok(Err(e)) => {
                    metrics
                        .vm_replacement_failures
                        .fetch_add(1, Ordering::Relaxed);
                    me.log_error(&format!("cannot replace the failed instance: {e}"));
                    me.schedule_start();
                }
                Err(e) => {
                    metrics
                        .vm_replacement_failures
                        .fetch_add(1, Ordering::Relaxed);
                    me.log_error(&format!("cannot replace the failed instance: {e}"));
                    me.schedule_start();
                }
            }
            me.started.notify_waiters();
            me.wake();
        });
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
                me.wake();
            }
        });
    }

    async fn run_call(self: Rc<Self>, call: PendingHttpCall, generation: u64) {
        let metrics = &self.ctx.metrics.host;
        metrics.http_calls.fetch_add(1, Ordering::Relaxed);
        let (token, context_id, bytes) = (call.token, call.context_id, call.bytes());
        let response = self.call_answer(call).await;
        if response.is_none() {
            metrics.http_call_failures.fetch_add(1, Ordering::Relaxed);
        }
        let delivered = self.with_vm(Some(generation), |vm| {
            vm.http_call_done(bytes);
            if !vm.context_alive(context_id) {
                return Ok(());
            }
            vm.on_http_call_response(token, response)
        });
        if let Err(e) = delivered {
            tracing::debug!("http call answer not delivered: {e}");
        }
        self.wake();
    }

    /// Sends an HTTP call and returns the answer the guest gets; `None` when it cannot be sent
    /// (unknown cluster, bad request).
    async fn call_answer(&self, call: PendingHttpCall) -> Option<CallResponse> {
        let cluster = self.ctx.clusters.get(&call.cluster)?;
        let request =
            match crate::upstream::build_request(&call.headers, ProxyBody::full(call.body)) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(cluster = %call.cluster, "http call has a bad request: {e}");
                    return None;
                }
            };
        let mut reservation = BodyReservation::new(self.ctx.budget.clone(), None);
        let limit = self.ctx.limits.response_body_bytes;
        let answer = self
            .ctx
            .pool
            .exchange(cluster, request, call.timeout, limit, &mut reservation)
            .await;
        match answer {
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

    /// Creates an HTTP context on the current instance. While a new instance is starting, waits
    /// for it (up to the start budget); with no instance to come soon, fails.
    pub async fn create_context(
        self: &Rc<Self>,
        info: RequestInfo,
    ) -> Result<ContextHandle, VmError> {
        if self.phase.get() == Phase::Starting {
            let started = self.started.notified();
            let budget = self.plugin.limits.start_budget;
            let _ = tokio::time::timeout(budget, started).await;
        }
        // The context belongs to the generation that created it (nothing runs between the
        // call and reading it).
        let id = self.with_vm(None, |vm| vm.create_http_context(info))?;
        let generation = self.generation();
        Ok(ContextHandle {
            filter: self.clone(),
            generation,
            id,
        })
    }
}

/// The interval between two loads, as Envoy 1.40's `JitteredLowerBoundBackOffStrategy`:
/// uniform in `[base, 1.5 x base)`, drawn anew for each reload.
fn reload_interval(base: Duration) -> Duration {
    let mut random = [0u8; 4];
    // Without randomness the interval is its lower bound, still inside Envoy's range.
    let _ = getrandom::fill(&mut random);
    let fraction = f64::from(u32::from_le_bytes(random)) / (f64::from(u32::MAX) + 1.0);
    base + base.mul_f64(fraction / 2.0)
}

/// How long to wait before the next load: what is left of `interval` since the last one.
fn reload_delay(interval: Duration, since_last_load: Duration) -> Duration {
    interval.saturating_sub(since_last_load)
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

    /// Ends the context (`on_log`, `on_done`, `on_delete`), if its instance still lives.
    pub fn finish(&self) {
        if let Err(e) = self.with_vm(|vm, id| vm.finish_http_context(id)) {
            tracing::debug!("finishing context {}: {e}", self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reload_interval_is_envoys_jittered_lower_bound() {
        let base = Duration::from_secs(1);
        let (mut low, mut high) = (base * 2, Duration::ZERO);
        for _ in 0..400 {
            let interval = reload_interval(base);
            assert!(interval >= base && interval < base * 3 / 2, "{interval:?}");
            low = low.min(interval);
            high = high.max(interval);
        }
        assert!(
            low < base * 11 / 10 && high > base * 14 / 10,
            "jittered over the range: {low:?}..{high:?}"
        );
    }

    #[test]
    fn the_reload_waits_only_for_what_is_left_since_the_last_load() {
        let interval = Duration::from_millis(1200);
        assert_eq!(
            reload_delay(interval, Duration::from_millis(200)),
            Duration::from_secs(1)
        );
        // An instance that served longer than the interval is re-created at once.
        assert_eq!(
            reload_delay(interval, Duration::from_secs(30)),
            Duration::ZERO
        );
    }
}
