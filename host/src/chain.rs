//! One direction of an exchange through the wasm filters, chunk by chunk, with Envoy's
//! buffering semantics.
//!
//! Headers and body chunks flow through the filters in order (the request) or in reverse order
//! (the response). A filter whose callback answers `Continue` passes what it got on at once;
//! nothing is held when no filter asks for it. A filter that does not continue holds the flow:
//! - headers paused (`StopIteration`): without `allow_on_headers_stop_iteration` (Envoy's
//!   stop-all default) the body that arrives meanwhile is held for the filter, and reading stops
//!   past a watermark ([`HELD_WATERMARK`], as Envoy's flow control); the filter gets it in its
//!   body callback once it continues. With the option, the body is handed to the filter as it
//!   arrives, and a body callback that continues resumes the headers too;
//! - a body callback that pauses (`StopIterationAndBuffer`) makes the filter buffer: later
//!   chunks are appended and the filter sees the whole buffer each time, until it continues (or
//!   calls `proxy_continue_stream`); the buffer is bounded by the direction's body limit (past
//!   it: [`Stop::TooLarge`], 413 for a request, 503 for a response).
//!
//! A paused filter may stay so for at most the pause limit; then it fails as a trap would.
//! [`Pump`] drives one direction: it reads the source (the client's request body or the
//! upstream's response body) only while there is room, runs the filters, and hands the head and
//! then the body to the other side through a bounded channel ([`crate::body`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::body::{BodySender, ProxyBody};
use crate::filter_slot::{ContextHandle, FilterSlot};
use crate::limits::BodyReservation;
use crate::upstream::WorkerCtx;
use crate::wasm::instance::{Action, VmError, VmInstance};
use crate::wasm::{HeaderList, LocalResponse, RequestInfo, StreamState};

/// Bytes held for a filter whose headers are paused (stop-all) before reading stops.
pub const HELD_WATERMARK: usize = 1 << 20;

/// Which half of the exchange a chain works on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    Request,
    Response,
}

impl Direction {
    /// The stream's header map, body and continue flag for this direction.
    fn parts(
        self,
        s: &mut StreamState,
    ) -> (&mut Option<HeaderList>, &mut Option<Vec<u8>>, &mut bool) {
        match self {
            Direction::Request => (
                &mut s.request_headers,
                &mut s.request_body,
                &mut s.request_continued,
            ),
            Direction::Response => (
                &mut s.response_headers,
                &mut s.response_body,
                &mut s.response_continued,
            ),
        }
    }

    fn on_headers(
        self,
        vm: &mut VmInstance,
        id: u32,
        count: usize,
        eos: bool,
    ) -> Result<Action, VmError> {
        match self {
            Direction::Request => vm.on_request_headers(id, count, eos),
            Direction::Response => vm.on_response_headers(id, count, eos),
        }
    }

    fn on_body(
        self,
        vm: &mut VmInstance,
        id: u32,
        size: usize,
        eos: bool,
    ) -> Result<Action, VmError> {
        match self {
            Direction::Request => vm.on_request_body(id, size, eos),
            Direction::Response => vm.on_response_body(id, size, eos),
        }
    }
}

/// What flows through a chain.
#[derive(Debug)]
pub enum Event {
    /// The header map, and whether it ends the stream.
    Headers(HeaderList, bool),
    /// A body chunk, and whether it ends the stream.
    Data(Bytes, bool),
}

/// Why a direction stopped before its end.
#[derive(Debug)]
pub enum Stop {
    /// The filter at this chain position answered locally.
    Local(usize, LocalResponse),
    /// A filter reset the stream (`proxy_close_stream`).
    Reset,
    /// The filter at this chain position failed (and does not fail open).
    Failed(usize),
    /// The filter at this chain position buffered past the body limit or the budgets.
    TooLarge(usize),
    /// The source sent nothing for too long.
    SourceTimeout,
    /// The source broke off.
    SourceError(String),
}

/// Every HTTP context of one exchange, in filter order; each ends (`on_log`, `on_done`,
/// `on_delete`) once, when [`Contexts::finish_all`] is called or the last owner drops it.
#[derive(Default)]
pub struct Contexts(RefCell<Vec<ContextHandle>>);

impl Contexts {
    fn push(&self, c: ContextHandle) {
        self.0.borrow_mut().push(c);
    }

    /// The contexts created so far, in filter order.
    pub fn list(&self) -> Vec<ContextHandle> {
        self.0.borrow().clone()
    }

    /// Ends every context.
    pub fn finish_all(&self) {
        let contexts = std::mem::take(&mut *self.0.borrow_mut());
        for c in contexts {
            c.finish();
        }
    }
}

impl Drop for Contexts {
    fn drop(&mut self) {
        let contexts = std::mem::take(self.0.get_mut());
        if contexts.is_empty() {
            return;
        }
        // Not from inside drop: the instance may be borrowed by the code being unwound.
        tokio::task::spawn_local(async move {
            for c in contexts {
                c.finish();
            }
        });
    }
}

/// One filter's place in a chain.
struct Stage {
    slot: Rc<FilterSlot>,
    /// The filter's context (a request chain creates it when the headers reach the filter).
    handle: Option<ContextHandle>,
    /// The filter failed open: everything passes it.
    skip: bool,
    /// The filter got the headers and has not continued them.
    headers_paused: bool,
    headers_passed: bool,
    headers_eos: bool,
    /// Body held while the headers are paused (stop-all), not yet shown to the filter.
    held: BytesMut,
    /// Some body event (maybe an empty end of stream) is held.
    held_any: bool,
    /// The filter paused its body callback: its buffer holds the body so far.
    buffering: bool,
    /// Bytes in the filter's buffer.
    buffered: usize,
    /// The end of the stream reached this filter.
    eos_in: bool,
    /// Since when the filter holds the flow.
    paused_since: Option<Instant>,
    /// For a filter that fails open: what it was given, to pass on if it fails.
    kept_headers: Option<HeaderList>,
    kept_body: Vec<u8>,
}

impl Stage {
    fn new(slot: Rc<FilterSlot>, handle: Option<ContextHandle>) -> Self {
        Stage {
            slot,
            handle,
            skip: false,
            headers_paused: false,
            headers_passed: false,
            headers_eos: false,
            held: BytesMut::new(),
            held_any: false,
            buffering: false,
            buffered: 0,
            eos_in: false,
            paused_since: None,
            kept_headers: None,
            kept_body: Vec::new(),
        }
    }

    fn fails_open(&self) -> bool {
        self.slot.plugin.config.fails_open()
    }

    fn stop_all(&self) -> bool {
        !self.slot.plugin.config.allow_on_headers_stop_iteration
    }
}

/// The filters of one direction of one exchange.
pub struct Chain {
    dir: Direction,
    stages: Vec<Stage>,
    info: RequestInfo,
    contexts: Rc<Contexts>,
    ctx: Rc<WorkerCtx>,
    /// Events waiting to enter the filter at the given position (FIFO per position).
    queue: VecDeque<(usize, Event)>,
    /// Events that came out of the last filter.
    out: VecDeque<Event>,
    /// The most a filter may buffer.
    limit: usize,
}

impl Chain {
    /// The request chain over a listener's filters; contexts are created as the headers reach
    /// each filter and recorded in `contexts`.
    pub fn request(
        filters: &[Rc<FilterSlot>],
        info: RequestInfo,
        contexts: Rc<Contexts>,
        ctx: Rc<WorkerCtx>,
    ) -> Self {
        let stages = filters
            .iter()
            .map(|f| Stage::new(f.clone(), None))
            .collect();
        let limit = ctx.limits.request_body_bytes;
        Chain::new(Direction::Request, stages, info, contexts, ctx, limit)
    }

    /// The response chain over the contexts the request created, in reverse order.
    pub fn response(contexts: Rc<Contexts>, ctx: Rc<WorkerCtx>) -> Self {
        // A context that failed (its filter failed open) gets no more callbacks.
        let stages = contexts
            .list()
            .into_iter()
            .rev()
            .filter(|c| matches!(c.with_vm(|vm, id| Ok(vm.context_alive(id))), Ok(true)))
            .map(|c| Stage::new(c.filter.clone(), Some(c)))
            .collect();
        let limit = ctx.limits.response_body_bytes;
        Chain::new(
            Direction::Response,
            stages,
            RequestInfo::default(),
            contexts,
            ctx,
            limit,
        )
    }

    fn new(
        dir: Direction,
        stages: Vec<Stage>,
        info: RequestInfo,
        contexts: Rc<Contexts>,
        ctx: Rc<WorkerCtx>,
        limit: usize,
    ) -> Self {
        Chain {
            dir,
            stages,
            info,
            contexts,
            ctx,
            queue: VecDeque::new(),
            out: VecDeque::new(),
            limit,
        }
    }

    /// Bytes the filters hold (held for paused headers and in their buffers).
    fn buffered_bytes(&self) -> usize {
        self.stages.iter().map(|s| s.held.len() + s.buffered).sum()
    }

    /// Whether the source may be read: no filter holds past the watermark for paused headers.
    fn has_room(&self) -> bool {
        self.stages.iter().all(|s| s.held.len() < HELD_WATERMARK)
    }

    /// When the first paused filter runs out of its pause limit.
    fn next_deadline(&self) -> Option<Instant> {
        self.stages
            .iter()
            .filter(|s| !s.skip)
            .filter_map(|s| Some(s.paused_since? + s.slot.plugin.limits.pause_limit))
            .min()
    }

    /// Starts over after filter `at` answered locally: the answer goes through the filters
    /// after it, which forget what they were given.
    fn restart_after(&mut self, at: usize, headers: HeaderList, body: Vec<u8>) {
        self.queue.clear();
        self.out.clear();
        for s in self.stages.iter_mut().skip(at + 1) {
            let (slot, handle, skip) = (s.slot.clone(), s.handle.clone(), s.skip);
            *s = Stage::new(slot, handle);
            s.skip = skip;
        }
        // The filter that answered gets no more of this direction.
        if let Some(s) = self.stages.get_mut(at) {
            s.skip = true;
        }
        let eos = body.is_empty();
        self.queue.push_back((at + 1, Event::Headers(headers, eos)));
        if !eos {
            self.queue
                .push_back((at + 1, Event::Data(Bytes::from(body), true)));
        }
    }

    /// Runs queued events through the filters until none is left.
    async fn run_queue(&mut self) -> Result<(), Stop> {
        while let Some((i, event)) = self.queue.pop_front() {
            if i >= self.stages.len() {
                self.out.push_back(event);
                continue;
            }
            match event {
                Event::Headers(h, eos) => self.headers_at(i, h, eos).await?,
                Event::Data(b, eos) => self.data_at(i, b, eos)?,
            }
        }
        Ok(())
    }

    async fn headers_at(&mut self, i: usize, headers: HeaderList, eos: bool) -> Result<(), Stop> {
        if self.stages[i].skip {
            self.queue.push_back((i + 1, Event::Headers(headers, eos)));
            return Ok(());
        }
        if self.stages[i].handle.is_none() {
            let slot = self.stages[i].slot.clone();
            match slot.create_context(self.info.clone()).await {
                Ok(h) => {
                    self.contexts.push(h.clone());
                    self.stages[i].handle = Some(h);
                }
                Err(e) => {
                    self.stages[i].kept_headers = Some(headers);
                    self.stages[i].headers_eos = eos;
                    return self.failed(i, e.to_string());
                }
            }
        }
        let dir = self.dir;
        let stage = &mut self.stages[i];
        stage.headers_eos = eos;
        stage.eos_in = eos;
        if stage.fails_open() {
            stage.kept_headers = Some(headers.clone());
        }
        let count = headers.len();
        let result = self.with_stage(i, |vm, id| {
            if let Some(s) = vm.stream_mut(id) {
                let (slot, _, continued) = dir.parts(s);
                *slot = Some(headers);
                *continued = false;
                if dir == Direction::Response {
                    // A local reply asked for after the request phase has nothing left to answer.
                    s.local_response = None;
                }
            }
            dir.on_headers(vm, id, count, eos)
        });
        let action = match result {
            Ok(a) => a,
            Err(e) => return self.failed(i, e),
        };
        self.check_answered(i)?;
        if action == Action::Pause {
            let stage = &mut self.stages[i];
            stage.headers_paused = true;
            stage.paused_since.get_or_insert_with(Instant::now);
            return Ok(());
        }
        self.pass_headers(i)
    }

    fn data_at(&mut self, i: usize, data: Bytes, eos: bool) -> Result<(), Stop> {
        let stage = &mut self.stages[i];
        if stage.skip {
            self.queue.push_back((i + 1, Event::Data(data, eos)));
            return Ok(());
        }
        if eos {
            stage.eos_in = true;
        }
        if !stage.headers_passed && stage.stop_all() {
            stage.held.extend_from_slice(&data);
            stage.held_any = true;
            return Ok(());
        }
        self.body_callback(i, &data, eos)
    }

    /// Appends `data` to filter `i`'s buffer and calls its body callback.
    fn body_callback(&mut self, i: usize, data: &[u8], eos: bool) -> Result<(), Stop> {
        let dir = self.dir;
        if self.stages[i].fails_open() {
            self.stages[i].kept_body.extend_from_slice(data);
        }
        let limit = self.limit;
        let result = self.with_stage(i, |vm, id| {
            let Some(s) = vm.stream_mut(id) else {
                return Ok((Action::Continue, 0));
            };
            let (_, body, continued) = dir.parts(s);
            let buffer = body.get_or_insert_with(Vec::new);
            // As Envoy: data added to what a filter buffers may not take it past the limit.
            if !buffer.is_empty() && buffer.len() + data.len() > limit {
                return Ok((Action::Pause, usize::MAX));
            }
            buffer.extend_from_slice(data);
            let size = buffer.len();
            *continued = false;
            let action = dir.on_body(vm, id, size, eos)?;
            let now = vm
                .stream_mut(id)
                .and_then(|s| dir.parts(s).1.as_ref().map(Vec::len))
                .unwrap_or(0);
            Ok((action, now))
        });
        let (action, size) = match result {
            Ok(r) => r,
            Err(e) => return self.failed(i, e),
        };
        if size == usize::MAX {
            return Err(self.too_large(i));
        }
        self.check_answered(i)?;
        let stage = &mut self.stages[i];
        stage.buffered = size;
        if action == Action::Pause {
            stage.buffering = true;
            stage.paused_since.get_or_insert_with(Instant::now);
            if size > self.limit {
                return Err(self.too_large(i));
            }
            return Ok(());
        }
        // As in Envoy, a body callback that continues resumes headers paused before it.
        if !self.stages[i].headers_passed {
            self.pass_headers(i)?;
        }
        self.pass_body(i);
        Ok(())
    }

    /// Filter `i` continued its headers: they go on, then the body it held.
    fn pass_headers(&mut self, i: usize) -> Result<(), Stop> {
        let dir = self.dir;
        let headers = self
            .with_stage(i, |vm, id| {
                Ok(vm
                    .stream_mut(id)
                    .and_then(|s| dir.parts(s).0.clone())
                    .unwrap_or_default())
            })
            .unwrap_or_default();
        let stage = &mut self.stages[i];
        stage.headers_passed = true;
        stage.headers_paused = false;
        stage.kept_headers = None;
        if !stage.buffering {
            stage.paused_since = None;
        }
        let eos = stage.headers_eos;
        self.queue.push_back((i + 1, Event::Headers(headers, eos)));
        if self.stages[i].buffering {
            self.pass_body(i);
        }
        let stage = &mut self.stages[i];
        if stage.held_any {
            let held = std::mem::take(&mut stage.held).freeze();
            stage.held_any = false;
            let eos = stage.eos_in;
            self.body_callback(i, &held, eos)?;
        }
        Ok(())
    }

    /// Filter `i` continued its body: its buffer goes on.
    fn pass_body(&mut self, i: usize) {
        let dir = self.dir;
        let buffer = self
            .with_stage(i, |vm, id| {
                Ok(vm
                    .stream_mut(id)
                    .and_then(|s| dir.parts(s).1.as_mut().map(std::mem::take))
                    .unwrap_or_default())
            })
            .unwrap_or_default();
        let stage = &mut self.stages[i];
        stage.buffering = false;
        stage.buffered = 0;
        stage.paused_since = None;
        stage.kept_body.clear();
        let eos = stage.eos_in;
        if !buffer.is_empty() || eos {
            self.queue
                .push_back((i + 1, Event::Data(Bytes::from(buffer), eos)));
        }
    }

    /// Filter `i` buffered past the body limit or the budgets (counted).
    fn too_large(&self, i: usize) -> Stop {
        self.ctx
            .metrics
            .host
            .body_limit_rejections
            .fetch_add(1, Ordering::Relaxed);
        Stop::TooLarge(i)
    }

    /// Looks at every paused filter: continued ones pass what they hold on, ones past the
    /// pause limit fail.
    fn poll_paused(&mut self) -> Result<(), Stop> {
        let dir = self.dir;
        for i in 0..self.stages.len() {
            let stage = &self.stages[i];
            if stage.skip || !(stage.headers_paused || stage.buffering) {
                continue;
            }
            let continued = self.with_stage(i, |vm, id| {
                Ok(vm.stream_mut(id).map(|s| {
                    let flag = dir.parts(s).2;
                    std::mem::replace(flag, false)
                }))
            });
            let continued = match continued {
                Ok(Some(c)) => c,
                Ok(None) => return self.failed(i, "the context is gone".into()),
                Err(e) => return self.failed(i, e),
            };
            self.check_answered(i)?;
            if continued {
                if self.stages[i].headers_paused {
                    self.pass_headers(i)?;
                } else {
                    self.pass_body(i);
                }
                continue;
            }
            let stage = &self.stages[i];
            let limit = stage.slot.plugin.limits.pause_limit;
            if stage.paused_since.is_some_and(|t| t.elapsed() >= limit) {
                return self.failed(
                    i,
                    format!("a filter kept the stream paused for more than {limit:?}"),
                );
            }
        }
        Ok(())
    }

    fn with_stage<R>(
        &self,
        i: usize,
        f: impl FnOnce(&mut VmInstance, u32) -> Result<R, VmError>,
    ) -> Result<R, String> {
        match &self.stages[i].handle {
            Some(h) => h.with_vm(f).map_err(|e| e.to_string()),
            None => Err("no context".into()),
        }
    }

    /// A local reply or reset filter `i` asked for during its last callback.
    fn check_answered(&mut self, i: usize) -> Result<(), Stop> {
        let state = self.with_stage(i, |vm, id| {
            Ok(vm
                .stream_mut(id)
                .map(|s| (s.local_response.take(), s.closed)))
        });
        match state {
            Ok(Some((_, true))) => Err(Stop::Reset),
            Ok(Some((Some(l), false))) => Err(Stop::Local(i, l)),
            Ok(_) => Ok(()),
            Err(e) => self.failed(i, e),
        }
    }

    /// Filter `i` failed: its context ends (no more callbacks); a filter that fails open lets
    /// what it was given pass, else the stream stops.
    fn failed(&mut self, i: usize, error: String) -> Result<(), Stop> {
        tracing::error!("{error}");
        let counters = &self.ctx.metrics.host;
        let stage = &mut self.stages[i];
        stage.skip = true;
        if let Some(h) = &stage.handle {
            h.finish();
        }
        if !stage.fails_open() {
            counters.wasm_fail_stream.fetch_add(1, Ordering::Relaxed);
            return Err(Stop::Failed(i));
        }
        counters.wasm_fail_open.fetch_add(1, Ordering::Relaxed);
        stage.paused_since = None;
        stage.buffering = false;
        stage.buffered = 0;
        if !stage.headers_passed {
            if let Some(h) = stage.kept_headers.take() {
                stage.headers_passed = true;
                self.queue
                    .push_back((i + 1, Event::Headers(h, stage.headers_eos)));
            }
        }
        let stage = &mut self.stages[i];
        let mut body = std::mem::take(&mut stage.kept_body);
        body.extend_from_slice(&std::mem::take(&mut stage.held));
        if !body.is_empty() || (stage.eos_in && !stage.headers_eos) {
            self.queue
                .push_back((i + 1, Event::Data(Bytes::from(body), stage.eos_in)));
        }
        Ok(())
    }
}

/// What the other side gets first: the head and its body, or why there is none.
pub type Head = Result<(HeaderList, ProxyBody), Stop>;

/// Drives one direction: reads its source, runs the chain, sends the head, then the body.
pub struct Pump<B> {
    pub chain: Chain,
    /// The body to read (`None`: the headers end the stream, or `initial_body` is all of it).
    pub source: Option<B>,
    /// A body known whole (a local reply's), sent after the headers.
    pub initial_body: Option<Bytes>,
    /// How long the source may send nothing.
    pub source_idle: Option<Duration>,
    /// Body bytes the filters hold, counted against the connection's and process's budgets.
    pub reservation: BodyReservation,
    /// When the whole direction must be over (the route's timeout).
    pub deadline: Option<Instant>,
    /// A response chain answers a local reply by starting over after the filter that gave it.
    pub restart_on_local: bool,
    /// The source was read to its end.
    pub complete: bool,
}

impl<B> Pump<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    /// Runs the direction to its end. The head (or why there is none) goes to `head`; a stop
    /// after the head was sent aborts the body and is returned. `Ok(true)`: the source was
    /// read to its end.
    pub async fn run(
        mut self,
        headers: HeaderList,
        head: oneshot::Sender<Head>,
    ) -> Result<bool, Stop> {
        let result = self.drive(headers, head).await;
        result.map(|()| self.complete)
    }

    async fn drive(
        &mut self,
        headers: HeaderList,
        head: oneshot::Sender<Head>,
    ) -> Result<(), Stop> {
        let mut head = Some(head);
        let mut body: Option<BodySender> = None;
        let initial = self.initial_body.take().filter(|b| !b.is_empty());
        let eos = initial.is_none() && self.source.as_ref().is_none_or(|s| s.is_end_stream());
        let mut source_done = eos || initial.is_some();
        self.complete = eos && self.source.is_some();
        self.chain
            .queue
            .push_back((0, Event::Headers(headers, eos)));
        if let Some(b) = initial {
            self.chain.queue.push_back((0, Event::Data(b, true)));
        }
        let ctx = self.chain.ctx.clone();
        loop {
            let changed = ctx.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let mut step = self.step().await;
            if step.is_ok() && !self.reservation.set(self.chain.buffered_bytes()) {
                let at = self.chain.stages.len().saturating_sub(1);
                step = Err(self.chain.too_large(at));
            }
            if let Err(stop) = step {
                match self.answer_locally(stop, head.is_some()) {
                    Ok(()) => {
                        source_done = true;
                        self.source = None;
                        continue;
                    }
                    Err(stop) => return Self::stopped(stop, head, body).await,
                }
            }
            // What came out goes to the other side.
            while let Some(event) = self.chain.out.pop_front() {
                match event {
                    Event::Headers(h, true) => {
                        if let Some(tx) = head.take() {
                            let _ = tx.send(Ok((h, ProxyBody::empty())));
                        }
                        return Ok(());
                    }
                    Event::Headers(h, false) => {
                        // The whole body already came out too: send it whole.
                        let whole = matches!(self.chain.out.back(), Some(Event::Data(_, true)));
                        let (sender, b) = if whole {
                            let mut all = BytesMut::new();
                            for e in self.chain.out.drain(..) {
                                if let Event::Data(d, _) = e {
                                    all.extend_from_slice(&d);
                                }
                            }
                            (None, ProxyBody::full(all.freeze()))
                        } else {
                            let (s, b) = ProxyBody::channel();
                            (Some(s), b)
                        };
                        if let Some(tx) = head.take() {
                            let _ = tx.send(Ok((h, b)));
                        }
                        body = sender;
                        if whole {
                            return Ok(());
                        }
                    }
                    Event::Data(d, eos) => {
                        let Some(tx) = &body else { return Ok(()) };
                        if !tx.send(d).await {
                            return Ok(()); // the other side is gone
                        }
                        if eos {
                            return Ok(()); // dropping the sender ends the body
                        }
                    }
                }
            }
            let reading = !source_done && self.source.is_some() && self.chain.has_room();
            let deadline = self.chain.next_deadline();
            let idle = self.source_idle.filter(|_| reading);
            let next = async {
                match self.source.as_mut() {
                    Some(s) if reading => s.frame().await,
                    _ => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                frame = next => Wake::Frame(frame),
                _ = &mut changed => Wake::Look,
                _ = sleep_until_some(deadline) => Wake::Look,
                _ = sleep_some(idle) => Wake::SourceIdle,
                _ = sleep_until_some(self.deadline) => Wake::SourceIdle,
                _ = closed(&body) => Wake::Gone,
            };
            match wake {
                Wake::Frame(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let eos = self.source.as_ref().is_none_or(|s| s.is_end_stream());
                        source_done = eos;
                        self.complete = eos;
                        self.chain.queue.push_back((0, Event::Data(data, eos)));
                    }
                }
                Wake::Frame(None) => {
                    source_done = true;
                    self.complete = true;
                    self.chain
                        .queue
                        .push_back((0, Event::Data(Bytes::new(), true)));
                }
                Wake::Frame(Some(Err(e))) => {
                    let stop = Stop::SourceError(e.to_string());
                    return Self::stopped(stop, head, body).await;
                }
                Wake::Look => {}
                Wake::SourceIdle => return Self::stopped(Stop::SourceTimeout, head, body).await,
                Wake::Gone => return Ok(()),
            }
        }
    }

    /// Runs what is queued, then looks at paused filters.
    async fn step(&mut self) -> Result<(), Stop> {
        self.chain.run_queue().await?;
        self.chain.poll_paused()?;
        self.chain.run_queue().await
    }

    /// A response chain answers locally by starting over after the filter that stopped it,
    /// while the head is still to send.
    fn answer_locally(&mut self, stop: Stop, before_head: bool) -> Result<(), Stop> {
        if !self.restart_on_local || !before_head {
            return Err(stop);
        }
        let (at, reply) = match stop {
            Stop::Local(at, l) => (at, l),
            Stop::Failed(at) => (at, failure_reply()),
            Stop::TooLarge(at) => (at, plain_reply(503, "response payload too large")),
            other => return Err(other),
        };
        let (headers, body) = local_reply_parts(reply);
        self.chain.restart_after(at, headers, body);
        Ok(())
    }

    async fn stopped(
        stop: Stop,
        head: Option<oneshot::Sender<Head>>,
        body: Option<BodySender>,
    ) -> Result<(), Stop> {
        if let Some(tx) = head {
            let _ = tx.send(Err(stop));
            return Ok(());
        }
        if let Some(b) = body {
            b.abort(&format!("{stop:?}")).await;
        }
        Err(stop)
    }
}

/// What woke a pump.
enum Wake<F> {
    Frame(Option<F>),
    /// A filter may have continued, or a pause limit passed.
    Look,
    SourceIdle,
    /// The other side stopped reading.
    Gone,
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn sleep_some(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn closed(body: &Option<BodySender>) {
    match body {
        Some(b) => b.closed().await,
        None => std::future::pending().await,
    }
}

/// Envoy's answer for a request whose filter failed (`failStream`: 503, no body).
pub fn failure_reply() -> LocalResponse {
    LocalResponse {
        status: 503,
        details: "wasm_fail_stream".into(),
        body: Vec::new(),
        headers: Vec::new(),
    }
}

/// A host answer as a local reply.
pub fn plain_reply(status: u16, body: &str) -> LocalResponse {
    LocalResponse {
        status,
        details: String::new(),
        body: body.as_bytes().to_vec(),
        headers: Vec::new(),
    }
}

/// A local reply as a header map and body: Envoy sets `content-type: text/plain` when there is
/// a body, then applies the filter's headers (replacing).
pub fn local_reply_parts(l: LocalResponse) -> (HeaderList, Vec<u8>) {
    let mut headers: HeaderList = vec![(":status".into(), l.status.to_string().into_bytes())];
    if !l.body.is_empty() {
        headers.push(("content-type".into(), b"text/plain".to_vec()));
    }
    for (k, v) in l.headers {
        crate::wasm::replace_value(&mut headers, &k, v);
    }
    (headers, l.body)
}
