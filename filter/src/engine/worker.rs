//! The request state machine of one worker thread: what happens to each request from its
//! headers to its end, the realm calls this thread makes, and the answers it applies.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, RealmRef};
use crate::engine::answers::{
    send_error, set_identity, strip_consumer_headers, verdict, Failure, Verdict,
};
use crate::engine::counters::Counters;
use crate::engine::filter::Filter;
use crate::engine::headers::Headers;
use crate::engine::hiding::{hide_in_body, hide_in_headers, BodyEdit};
use crate::engine::lookups::{Begin, Expired, LookupKey, Mailbox, Waiter};
use crate::engine::shared::SharedState;
use crate::engine::walk::{stale, walk, Walked};
use crate::engine::{Action, CallHandle, CallRequest, Host, Level};
use crate::extract::{
    body_kind, extract, split_path, BodyKind, Extraction, ParsedBody, RequestParts,
};
use crate::metrics::Metric;
use crate::realm::{authenticate_body, classify, CallResponse, RealmAnswer};
use crate::sha256::{sha256, Digest};

/// How long a request paused for its body may wait for the first of it (see `expire_body_waits`).
pub const BODY_WAIT_MS: u64 = 10_000;

/// Extra time past `timeout_ms` after which a look-up without answer is given up.
const DEADLINE_GRACE_MS: u64 = 500;

/// When a realm call started at `now` is given up if no answer came: its timeout plus the grace.
fn lookup_deadline(config: &Config, now: u64) -> u64 {
    let timeout = config.realm_service.as_ref().map_or(0, |rs| rs.timeout_ms);
    now + timeout + DEADLINE_GRACE_MS
}

/// The outcome of a decision: the request goes upstream, or it stays where it is (paused for a
/// look-up, or answered locally).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Proceed,
    Stop,
}

fn sync_action(step: Step) -> Action {
    match step {
        Step::Proceed => Action::Continue,
        Step::Stop => Action::Pause,
    }
}

/// The time, read from the host once per decision and only if needed.
#[derive(Default)]
struct Clock(Option<u64>);

impl Clock {
    fn now(&mut self, host: &mut dyn Host) -> u64 {
        *self.0.get_or_insert_with(|| host.now_ms())
    }
}

/// A request that is waiting for a realm answer.
struct Pending {
    filter: Arc<Filter>,
    key: String,
    digest: Digest,
    /// The `identity_realms` entry being asked (or, before the walk, the first to try).
    next_source: usize,
    unavailable: bool,
    request_id: Option<String>,
    /// The look-up this request waits for. A host may give a finished stream's context id to a
    /// new request: only a request that waits for *this* look-up takes its answer.
    waiting_on: Option<LookupKey>,
}

/// The body as far as the decision is concerned.
enum BodyInput {
    /// No body is coming (or `key_in_body` is off).
    Absent,
    /// A body is coming; it has not arrived.
    Pending,
    /// The whole body (the headers are still paused).
    Ready { bytes: Vec<u8>, size: usize },
}

enum RequestState {
    /// Headers seen; the body is being buffered (key_in_body).
    AwaitingBody {
        filter: Arc<Filter>,
        headers: Headers,
        body_size: usize,
        since_ms: u64,
        seen_body: bool,
    },
    /// Waiting for a realm look-up.
    Waiting(Pending),
    /// Answered locally; nothing of it may continue.
    Rejected,
}

/// A realm call this worker made.
struct Call {
    key: LookupKey,
    /// The look-up it answers.
    id: u64,
    /// The context the host delivers the answer to; if it goes away first, the answer is lost
    /// and the call is made again from the tick.
    receiver: u32,
    orphaned: bool,
    filter: Arc<Filter>,
    realm: Arc<RealmRef>,
    /// The key, for making the call again (kept in memory only while the call is under way).
    secret: String,
}

/// The per-thread request state (see the module documentation of [`crate::engine`]).
pub struct Worker {
    shared: Arc<SharedState>,
    home: u32,
    mailbox: Arc<Mailbox>,
    requests: HashMap<u32, RequestState>,
    body_edits: HashMap<u32, BodyEdit>,
    calls: HashMap<u32, Call>,
    counters: Counters,
    /// A body has reached this worker while its headers were paused: the proxy delivers bodies
    /// to paused headers (Envoy with `allow_on_headers_stop_iteration: true`).
    bodies_reach_paused_headers: bool,
}

impl Worker {
    pub fn new(shared: Arc<SharedState>) -> Worker {
        Worker {
            home: shared.new_home(),
            shared,
            mailbox: Arc::new(Mailbox::default()),
            requests: HashMap::new(),
            body_edits: HashMap::new(),
            calls: HashMap::new(),
            counters: Counters::default(),
            bodies_reach_paused_headers: false,
        }
    }

    /// This worker's number in the shared state.
    pub fn home(&self) -> u32 {
        self.home
    }

    pub fn shared(&self) -> &Arc<SharedState> {
        &self.shared
    }

    /// Requests holding state (waiting for a body or an answer, or rejected): for tests.
    pub fn tracked_requests(&self) -> usize {
        self.requests.len()
    }

    /// Realm look-ups under way (all workers).
    pub fn lookups_in_flight(&self) -> usize {
        self.shared.lookups().len()
    }

    /// Realm calls this worker is waiting for.
    pub fn calls_in_flight(&self) -> usize {
        self.calls.len()
    }

    /// Hands the counts since the last drain to `f` (the adapter adds them to the proxy's
    /// counters).
    pub fn drain_counters(&mut self, f: impl FnMut(Metric, u64)) {
        self.counters.drain(f);
    }

    /// Whether there are counts to drain.
    pub fn has_counts(&self) -> bool {
        self.counters.is_dirty()
    }

    // -----------------------------------------------------------------------------------------
    // Request callbacks
    // -----------------------------------------------------------------------------------------

    /// A request's headers, under `filter`'s configuration.
    pub fn on_request_headers(
        &mut self,
        filter: &Arc<Filter>,
        ctx: u32,
        end_of_stream: bool,
        host: &mut dyn Host,
    ) -> Action {
        let config = filter.config();
        let headers = host.request_headers();
        strip_consumer_headers(&headers, host);
        if !config.run_on_preflight && headers.get(":method") == Some("OPTIONS") {
            self.counters.add(Metric::RequestsPreflight);
            return Action::Continue;
        }
        // Only form, JSON and multipart bodies can carry the key: another body is not waited
        // for (it would be buffered whole for nothing).
        let body = if config.key_in_body
            && !end_of_stream
            && body_kind(headers.get("content-type")) != BodyKind::Other
        {
            BodyInput::Pending
        } else {
            BodyInput::Absent
        };
        let step = self.decide(ctx, ctx, filter, headers, body, host);
        sync_action(step)
    }

    /// `body_size` bytes of body are buffered; `end_of_stream`: that is all of it.
    pub fn on_request_body(
        &mut self,
        ctx: u32,
        body_size: usize,
        end_of_stream: bool,
        host: &mut dyn Host,
    ) -> Action {
        match self.requests.get_mut(&ctx) {
            Some(RequestState::Waiting(_)) => {
                // The body arrives while the headers wait for a realm answer (Envoy with
                // allow_on_headers_stop_iteration): hold it, and note it for a body edit.
                self.bodies_reach_paused_headers |= body_size > 0;
                if let Some(edit) = self.body_edits.get_mut(&ctx) {
                    edit.body_size = body_size;
                    edit.seen_body |= body_size > 0;
                    edit.complete = end_of_stream;
                }
                Action::Pause
            }
            Some(RequestState::Rejected) => Action::Pause,
            Some(RequestState::AwaitingBody {
                body_size: seen,
                seen_body,
                ..
            }) => {
                *seen = body_size;
                *seen_body = true;
                self.bodies_reach_paused_headers = true;
                if !end_of_stream {
                    return Action::Pause;
                }
                self.body_complete(ctx, host)
            }
            None => match self.body_edits.get_mut(&ctx) {
                None => Action::Continue,
                Some(edit) => {
                    edit.body_size = body_size;
                    edit.seen_body |= body_size > 0;
                    if !end_of_stream {
                        return Action::Pause;
                    }
                    if let Some(edit) = self.body_edits.remove(&ctx) {
                        edit.apply(host);
                    }
                    Action::Continue
                }
            },
        }
    }

    /// Trailers end the request body.
    pub fn on_request_trailers(&mut self, ctx: u32, host: &mut dyn Host) -> Action {
        match self.requests.get(&ctx) {
            Some(RequestState::Waiting(_)) => {
                if let Some(edit) = self.body_edits.get_mut(&ctx) {
                    edit.complete = true;
                }
                Action::Pause
            }
            Some(RequestState::Rejected) => Action::Pause,
            Some(RequestState::AwaitingBody { .. }) => self.body_complete(ctx, host),
            None => {
                if let Some(edit) = self.body_edits.remove(&ctx) {
                    edit.apply(host);
                }
                Action::Continue
            }
        }
    }

    fn body_complete(&mut self, ctx: u32, host: &mut dyn Host) -> Action {
        let Some(RequestState::AwaitingBody {
            filter,
            headers,
            body_size,
            ..
        }) = self.requests.remove(&ctx)
        else {
            return Action::Continue;
        };
        let bytes = if body_size > 0 {
            host.request_body(body_size).unwrap_or_default()
        } else {
            Vec::new()
        };
        let body = BodyInput::Ready {
            bytes,
            size: body_size,
        };
        let step = self.decide(ctx, ctx, &filter, headers, body, host);
        sync_action(step)
    }

    /// The stream is over (completed or reset): forget it.
    pub fn on_done(&mut self, ctx: u32) {
        if let Some(RequestState::Waiting(p)) = self.requests.remove(&ctx) {
            if let Some(key) = p.waiting_on {
                self.shared.lookups().leave(&key, self.home, ctx);
            }
        }
        self.body_edits.remove(&ctx);
        for call in self.calls.values_mut() {
            if call.receiver == ctx {
                call.orphaned = true;
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Deciding
    // -----------------------------------------------------------------------------------------

    /// Finds the key and authenticates it. `current` is the context the host is calling into.
    fn decide(
        &mut self,
        ctx: u32,
        current: u32,
        filter: &Arc<Filter>,
        headers: Headers,
        body: BodyInput,
        host: &mut dyn Host,
    ) -> Step {
        let config = filter.config();
        let query = headers.get(":path").and_then(|p| split_path(p).1);
        let content_type = headers.get("content-type");
        let (parsed_body, body_size) = match &body {
            BodyInput::Ready { bytes, size } => {
                (Some(ParsedBody::parse(content_type, bytes)), *size)
            }
            BodyInput::Absent => (Some(ParsedBody::Unusable), 0),
            BodyInput::Pending => (None, 0),
        };
        let extraction = extract(
            config,
            &RequestParts {
                headers: &headers,
                query,
                body: parsed_body.as_ref(),
            },
        );
        // A key found on the headers while a body is still to come: the headers go on, and
        // hide_credentials may have to remove the name from the body afterwards, which changes
        // its length. The proxy frames it then.
        let body_edit_ahead = config.hide_credentials
            && config.key_in_body
            && matches!(body, BodyInput::Pending)
            && body_kind(content_type) != BodyKind::Other
            && matches!(extraction, Extraction::Key { .. });
        if body_edit_ahead && headers.get("content-length").is_some() {
            host.remove_request_header("content-length");
        }
        let failure = match extraction {
            Extraction::NeedBody => {
                // The body decides: wait for all of it with the headers paused. (Envoy needs
                // `allow_on_headers_stop_iteration: true` to deliver a body to a filter that
                // paused its headers; docs/configuration.md.)
                let since_ms = host.now_ms();
                self.requests.insert(
                    ctx,
                    RequestState::AwaitingBody {
                        filter: filter.clone(),
                        headers,
                        body_size: 0,
                        since_ms,
                        seen_body: false,
                    },
                );
                return Step::Stop;
            }
            Extraction::Key { value, name } => {
                if config.hide_credentials {
                    hide_in_headers(filter, name, &headers, host);
                    if let Some(parsed) = &parsed_body {
                        if config.key_in_body && body_size > 0 {
                            hide_in_body(filter, name, parsed, body_size, &headers, host);
                        }
                    }
                    if body_edit_ahead {
                        self.body_edits.insert(
                            ctx,
                            BodyEdit {
                                filter: filter.clone(),
                                name,
                                content_type: content_type.map(str::to_string),
                                body_size: 0,
                                seen_body: false,
                                complete: false,
                            },
                        );
                    }
                }
                if value.is_empty() {
                    Failure::NoKey
                } else {
                    let digest = sha256(value.as_bytes());
                    let pending = Pending {
                        filter: filter.clone(),
                        key: value,
                        digest,
                        next_source: 0,
                        unavailable: false,
                        request_id: None,
                        waiting_on: None,
                    };
                    let request_id = headers.get("x-request-id");
                    return self.authenticate(ctx, current, pending, request_id, host);
                }
            }
            Extraction::Duplicate => Failure::Duplicate,
            Extraction::NoKey => Failure::NoKey,
        };
        self.fail(ctx, filter, headers.get("x-request-id"), failure, host)
    }

    /// Walks `identity_realms` from `pending.next_source` and acts on where it ends: consumer
    /// headers, a look-up to wait for (joined or started), or the failure's answer.
    /// `request_id` is kept in `pending` only if the request has to wait (no allocation on the
    /// common path).
    fn authenticate(
        &mut self,
        ctx: u32,
        current: u32,
        mut pending: Pending,
        request_id: Option<&str>,
        host: &mut dyn Host,
    ) -> Step {
        let filter = pending.filter.clone();
        let mut clock = Clock::default();
        loop {
            let walked = walk(
                &filter,
                self.shared.cache(),
                &pending.digest,
                pending.next_source,
                pending.unavailable,
                &mut || clock.now(host),
                &mut self.counters,
            );
            let (source, key, realm) = match walked {
                Walked::Authenticated(identity) => {
                    set_identity(&identity, false, host);
                    return Step::Proceed;
                }
                Walked::Failed(failure) => {
                    return self.fail(ctx, &filter, request_id, failure, host);
                }
                Walked::NeedsCall { source, key, realm } => (source, key, realm),
            };
            pending.next_source = source;
            let now = clock.now(host);
            let waiter = Waiter {
                home: self.home,
                ctx,
                mailbox: self.mailbox.clone(),
                waker: host.waker(),
            };
            let deadline = lookup_deadline(filter.config(), now);
            let id = match self
                .shared
                .lookups()
                .begin(key, waiter, &realm, now, deadline)
            {
                Begin::Joined => {
                    // One call at a time per key: wait for the one under way.
                    self.counters.add(Metric::RealmCallsCoalesced);
                    self.park(ctx, pending, key, request_id);
                    return Step::Stop;
                }
                Begin::Start { id, replaced } => {
                    if let Some(dead) = replaced {
                        // A look-up past its deadline is dead (the tick has not run yet): give
                        // it up as the tick would, so that the requests waiting on it are
                        // answered now rather than left paused.
                        self.give_up(dead, current, host);
                        host.set_effective_context(ctx);
                    }
                    id
                }
            };
            match self.dispatch(&realm, &pending.key, &filter, host) {
                Ok(handle) => {
                    self.calls.insert(
                        handle.token,
                        Call {
                            key,
                            id,
                            receiver: handle.receiver,
                            orphaned: false,
                            filter: filter.clone(),
                            realm,
                            secret: pending.key.clone(),
                        },
                    );
                    self.park(ctx, pending, key, request_id);
                    return Step::Stop;
                }
                Err(cause) => {
                    // Anyone who joined meanwhile (on another thread) is told "unavailable" too.
                    let waiters = self.shared.lookups().take(&key, id).unwrap_or_default();
                    self.counters.add(Metric::RealmCallsUnavailable);
                    log_unavailable(&realm, &cause, host);
                    let answer = Arc::new(RealmAnswer::Unavailable { cause });
                    for w in waiters {
                        if !(w.home == self.home && w.ctx == ctx) {
                            w.post(key, &answer);
                        }
                    }
                    host.set_effective_context(ctx);
                    if let Some(identity) = stale(&filter, self.shared.cache(), &key, now) {
                        self.counters.add(Metric::CacheStale);
                        self.counters.add(Metric::RequestsAuthenticatedRealm);
                        set_identity(&identity, false, host);
                        return Step::Proceed;
                    }
                    pending.unavailable = true;
                    pending.next_source = source + 1;
                }
            }
        }
    }

    /// The request waits for look-up `key`.
    fn park(&mut self, ctx: u32, mut pending: Pending, key: LookupKey, request_id: Option<&str>) {
        pending.request_id = request_id.map(str::to_string);
        pending.waiting_on = Some(key);
        self.requests.insert(ctx, RequestState::Waiting(pending));
    }

    /// Whether request `ctx` is waiting for the look-up of `key`.
    fn waits_on(&self, ctx: u32, key: &LookupKey) -> bool {
        matches!(
            self.requests.get(&ctx),
            Some(RequestState::Waiting(p)) if p.waiting_on.as_ref() == Some(key)
        )
    }

    fn dispatch(
        &self,
        realm: &RealmRef,
        key: &str,
        filter: &Filter,
        host: &mut dyn Host,
    ) -> Result<CallHandle, String> {
        let Some(rs) = &filter.config().realm_service else {
            return Err("no realm_service configured".to_string());
        };
        let headers = [
            (":method", "POST"),
            (":path", realm.path.as_str()),
            (":authority", realm.authority.as_str()),
            ("authorization", rs.authorization.as_str()),
            ("content-type", "application/json"),
        ];
        let body = authenticate_body(key);
        host.dispatch_call(&CallRequest {
            cluster: &realm.cluster,
            headers: &headers,
            body: &body,
            timeout_ms: rs.timeout_ms,
        })
        .map_err(|e| format!("the call could not be started: {e}"))
    }

    fn fail(
        &mut self,
        ctx: u32,
        filter: &Filter,
        request_id: Option<&str>,
        failure: Failure,
        host: &mut dyn Host,
    ) -> Step {
        match verdict(filter.config(), failure) {
            Verdict::Anonymous(identity) => {
                self.counters.add(Metric::RequestsAnonymous);
                set_identity(identity, true, host);
                Step::Proceed
            }
            Verdict::Reply {
                status,
                message,
                www_authenticate,
                metric,
                log,
            } => {
                self.counters.add(metric);
                if let Some(line) = log {
                    host.log(Level::Error, &line);
                }
                self.reject(ctx, status, &message, www_authenticate, request_id, host)
            }
        }
    }

    fn reject(
        &mut self,
        ctx: u32,
        status: u32,
        message: &str,
        www_authenticate: Option<&str>,
        request_id: Option<&str>,
        host: &mut dyn Host,
    ) -> Step {
        send_error(host, status, message, www_authenticate, request_id);
        self.requests.insert(ctx, RequestState::Rejected);
        self.body_edits.remove(&ctx);
        Step::Stop
    }

    // -----------------------------------------------------------------------------------------
    // Realm answers
    // -----------------------------------------------------------------------------------------

    /// An HTTP call answered (or failed: `status` `None`). `current` is the context the host is
    /// calling into; requests waiting for the answer are continued one by one, those of other
    /// workers through their mailbox.
    pub fn on_call_response(
        &mut self,
        current: u32,
        token: u32,
        response: CallResponse,
        host: &mut dyn Host,
    ) {
        let Some(call) = self.calls.remove(&token) else {
            return; // given up already (deadline) or replaced by a retry
        };
        if call.orphaned && response.status.is_none() {
            // The stream that received the call went away and the host cancelled it: the tick
            // makes it again for the requests still waiting.
            self.calls.insert(token, call);
            return;
        }
        let Some(waiters) = self.shared.lookups().take(&call.key, call.id) else {
            return;
        };
        let answer = Arc::new(classify(&response));
        self.finish(current, call.key, &call.realm, waiters, answer, host);
    }

    /// Records a look-up's answer and hands it to its waiters.
    fn finish(
        &mut self,
        current: u32,
        key: LookupKey,
        realm: &RealmRef,
        waiters: Vec<Waiter>,
        answer: Arc<RealmAnswer>,
        host: &mut dyn Host,
    ) {
        let now = host.now_ms();
        let cache = self.shared.cache();
        match &*answer {
            RealmAnswer::Found {
                identity,
                ttl_ms,
                expires_at_ms,
            } => {
                self.counters.add(Metric::RealmCallsFound);
                cache.insert_found(key.cache, identity.clone(), *ttl_ms, *expires_at_ms, now);
            }
            RealmAnswer::NotFound { negative_ttl_ms } => {
                self.counters.add(Metric::RealmCallsNotFound);
                cache.insert_not_found(key.cache, *negative_ttl_ms, now);
            }
            RealmAnswer::Unavailable { cause } => {
                self.counters.add(Metric::RealmCallsUnavailable);
                log_unavailable(realm, cause, host);
            }
        }
        for w in waiters {
            if w.home == self.home {
                self.continue_waiting(w.ctx, &key, &answer, now, current, host);
            } else {
                w.post(key, &answer);
            }
        }
        host.set_effective_context(current);
    }

    /// Gives up a dead look-up: its waiters are answered "unavailable".
    fn give_up(&mut self, dead: Expired, current: u32, host: &mut dyn Host) {
        let answer = Arc::new(RealmAnswer::Unavailable {
            cause: "no answer within timeout_ms".to_string(),
        });
        self.finish(current, dead.key, &dead.realm, dead.waiters, answer, host);
    }

    /// Answers posted by other workers (see [`Mailbox`]); `current` is the context the host is
    /// calling into.
    pub fn on_mail(&mut self, current: u32, host: &mut dyn Host) {
        let mail = self.mailbox.take_all();
        if mail.is_empty() {
            return;
        }
        let now = host.now_ms();
        for d in mail {
            self.continue_waiting(d.ctx, &d.key, &d.answer, now, current, host);
        }
        host.set_effective_context(current);
    }

    /// Continues request `ctx` with the answer of the look-up it waits for.
    fn continue_waiting(
        &mut self,
        ctx: u32,
        key: &LookupKey,
        answer: &RealmAnswer,
        now: u64,
        current: u32,
        host: &mut dyn Host,
    ) {
        if !self.waits_on(ctx, key) {
            return; // gone, or its id now belongs to another request
        }
        let Some(RequestState::Waiting(mut pending)) = self.requests.remove(&ctx) else {
            return;
        };
        pending.waiting_on = None;
        host.set_effective_context(ctx);
        // The entry this request was waiting on is done with.
        pending.next_source += 1;
        let step = match answer {
            RealmAnswer::Found {
                identity,
                expires_at_ms,
                ..
            } if expires_at_ms.map(|e| now < e).unwrap_or(true) => {
                self.counters.add(Metric::RequestsAuthenticatedRealm);
                set_identity(identity, false, host);
                Step::Proceed
            }
            RealmAnswer::Found { .. } | RealmAnswer::NotFound { .. } => {
                let rid = pending.request_id.take();
                self.authenticate(ctx, current, pending, rid.as_deref(), host)
            }
            RealmAnswer::Unavailable { .. } => {
                let filter = pending.filter.clone();
                if let Some(identity) = stale(&filter, self.shared.cache(), key, now) {
                    self.counters.add(Metric::CacheStale);
                    self.counters.add(Metric::RequestsAuthenticatedRealm);
                    set_identity(&identity, false, host);
                    Step::Proceed
                } else {
                    pending.unavailable = true;
                    let rid = pending.request_id.take();
                    self.authenticate(ctx, current, pending, rid.as_deref(), host)
                }
            }
        };
        if step == Step::Proceed {
            let edit = self.body_edits.get(&ctx).map(|e| (e.seen_body, e.complete));
            match edit {
                Some((_, true)) => {
                    if let Some(edit) = self.body_edits.remove(&ctx) {
                        edit.apply(host);
                    }
                }
                Some((true, false)) => {
                    // Part of the body is held here and the rest is still coming: resuming now
                    // would send the held part upstream unedited (with the key). The request
                    // goes on when its body ends (`on_request_body` / `on_request_trailers`
                    // edit it and continue).
                    return;
                }
                // No body yet: what comes after the resume reaches the filter whole.
                Some((false, false)) | None => {}
            }
            host.resume_request();
        }
    }

    // -----------------------------------------------------------------------------------------
    // The tick
    // -----------------------------------------------------------------------------------------

    /// The periodic tick, on context `root`: applies answers posted by other workers, gives up
    /// look-ups past their deadline (any worker's), makes again the calls whose answer would be
    /// delivered to a context that no longer exists (from `root`), and refuses requests whose
    /// body never came.
    pub fn on_tick(&mut self, root: u32, host: &mut dyn Host) {
        self.on_mail(root, host);
        if self.requests.is_empty() && self.calls.is_empty() && self.shared.lookups().is_empty() {
            return;
        }
        let now = host.now_ms();
        self.expire_body_waits(root, now, host);
        for dead in self.shared.lookups().expire(now) {
            self.give_up(dead, root, host);
        }
        if self.calls.is_empty() {
            return;
        }
        let tokens: Vec<u32> = self.calls.keys().copied().collect();
        for token in tokens {
            let Some(call) = self.calls.get(&token) else {
                continue;
            };
            match self.shared.lookups().waiting(&call.key, call.id) {
                // Answered, expired or replaced elsewhere.
                None => {
                    self.calls.remove(&token);
                }
                // Nobody waits any more: forget the call if its answer cannot come.
                Some(false) => {
                    if call.orphaned {
                        if let Some(call) = self.calls.remove(&token) {
                            self.shared.lookups().take(&call.key, call.id);
                        }
                    }
                }
                Some(true) => {
                    if call.orphaned {
                        self.retry(root, token, now, host);
                    }
                }
            }
        }
    }

    /// Makes call `token` again from context `root`.
    fn retry(&mut self, root: u32, token: u32, now: u64, host: &mut dyn Host) {
        let Some(call) = self.calls.remove(&token) else {
            return;
        };
        host.set_effective_context(root);
        match self.dispatch(&call.realm, &call.secret, &call.filter, host) {
            Ok(handle) => {
                let deadline = lookup_deadline(call.filter.config(), now);
                if self.shared.lookups().extend(&call.key, call.id, deadline) {
                    self.calls.insert(
                        handle.token,
                        Call {
                            receiver: handle.receiver,
                            orphaned: false,
                            ..call
                        },
                    );
                }
            }
            Err(cause) => {
                if let Some(waiters) = self.shared.lookups().take(&call.key, call.id) {
                    let answer = Arc::new(RealmAnswer::Unavailable { cause });
                    self.finish(root, call.key, &call.realm, waiters, answer, host);
                }
            }
        }
    }

    /// Requests paused for a body whose first byte has not come within [`BODY_WAIT_MS`]: 408,
    /// instead of holding them until the stream times out. Either the client is slow, or the
    /// proxy never delivers a body to paused headers (Envoy without
    /// `allow_on_headers_stop_iteration: true`); the log line names the second cause only while
    /// no body has ever reached paused headers on this worker.
    fn expire_body_waits(&mut self, root: u32, now: u64, host: &mut dyn Host) {
        let stuck: Vec<u32> = self
            .requests
            .iter()
            .filter_map(|(ctx, state)| match state {
                RequestState::AwaitingBody {
                    seen_body: false,
                    since_ms,
                    ..
                } if now.saturating_sub(*since_ms) >= BODY_WAIT_MS => Some(*ctx),
                _ => None,
            })
            .collect();
        if stuck.is_empty() {
            return;
        }
        if self.bodies_reach_paused_headers {
            host.log(
                Level::Info,
                &format!(
                    "keyrealm: {} request(s) sent no body within {} s of their headers: answered 408",
                    stuck.len(),
                    BODY_WAIT_MS / 1000
                ),
            );
        } else {
            host.log(
                Level::Warn,
                &format!(
                    "keyrealm: {} request(s) sent no body within {} s of their headers: answered 408; if every key_in_body request ends like this, the proxy does not deliver bodies to paused headers (Envoy needs allow_on_headers_stop_iteration: true in the wasm filter config)",
                    stuck.len(),
                    BODY_WAIT_MS / 1000
                ),
            );
        }
        for ctx in stuck {
            host.set_effective_context(ctx);
            let request_id = match self.requests.get(&ctx) {
                Some(RequestState::AwaitingBody { headers, .. }) => {
                    headers.get("x-request-id").map(str::to_string)
                }
                _ => None,
            };
            self.reject(
                ctx,
                408,
                "Request body not received in time",
                None,
                request_id.as_deref(),
                host,
            );
        }
        host.set_effective_context(root);
    }
}

fn log_unavailable(realm: &RealmRef, cause: &str, host: &mut dyn Host) {
    host.log(
        Level::Error,
        &format!(
            "keyrealm: identity realm {} unavailable (cluster {}): {}",
            realm.id, realm.cluster, cause
        ),
    );
}
