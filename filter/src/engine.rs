//! The request path: what the filter does with each request, written against [`Host`] so that it
//! runs natively in tests and under proxy-wasm in Envoy.
//!
//! One [`Worker`] exists per wasm VM (per Envoy worker thread). It holds the configuration, the
//! realm answer cache, the realm look-ups under way and the requests waiting for them. A request
//! that needs a realm look-up is paused; when the answer arrives (on whichever context the host
//! delivers it to), every request waiting for that key is continued with it.

use std::collections::HashMap;
use std::rc::Rc;

use crate::cache::{CacheKey, Cached, CredentialCache, DigestMap};
use crate::config::{Config, RealmRef, Source};
use crate::extract::{
    body_kind, extract, header_name_matches, path_without_query_name, split_path, BodyKind,
    Extraction, ParsedBody, RequestParts,
};
use crate::identity::Identity;
use crate::metrics::Metric;
use crate::realm::{authenticate_body, classify, CallResponse, RealmAnswer};
use crate::sha256::{sha256, Digest};

/// Log levels the filter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// What the filter needs from the proxy. Request operations act on the *effective* context: the
/// one the host is calling into, or the one last chosen with [`Host::set_effective_context`].
pub trait Host {
    fn request_headers(&mut self) -> Vec<(String, String)>;
    /// Sets (replaces) a request header.
    fn set_request_header(&mut self, name: &str, value: &str);
    /// Adds a request header (keeping any of the same name).
    fn add_request_header(&mut self, name: &str, value: &str);
    fn remove_request_header(&mut self, name: &str);
    /// The buffered request body (`size` bytes from the start).
    fn request_body(&mut self, size: usize) -> Option<Vec<u8>>;
    /// Replaces the first `size` bytes of the buffered body (all of it) with `body`.
    fn replace_request_body(&mut self, size: usize, body: &[u8]);
    /// Answers the request locally; it does not go upstream.
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]);
    /// Lets a paused request continue upstream.
    fn resume_request(&mut self);
    /// Starts an HTTP call; the answer comes later through [`Worker::on_call_response`] with the
    /// returned token.
    fn dispatch_call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, String>;
    /// Milliseconds since the Unix epoch.
    fn now_ms(&mut self) -> u64;
    fn log(&mut self, level: Level, message: &str);
    fn increment(&mut self, metric: Metric);
    fn set_effective_context(&mut self, context_id: u32);
}

/// What a request callback tells the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// The outcome of a decision: the request goes upstream, or it stays where it is (paused for a
/// look-up, or answered locally).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Proceed,
    Stop,
}

/// Why authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    NoKey,
    Duplicate,
    Unauthorized,
    Unavailable,
}

/// Headers a client may not send: the filter sets them.
pub const CONSUMER_HEADERS: [&str; 6] = [
    "x-consumer-id",
    "x-consumer-custom-id",
    "x-consumer-username",
    "x-credential-identifier",
    "x-anonymous-consumer",
    "x-consumer-groups",
];

const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// A request that is waiting for a realm answer.
struct Pending {
    config: Rc<Config>,
    key: String,
    digest: Digest,
    /// The next `identity_realms` entry to try.
    next_source: usize,
    unavailable: bool,
    request_id: Option<String>,
    /// The look-up this request waits for (set when it starts waiting). A host may give a
    /// finished stream's context id to a new request: only a request that waits for *this*
    /// (realm, key) takes a look-up's answer.
    waiting_on: Option<CacheKey>,
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

/// A body edit (`hide_credentials`) to make when the body arrives after a decision on headers.
struct BodyEdit {
    config: Rc<Config>,
    name: usize,
    content_type: Option<String>,
    body_size: usize,
    /// The whole body has arrived (while the request waited for a realm answer).
    complete: bool,
}

enum RequestState {
    /// Headers seen; the body is being buffered (key_in_body).
    AwaitingBody {
        config: Rc<Config>,
        headers: Vec<(String, String)>,
        body_size: usize,
        since_ms: u64,
        seen_body: bool,
    },
    /// Waiting for a realm look-up.
    Waiting(Pending),
    /// Answered locally; nothing of it may continue.
    Rejected,
}

/// A realm call under way, shared by every request that needs the same (realm, key).
struct Lookup {
    token: u32,
    /// The context the host will deliver the answer to; if it goes away first, the answer is lost
    /// and the look-up is repeated from the root context.
    receiver: u32,
    realm: Rc<RealmRef>,
    participants: Vec<u32>,
    deadline_ms: u64,
    orphaned: bool,
}

/// How long a request paused for its body may wait for the first of it (see `expire_body_waits`).
pub const BODY_WAIT_MS: u64 = 10_000;

/// Extra time past `timeout_ms` after which a look-up without answer is given up by the tick.
const DEADLINE_GRACE_MS: u64 = 500;

/// When a realm call started at `now` is given up if no answer came: its timeout plus the grace.
fn lookup_deadline(config: &Config, now: u64) -> u64 {
    let timeout = config.realm_service.as_ref().map_or(0, |rs| rs.timeout_ms);
    now + timeout + DEADLINE_GRACE_MS
}

/// The per-VM state of the filter.
pub struct Worker {
    config: Rc<Config>,
    cache: CredentialCache,
    realm_slots: HashMap<String, u32>,
    requests: HashMap<u32, RequestState>,
    body_edits: HashMap<u32, BodyEdit>,
    lookups: DigestMap<Lookup>,
    tokens: HashMap<u32, CacheKey>,
}

impl Worker {
    pub fn new(config: Config) -> Worker {
        let mut worker = Worker {
            config: Rc::new(config),
            cache: CredentialCache::new(0, 0),
            realm_slots: HashMap::new(),
            requests: HashMap::new(),
            body_edits: HashMap::new(),
            lookups: DigestMap::default(),
            tokens: HashMap::new(),
        };
        worker.apply_limits();
        worker
    }

    /// Takes a new configuration. Cached realm answers are kept (they are keyed by realm id);
    /// requests already under way finish with the configuration they started with.
    pub fn configure(&mut self, config: Config) {
        self.config = Rc::new(config);
        self.apply_limits();
    }

    fn apply_limits(&mut self) {
        let (found, not_found) = match &self.config.realm_service {
            Some(rs) => (rs.max_cached_found, rs.max_cached_not_found),
            None => (0, 0),
        };
        self.cache.set_limits(found, not_found);
        let config = self.config.clone();
        for source in &config.sources {
            if let Source::Realm(r) = source {
                let slot = self.slot(&r.id);
                r.slot.set(slot);
            }
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Requests holding state (waiting for a body or an answer, or rejected): for tests.
    pub fn tracked_requests(&self) -> usize {
        self.requests.len()
    }

    /// Realm calls under way.
    pub fn lookups_in_flight(&self) -> usize {
        self.lookups.len()
    }

    fn slot(&mut self, realm_id: &str) -> u32 {
        if let Some(s) = self.realm_slots.get(realm_id) {
            return *s;
        }
        let s = self.realm_slots.len() as u32;
        self.realm_slots.insert(realm_id.to_string(), s);
        s
    }

    // -----------------------------------------------------------------------------------------
    // Request callbacks
    // -----------------------------------------------------------------------------------------

    pub fn on_request_headers(
        &mut self,
        ctx: u32,
        end_of_stream: bool,
        host: &mut dyn Host,
    ) -> Action {
        let config = self.config.clone();
        let headers = host.request_headers();
        strip_consumer_headers(&headers, host);
        if !config.run_on_preflight && header(&headers, ":method") == Some("OPTIONS") {
            host.increment(Metric::RequestsPreflight);
            return Action::Continue;
        }
        // Only form, JSON and multipart bodies can carry the key: another body is not waited
        // for (it would be buffered whole for nothing).
        let body = if config.key_in_body
            && !end_of_stream
            && body_kind(header(&headers, "content-type")) != BodyKind::Other
        {
            BodyInput::Pending
        } else {
            BodyInput::Absent
        };
        let step = self.decide(ctx, ctx, &config, &headers, body, host);
        sync_action(step)
    }

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
                if let Some(edit) = self.body_edits.get_mut(&ctx) {
                    edit.body_size = body_size;
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
                if !end_of_stream {
                    return Action::Pause;
                }
                self.body_complete(ctx, host)
            }
            None => match self.body_edits.get_mut(&ctx) {
                None => Action::Continue,
                Some(edit) => {
                    edit.body_size = body_size;
                    if !end_of_stream {
                        return Action::Pause;
                    }
                    self.apply_body_edit(ctx, host);
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
                self.apply_body_edit(ctx, host);
                Action::Continue
            }
        }
    }

    fn body_complete(&mut self, ctx: u32, host: &mut dyn Host) -> Action {
        let Some(RequestState::AwaitingBody {
            config,
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
        let step = self.decide(ctx, ctx, &config, &headers, body, host);
        sync_action(step)
    }

    /// `hide_credentials` in a body that arrives after the decision was made on the headers.
    fn apply_body_edit(&mut self, ctx: u32, host: &mut dyn Host) {
        let Some(edit) = self.body_edits.remove(&ctx) else {
            return;
        };
        if edit.body_size == 0 {
            return;
        }
        let Some(bytes) = host.request_body(edit.body_size) else {
            return;
        };
        let parsed = ParsedBody::parse(edit.content_type.as_deref(), &bytes);
        if let Some(key_name) = edit.config.key_names.get(edit.name) {
            if let Some(new_body) = parsed.without(&key_name.name) {
                host.replace_request_body(edit.body_size, &new_body);
            }
        }
    }

    /// The stream is over (completed or reset): forget it.
    pub fn on_done(&mut self, ctx: u32) {
        self.requests.remove(&ctx);
        self.body_edits.remove(&ctx);
        if self.lookups.is_empty() {
            return;
        }
        for lookup in self.lookups.values_mut() {
            if lookup.receiver == ctx {
                lookup.orphaned = true;
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
        config: &Rc<Config>,
        headers: &[(String, String)],
        body: BodyInput,
        host: &mut dyn Host,
    ) -> Step {
        let path = header(headers, ":path");
        let query = path.and_then(|p| split_path(p).1);
        let content_type = header(headers, "content-type");
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
                headers,
                query,
                body: parsed_body.as_ref(),
            },
        );
        let request_id = header(headers, "x-request-id");
        // A key found on the headers while a body is still to come: the headers go on, and
        // hide_credentials may have to remove the name from the body afterwards, which changes
        // its length. The proxy frames it then.
        let body_edit_ahead = config.hide_credentials
            && config.key_in_body
            && matches!(body, BodyInput::Pending)
            && body_kind(content_type) != BodyKind::Other
            && matches!(extraction, Extraction::Key { .. });
        if body_edit_ahead && header(headers, "content-length").is_some() {
            host.remove_request_header("content-length");
        }
        let failure = match extraction {
            Extraction::NeedBody => {
                // The body decides: wait for all of it with the headers paused. (Envoy needs
                // `allow_on_headers_stop_iteration: true` to deliver a body to a filter that
                // paused its headers; docs/configuration.md.)
                let now = host.now_ms();
                self.requests.insert(
                    ctx,
                    RequestState::AwaitingBody {
                        config: config.clone(),
                        headers: headers.to_vec(),
                        body_size: 0,
                        since_ms: now,
                        seen_body: false,
                    },
                );
                return Step::Stop;
            }
            Extraction::Key { value, name } => {
                if config.hide_credentials {
                    hide_in_headers(config, name, headers, path, host);
                    if let Some(parsed) = &parsed_body {
                        if config.key_in_body && body_size > 0 {
                            hide_in_body(config, name, parsed, body_size, headers, host);
                        }
                    }
                    if body_edit_ahead {
                        self.body_edits.insert(
                            ctx,
                            BodyEdit {
                                config: config.clone(),
                                name,
                                content_type: content_type.map(str::to_string),
                                body_size: 0,
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
                        config: config.clone(),
                        key: value,
                        digest,
                        next_source: 0,
                        unavailable: false,
                        request_id: None,
                        waiting_on: None,
                    };
                    return self.walk(ctx, current, pending, request_id, host);
                }
            }
            Extraction::Duplicate => Failure::Duplicate,
            Extraction::NoKey => Failure::NoKey,
        };
        self.fail(ctx, config, request_id, failure, host)
    }

    /// Tries the `identity_realms` entries from `pending.next_source` on.
    /// `request_id` is kept in `pending` only if the request has to wait (no allocation on the
    /// common path).
    fn walk(
        &mut self,
        ctx: u32,
        current: u32,
        mut pending: Pending,
        request_id: Option<&str>,
        host: &mut dyn Host,
    ) -> Step {
        let config = pending.config.clone();
        // The clock is read only when an entry needs it (a cp key without ttl does not).
        let mut clock: Option<u64> = None;
        while let Some(source) = config.sources.get(pending.next_source) {
            pending.next_source += 1;
            match source {
                Source::ControlPlane => {
                    if let Some(cred) = config.credentials.get(&pending.digest) {
                        if cred
                            .expires_at_ms
                            .map(|e| now(&mut clock, host) < e)
                            .unwrap_or(true)
                        {
                            host.increment(Metric::RequestsAuthenticatedCp);
                            set_identity(&cred.identity, false, host);
                            return Step::Proceed;
                        }
                    }
                }
                Source::Realm(realm) => {
                    let key = CacheKey {
                        realm: match realm.slot.get() {
                            u32::MAX => self.slot(&realm.id),
                            slot => slot,
                        },
                        digest: pending.digest,
                    };
                    let now = now(&mut clock, host);
                    match self.cache.lookup(&key, now) {
                        Cached::Found(identity) => {
                            host.increment(Metric::CacheHit);
                            host.increment(Metric::RequestsAuthenticatedRealm);
                            set_identity(&identity, false, host);
                            return Step::Proceed;
                        }
                        Cached::NotFound => {
                            host.increment(Metric::CacheHit);
                            continue;
                        }
                        Cached::Miss => host.increment(Metric::CacheMiss),
                    }
                    if self
                        .lookups
                        .get(&key)
                        .map(|l| now >= l.deadline_ms)
                        .unwrap_or(false)
                    {
                        // A look-up past its deadline is dead (the tick has not run yet): give
                        // it up as the tick would, so that the requests waiting on it are
                        // answered now rather than left paused, then ask again for this one.
                        if let Some(dead) = self.lookups.remove(&key) {
                            self.tokens.remove(&dead.token);
                            let cause = "no answer within timeout_ms".to_string();
                            self.resolve(
                                current,
                                key,
                                dead,
                                RealmAnswer::Unavailable { cause },
                                host,
                            );
                            // `resolve` acted on each waiting request's context.
                            host.set_effective_context(ctx);
                        }
                    }
                    if let Some(lookup) = self.lookups.get_mut(&key) {
                        // One call at a time per key: wait for the one under way.
                        host.increment(Metric::RealmCallsCoalesced);
                        lookup.participants.push(ctx);
                        pending.next_source -= 1;
                        pending.request_id = request_id.map(str::to_string);
                        pending.waiting_on = Some(key);
                        self.requests.insert(ctx, RequestState::Waiting(pending));
                        return Step::Stop;
                    }
                    match self.dispatch(realm, &pending.key, &config, host) {
                        Ok(token) => {
                            self.lookups.insert(
                                key,
                                Lookup {
                                    token,
                                    receiver: current,
                                    realm: realm.clone(),
                                    participants: vec![ctx],
                                    deadline_ms: lookup_deadline(&config, now),
                                    orphaned: false,
                                },
                            );
                            self.tokens.insert(token, key);
                            pending.next_source -= 1;
                            pending.request_id = request_id.map(str::to_string);
                            pending.waiting_on = Some(key);
                            self.requests.insert(ctx, RequestState::Waiting(pending));
                            return Step::Stop;
                        }
                        Err(cause) => {
                            host.increment(Metric::RealmCallsUnavailable);
                            log_unavailable(realm, &cause, host);
                            if let Some(identity) = self.stale(&config, &key, now) {
                                host.increment(Metric::CacheStale);
                                host.increment(Metric::RequestsAuthenticatedRealm);
                                set_identity(&identity, false, host);
                                return Step::Proceed;
                            }
                            pending.unavailable = true;
                        }
                    }
                }
            }
        }
        let failure = if pending.unavailable {
            Failure::Unavailable
        } else {
            Failure::Unauthorized
        };
        self.fail(ctx, &config, request_id, failure, host)
    }

    /// Whether request `ctx` is waiting for the look-up of `key`.
    fn waits_on(&self, ctx: u32, key: &CacheKey) -> bool {
        matches!(
            self.requests.get(&ctx),
            Some(RequestState::Waiting(p)) if p.waiting_on.as_ref() == Some(key)
        )
    }

    fn stale(&self, config: &Config, key: &CacheKey, now: u64) -> Option<Rc<Identity>> {
        let stale_ms = config.realm_service.as_ref()?.stale_if_error_ms;
        self.cache.stale(key, now, stale_ms)
    }

    fn dispatch(
        &self,
        realm: &RealmRef,
        key: &str,
        config: &Config,
        host: &mut dyn Host,
    ) -> Result<u32, String> {
        let Some(rs) = &config.realm_service else {
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
        host.dispatch_call(&realm.cluster, &headers, &body, rs.timeout_ms)
            .map_err(|e| format!("the call could not be started: {e}"))
    }

    fn fail(
        &mut self,
        ctx: u32,
        config: &Config,
        request_id: Option<&str>,
        failure: Failure,
        host: &mut dyn Host,
    ) -> Step {
        if let Some(anonymous) = &config.anonymous {
            return match &anonymous.identity {
                Some(identity) => {
                    host.increment(Metric::RequestsAnonymous);
                    set_identity(identity, true, host);
                    Step::Proceed
                }
                None => {
                    host.increment(Metric::RequestsAnonymousMissing);
                    host.log(
                        Level::Error,
                        &format!(
                            "keyrealm: anonymous consumer {:?} is configured but doesn't exist",
                            anonymous.value
                        ),
                    );
                    let message = format!(
                        "anonymous consumer {} is configured but doesn't exist",
                        anonymous.value
                    );
                    self.reject(ctx, 500, &message, None, request_id, host)
                }
            };
        }
        let (status, message, metric) = match failure {
            Failure::NoKey => (401, "No API key found in request", Metric::RequestsNoKey),
            Failure::Duplicate => (401, "Duplicate API key found", Metric::RequestsDuplicate),
            Failure::Unauthorized => (401, "Unauthorized", Metric::RequestsUnauthorized),
            Failure::Unavailable => (
                503,
                "Identity realm unavailable",
                Metric::RequestsUnavailable,
            ),
        };
        host.increment(metric);
        let www = (status == 401).then_some(config.www_authenticate.as_str());
        self.reject(ctx, status, message, www, request_id, host)
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
        let body = error_body(message, request_id);
        let mut headers: Vec<(&str, &str)> = vec![("content-type", JSON_CONTENT_TYPE)];
        if let Some(www) = www_authenticate {
            headers.push(("www-authenticate", www));
        }
        host.send_response(status, &headers, &body);
        self.requests.insert(ctx, RequestState::Rejected);
        Step::Stop
    }

    // -----------------------------------------------------------------------------------------
    // Realm answers
    // -----------------------------------------------------------------------------------------

    /// An HTTP call answered (or failed: `status` `None`). `current` is the context the host is
    /// calling into; request contexts waiting for the answer are continued one by one.
    pub fn on_call_response(
        &mut self,
        current: u32,
        token: u32,
        response: CallResponse,
        host: &mut dyn Host,
    ) {
        let Some(key) = self.tokens.remove(&token) else {
            return; // given up already (deadline) or replaced by a retry
        };
        let Some(lookup) = self.lookups.remove(&key) else {
            return;
        };
        let answer = classify(&response);
        self.resolve(current, key, lookup, answer, host);
    }

    fn resolve(
        &mut self,
        current: u32,
        key: CacheKey,
        lookup: Lookup,
        answer: RealmAnswer,
        host: &mut dyn Host,
    ) {
        let now = host.now_ms();
        match &answer {
            RealmAnswer::Found {
                identity,
                ttl_ms,
                expires_at_ms,
            } => {
                host.increment(Metric::RealmCallsFound);
                self.cache
                    .insert_found(key, identity.clone(), *ttl_ms, *expires_at_ms, now);
            }
            RealmAnswer::NotFound { negative_ttl_ms } => {
                host.increment(Metric::RealmCallsNotFound);
                self.cache.insert_not_found(key, *negative_ttl_ms, now);
            }
            RealmAnswer::Unavailable { cause } => {
                host.increment(Metric::RealmCallsUnavailable);
                log_unavailable(&lookup.realm, cause, host);
            }
        }
        for ctx in lookup.participants {
            if !self.waits_on(ctx, &key) {
                continue; // gone, or its id now belongs to another request
            }
            let Some(RequestState::Waiting(mut pending)) = self.requests.remove(&ctx) else {
                continue;
            };
            pending.waiting_on = None;
            host.set_effective_context(ctx);
            // The entry this request was waiting on is done with.
            pending.next_source += 1;
            let step = match &answer {
                RealmAnswer::Found {
                    identity,
                    expires_at_ms,
                    ..
                } => {
                    if expires_at_ms.map(|e| now < e).unwrap_or(true) {
                        host.increment(Metric::RequestsAuthenticatedRealm);
                        set_identity(identity, false, host);
                        Step::Proceed
                    } else {
                        let rid = pending.request_id.take();
                        self.walk(ctx, current, pending, rid.as_deref(), host)
                    }
                }
                RealmAnswer::NotFound { .. } => {
                    let rid = pending.request_id.take();
                    self.walk(ctx, current, pending, rid.as_deref(), host)
                }
                RealmAnswer::Unavailable { .. } => {
                    let config = pending.config.clone();
                    if let Some(identity) = self.stale(&config, &key, now) {
                        host.increment(Metric::CacheStale);
                        host.increment(Metric::RequestsAuthenticatedRealm);
                        set_identity(&identity, false, host);
                        Step::Proceed
                    } else {
                        pending.unavailable = true;
                        let rid = pending.request_id.take();
                        self.walk(ctx, current, pending, rid.as_deref(), host)
                    }
                }
            };
            if step == Step::Proceed {
                if self
                    .body_edits
                    .get(&ctx)
                    .map(|e| e.complete)
                    .unwrap_or(false)
                {
                    self.apply_body_edit(ctx, host);
                }
                host.resume_request();
            }
        }
        host.set_effective_context(current);
    }

    /// The periodic tick (root context): gives up look-ups past their deadline and repeats those
    /// whose answer would be delivered to a context that no longer exists.
    pub fn on_tick(&mut self, root: u32, host: &mut dyn Host) {
        if self.requests.is_empty() && self.lookups.is_empty() {
            return;
        }
        let now = host.now_ms();
        self.expire_body_waits(root, now, host);
        if self.lookups.is_empty() {
            return;
        }
        let keys: Vec<CacheKey> = self.lookups.keys().copied().collect();
        for key in keys {
            let Some(lookup) = self.lookups.get(&key) else {
                continue;
            };
            let live: Vec<u32> = lookup
                .participants
                .iter()
                .copied()
                .filter(|p| self.waits_on(*p, &key))
                .collect();
            let expired = now >= lookup.deadline_ms;
            if live.is_empty() {
                if expired || lookup.orphaned {
                    if let Some(l) = self.lookups.remove(&key) {
                        self.tokens.remove(&l.token);
                    }
                }
                continue;
            }
            if expired {
                if let Some(l) = self.lookups.remove(&key) {
                    self.tokens.remove(&l.token);
                    let cause = "no answer within timeout_ms".to_string();
                    self.resolve(root, key, l, RealmAnswer::Unavailable { cause }, host);
                }
                continue;
            }
            if lookup.orphaned {
                self.retry_from_root(root, key, &live, now, host);
            }
        }
    }

    /// Requests paused for a body that never comes: in Envoy, a filter that pauses its headers
    /// gets no body unless the plugin has `allow_on_headers_stop_iteration: true`. Refuse them
    /// (500) with a log line saying so, instead of holding them until the stream times out.
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
        host.log(
            Level::Error,
            &format!(
                "keyrealm: {} request(s) waited {} s for a body the proxy never delivered; with key_in_body, Envoy needs allow_on_headers_stop_iteration: true in the wasm filter config",
                stuck.len(),
                BODY_WAIT_MS / 1000
            ),
        );
        for ctx in stuck {
            host.set_effective_context(ctx);
            let request_id = match self.requests.get(&ctx) {
                Some(RequestState::AwaitingBody { headers, .. }) => {
                    header(headers, "x-request-id").map(str::to_string)
                }
                _ => None,
            };
            self.reject(
                ctx,
                500,
                "An unexpected error occurred",
                None,
                request_id.as_deref(),
                host,
            );
        }
        host.set_effective_context(root);
    }

    fn retry_from_root(
        &mut self,
        root: u32,
        key: CacheKey,
        live: &[u32],
        now: u64,
        host: &mut dyn Host,
    ) {
        let Some(Some(RequestState::Waiting(pending))) = live.first().map(|p| self.requests.get(p))
        else {
            return;
        };
        let config = pending.config.clone();
        let Some(Source::Realm(realm)) = config.sources.get(pending.next_source) else {
            return;
        };
        let result = self.dispatch(realm, &pending.key, &config, host);
        let Some(mut lookup) = self.lookups.remove(&key) else {
            return;
        };
        self.tokens.remove(&lookup.token);
        match result {
            Ok(token) => {
                lookup.token = token;
                lookup.receiver = root;
                lookup.orphaned = false;
                lookup.deadline_ms = lookup_deadline(&config, now);
                self.tokens.insert(token, key);
                self.lookups.insert(key, lookup);
            }
            Err(cause) => {
                self.resolve(root, key, lookup, RealmAnswer::Unavailable { cause }, host);
            }
        }
    }
}

/// The time, read from the host once per decision and only if needed.
fn now(clock: &mut Option<u64>, host: &mut dyn Host) -> u64 {
    *clock.get_or_insert_with(|| host.now_ms())
}

fn sync_action(step: Step) -> Action {
    match step {
        Step::Proceed => Action::Continue,
        Step::Stop => Action::Pause,
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Removes client-sent consumer headers (also spelled with `_`).
fn strip_consumer_headers(headers: &[(String, String)], host: &mut dyn Host) {
    let mut removed: Vec<&str> = Vec::new();
    for (name, _) in headers {
        let b = name.as_bytes();
        if b.len() < 13 || !b[0].eq_ignore_ascii_case(&b'x') || !matches!(b[1], b'-' | b'_') {
            continue;
        }
        if CONSUMER_HEADERS
            .iter()
            .any(|c| header_name_matches(name, c))
            && !removed.contains(&name.as_str())
        {
            removed.push(name);
            host.remove_request_header(name);
        }
    }
}

/// Adds the consumer headers (client-sent copies were removed on the headers, so adding is
/// enough).
fn set_identity(identity: &Identity, anonymous: bool, host: &mut dyn Host) {
    host.add_request_header("x-consumer-id", &identity.consumer_id);
    if let Some(v) = &identity.custom_id {
        host.add_request_header("x-consumer-custom-id", v);
    }
    if let Some(v) = &identity.username {
        host.add_request_header("x-consumer-username", v);
    }
    if anonymous {
        host.add_request_header("x-anonymous-consumer", "true");
        return;
    }
    if let Some(v) = &identity.credential_id {
        host.add_request_header("x-credential-identifier", v);
    }
    if let Some(v) = &identity.groups {
        host.add_request_header("x-consumer-groups", v);
    }
}

/// `hide_credentials` in the headers and the query string.
fn hide_in_headers(
    config: &Config,
    name: usize,
    headers: &[(String, String)],
    path: Option<&str>,
    host: &mut dyn Host,
) {
    let Some(key_name) = config.key_names.get(name) else {
        return;
    };
    let mut removed: Vec<&str> = Vec::new();
    for (h, _) in headers {
        if !h.starts_with(':')
            && header_name_matches(h, &key_name.header_form)
            && !removed.contains(&h.as_str())
        {
            removed.push(h);
            host.remove_request_header(h);
        }
    }
    if let Some(path) = path {
        if let Some(new_path) = path_without_query_name(path, &key_name.name) {
            host.set_request_header(":path", &new_path);
        }
    }
}

/// `hide_credentials` in a buffered body (re-encoded in its own content type), with its headers
/// still paused: the length is corrected.
fn hide_in_body(
    config: &Config,
    name: usize,
    body: &ParsedBody,
    body_size: usize,
    headers: &[(String, String)],
    host: &mut dyn Host,
) {
    let Some(key_name) = config.key_names.get(name) else {
        return;
    };
    if let Some(new_body) = body.without(&key_name.name) {
        host.replace_request_body(body_size, &new_body);
        if header(headers, "content-length").is_some() {
            host.set_request_header("content-length", &new_body.len().to_string());
        }
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

/// `{"message": "...", "request_id": "..."}`.
pub fn error_body(message: &str, request_id: Option<&str>) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("message".into(), serde_json::Value::String(message.into()));
    if let Some(id) = request_id {
        map.insert("request_id".into(), serde_json::Value::String(id.into()));
    }
    serde_json::to_vec(&serde_json::Value::Object(map))
        .unwrap_or_else(|_| b"{\"message\":\"error\"}".to_vec())
}
