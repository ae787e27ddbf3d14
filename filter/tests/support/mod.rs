//! A fake proxy for driving the engine (`keyrealm_filter::engine::Worker`) natively.
//!
//! It behaves like Envoy where that matters to the filter: a request paused on its headers gets no
//! body callbacks until it is resumed (unless `body_with_paused_headers`, Envoy's
//! `allow_on_headers_stop_iteration`); request headers can only be changed before they continue
//! (changing them later fails the test, as Envoy refuses it); HTTP call answers are delivered
//! later, by the test, through `answer`. A body may come in several chunks ([`Req::chunks`],
//! [`Harness::next_chunk`]): the first arrives with the headers; what the filter holds goes
//! upstream as it is when the filter resumes the request or continues a chunk, as in Envoy.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use keyrealm_filter::config::{self, Config};
use keyrealm_filter::engine::{
    Action, CallHandle, CallRequest, Filter, Headers, Host, Level, SharedState, Worker,
};
use keyrealm_filter::metrics::Metric;
use keyrealm_filter::realm::CallResponse;

pub const ROOT: u32 = 1;

#[derive(Debug, Clone)]
pub struct Call {
    pub token: u32,
    pub receiver: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub timeout_ms: u64,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A local response: status, headers, body.
pub type LocalResponse = (u32, Vec<(String, String)>, Vec<u8>);

#[derive(Debug, Clone, Default)]
pub struct FakeRequest {
    pub headers: Vec<(String, String)>,
    pub has_body: bool,
    /// Chunks the client has not sent yet.
    pub chunks: VecDeque<Vec<u8>>,
    /// The client has sent all of the body.
    pub client_done: bool,
    /// Body that reached the proxy but not the filter (headers paused without
    /// `body_with_paused_headers`).
    pub proxy_buffer: Vec<u8>,
    /// Body given to the filter and held by it (what `request_body` reads).
    pub held: Vec<u8>,
    /// The filter got the end of the body.
    pub end_delivered: bool,
    /// Body that went upstream.
    pub upstream_body: Vec<u8>,
    pub headers_continued: bool,
    pub finished_upstream: bool,
    pub response: Option<LocalResponse>,
    pub resumed: bool,
    pub done: bool,
}

#[derive(Default)]
pub struct FakeHost {
    pub now: u64,
    pub effective: u32,
    pub requests: HashMap<u32, FakeRequest>,
    pub calls: Vec<Call>,
    pub next_token: u32,
    pub refuse_dispatch: Option<String>,
    pub logs: Vec<(Level, String)>,
    pub metrics: HashMap<Metric, u64>,
    pub resumed: Vec<u32>,
}

impl FakeHost {
    fn req(&mut self) -> &mut FakeRequest {
        let ctx = self.effective;
        self.requests
            .get_mut(&ctx)
            .unwrap_or_else(|| panic!("no request for context {ctx}"))
    }

    fn writable(&mut self, what: &str) {
        let r = self.req();
        assert!(
            !r.headers_continued,
            "{what}: request headers changed after they continued (Envoy refuses this)"
        );
    }
}

impl Host for FakeHost {
    fn request_headers(&mut self) -> Headers {
        self.req().headers.iter().map(|(n, v)| (n, v)).collect()
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        self.writable(name);
        let r = self.req();
        r.headers.retain(|(n, _)| n != name);
        r.headers.push((name.to_string(), value.to_string()));
    }

    fn add_request_header(&mut self, name: &str, value: &str) {
        self.writable(name);
        self.req()
            .headers
            .push((name.to_string(), value.to_string()));
    }

    fn remove_request_header(&mut self, name: &str) {
        self.writable(name);
        self.req().headers.retain(|(n, _)| n != name);
    }

    fn request_body(&mut self, size: usize) -> Option<Vec<u8>> {
        let r = self.req();
        assert!(
            size <= r.held.len(),
            "body read beyond what the filter holds"
        );
        Some(r.held[..size].to_vec())
    }

    fn replace_request_body(&mut self, size: usize, body: &[u8]) {
        let r = self.req();
        assert_eq!(size, r.held.len(), "the whole held body is replaced");
        r.held = body.to_vec();
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        let r = self.req();
        assert!(r.response.is_none(), "two local responses");
        r.response = Some((
            status,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body.to_vec(),
        ));
    }

    fn resume_request(&mut self) {
        let ctx = self.effective;
        self.req().resumed = true;
        self.resumed.push(ctx);
    }

    fn dispatch_call(&mut self, call: &CallRequest<'_>) -> Result<CallHandle, String> {
        if let Some(e) = &self.refuse_dispatch {
            return Err(e.clone());
        }
        self.next_token += 1;
        let token = self.next_token;
        let receiver = self.current_receiver();
        self.calls.push(Call {
            token,
            receiver,
            cluster: call.cluster.to_string(),
            headers: call
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: String::from_utf8(call.body.to_vec()).unwrap(),
            timeout_ms: call.timeout_ms,
        });
        Ok(CallHandle { token, receiver })
    }

    fn now_ms(&mut self) -> u64 {
        self.now
    }

    fn log(&mut self, level: Level, message: &str) {
        self.logs.push((level, message.to_string()));
    }

    fn set_effective_context(&mut self, context_id: u32) {
        self.effective = context_id;
    }
}

impl FakeHost {
    /// The SDK files a call under the context it is calling into (not the effective one).
    fn current_receiver(&self) -> u32 {
        CURRENT.with(|c| *c.borrow())
    }
}

thread_local! {
    static CURRENT: std::cell::RefCell<u32> = const { std::cell::RefCell::new(0) };
}

fn set_current(ctx: u32) {
    CURRENT.with(|c| *c.borrow_mut() = ctx);
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It went upstream with these headers and body.
    Upstream {
        headers: Vec<(String, String)>,
        body: String,
    },
    /// The filter answered it.
    Local {
        status: u32,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Still held by the filter.
    Paused,
}

impl Outcome {
    pub fn status(&self) -> u32 {
        match self {
            Outcome::Upstream { .. } => 200,
            Outcome::Local { status, .. } => *status,
            Outcome::Paused => 0,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let headers = match self {
            Outcome::Upstream { headers, .. } | Outcome::Local { headers, .. } => headers,
            Outcome::Paused => return None,
        };
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        match self {
            Outcome::Upstream { headers, .. } | Outcome::Local { headers, .. } => {
                headers.iter().filter(|(n, _)| n == name).count()
            }
            Outcome::Paused => 0,
        }
    }

    pub fn body(&self) -> &str {
        match self {
            Outcome::Upstream { body, .. } | Outcome::Local { body, .. } => body,
            Outcome::Paused => "",
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.body()).unwrap()
    }

    pub fn message(&self) -> String {
        self.json()["message"].as_str().unwrap().to_string()
    }

    pub fn path(&self) -> Option<&str> {
        self.header(":path")
    }
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct Req {
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub chunks: Vec<Vec<u8>>,
}

impl Req {
    pub fn get(path: &str) -> Req {
        Req::new("GET", path)
    }

    pub fn new(method: &str, path: &str) -> Req {
        Req {
            headers: vec![
                (":method".into(), method.into()),
                (":path".into(), path.into()),
                (":authority".into(), "example.test".into()),
                ("x-request-id".into(), "req-1".into()),
            ],
            body: None,
            chunks: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn without_header(mut self, name: &str) -> Req {
        self.headers.retain(|(n, _)| n != name);
        self
    }

    pub fn body(mut self, content_type: &str, body: &str) -> Req {
        self.headers
            .push(("content-type".into(), content_type.into()));
        self.headers
            .push(("content-length".into(), body.len().to_string()));
        self.body = Some(body.as_bytes().to_vec());
        self
    }

    pub fn raw_body(mut self, body: &str) -> Req {
        self.body = Some(body.as_bytes().to_vec());
        self
    }

    /// A body sent in chunks (without content-length): the first arrives with the headers, the
    /// others when the test calls [`Harness::next_chunk`].
    pub fn chunks(mut self, content_type: &str, chunks: &[&str]) -> Req {
        self.headers
            .push(("content-type".into(), content_type.into()));
        self.chunks = chunks.iter().map(|c| c.as_bytes().to_vec()).collect();
        self
    }
}

/// A worker, the state it shares, the filter of the current root context, and a fake host.
pub struct Harness {
    pub shared: Arc<SharedState>,
    /// The configuration new requests run under (the latest root context).
    pub filter: Arc<Filter>,
    pub worker: Worker,
    pub host: FakeHost,
    /// Whether a request paused on its headers still gets its body (Envoy with
    /// `allow_on_headers_stop_iteration: true`); without it the body waits for the resume.
    pub body_with_paused_headers: bool,
    next_ctx: u32,
}

pub fn parse_config(json: &str) -> Config {
    config::parse(json.as_bytes(), 1_000_000, &|name| {
        (name == "KEYREALM_DP_TOKEN").then(|| "dp-token".to_string())
    })
    .unwrap_or_else(|e| panic!("config refused: {e}"))
}

impl Harness {
    pub fn new(json: &str) -> Harness {
        let shared = SharedState::new(1);
        Harness {
            filter: Filter::new(parse_config(json), &shared),
            worker: Worker::new(shared.clone()),
            shared,
            host: FakeHost {
                now: 1_000_000,
                ..FakeHost::default()
            },
            body_with_paused_headers: true,
            next_ctx: 100,
        }
    }

    /// A new root context with this configuration, as Envoy creates on a configuration change
    /// (in the same VM): new requests run under it; requests under way keep theirs.
    pub fn new_root(&mut self, json: &str) {
        self.filter = Filter::new(parse_config(json), &self.shared);
    }

    /// Starts a request; returns its context id. It runs as far as the filter lets it.
    pub fn start(&mut self, req: Req) -> u32 {
        self.next_ctx += 1;
        let ctx = self.next_ctx;
        self.start_as(ctx, req);
        ctx
    }

    /// Starts a request on a given context id (a host may reuse the id of a finished stream).
    pub fn start_as(&mut self, ctx: u32, req: Req) {
        let mut chunks: VecDeque<Vec<u8>> = match req.body {
            Some(body) => VecDeque::from([body]),
            None => req.chunks.into(),
        };
        let has_body = !chunks.is_empty();
        // The first chunk arrives with the headers.
        let first = chunks.pop_front().unwrap_or_default();
        self.host.requests.insert(
            ctx,
            FakeRequest {
                headers: req.headers,
                has_body,
                client_done: chunks.is_empty(),
                chunks,
                proxy_buffer: first,
                ..FakeRequest::default()
            },
        );
        self.host.effective = ctx;
        set_current(ctx);
        let filter = self.filter.clone();
        let action = self
            .worker
            .on_request_headers(&filter, ctx, !has_body, &mut self.host);
        self.after_headers(ctx, action);
        self.pump();
    }

    /// Sends a request and returns what became of it.
    pub fn send(&mut self, req: Req) -> Outcome {
        let ctx = self.start(req);
        self.outcome(ctx)
    }

    fn after_headers(&mut self, ctx: u32, action: Action) {
        let r = self.host.requests.get_mut(&ctx).unwrap();
        if action == Action::Continue {
            r.headers_continued = true;
            if !r.has_body {
                r.finished_upstream = r.response.is_none();
                return;
            }
        }
        self.deliver_body(ctx);
    }

    /// The client sends the next chunk of the body (the last one ends it).
    pub fn next_chunk(&mut self, ctx: u32) {
        let r = self.host.requests.get_mut(&ctx).unwrap();
        let chunk = r.chunks.pop_front().expect("no chunk left to send");
        r.proxy_buffer.extend_from_slice(&chunk);
        r.client_done = r.chunks.is_empty();
        self.deliver_body(ctx);
        self.pump();
    }

    /// Gives the filter the body that reached the proxy, if the filter may have it now.
    fn deliver_body(&mut self, ctx: u32) {
        let may = self.body_with_paused_headers;
        let r = self.host.requests.get_mut(&ctx).unwrap();
        let end = r.client_done;
        if r.response.is_some()
            || r.end_delivered
            || !r.has_body
            || (r.proxy_buffer.is_empty() && !end)
            || !(r.headers_continued || may)
        {
            return;
        }
        let data = std::mem::take(&mut r.proxy_buffer);
        r.held.extend_from_slice(&data);
        r.end_delivered = end;
        let size = r.held.len();
        self.host.effective = ctx;
        set_current(ctx);
        let action = self.worker.on_request_body(ctx, size, end, &mut self.host);
        if action == Action::Continue {
            let r = self.host.requests.get_mut(&ctx).unwrap();
            if r.response.is_none() {
                // Envoy sends the headers too if they were still stopped.
                r.headers_continued = true;
                let held = std::mem::take(&mut r.held);
                r.upstream_body.extend_from_slice(&held);
                r.finished_upstream = end;
            }
        }
    }

    /// Continues requests the filter resumed: what the filter holds goes upstream as it is.
    pub fn pump(&mut self) {
        while let Some(ctx) = self.host.resumed.pop() {
            let r = self.host.requests.get_mut(&ctx).unwrap();
            r.resumed = false;
            if r.response.is_some() {
                continue;
            }
            r.headers_continued = true;
            let held = std::mem::take(&mut r.held);
            r.upstream_body.extend_from_slice(&held);
            if !r.has_body || r.end_delivered {
                r.finished_upstream = true;
            } else {
                // Body that waited in the proxy (paused headers without the body) reaches the
                // filter now.
                self.deliver_body(ctx);
            }
        }
    }

    /// What went upstream so far (headers continued), finished or not.
    pub fn upstream_so_far(&self, ctx: u32) -> Option<String> {
        let r = &self.host.requests[&ctx];
        r.headers_continued
            .then(|| String::from_utf8_lossy(&r.upstream_body).into_owned())
    }

    pub fn outcome(&self, ctx: u32) -> Outcome {
        let r = &self.host.requests[&ctx];
        if let Some((status, headers, body)) = &r.response {
            return Outcome::Local {
                status: *status,
                headers: headers.clone(),
                body: String::from_utf8_lossy(body).into_owned(),
            };
        }
        if r.finished_upstream {
            return Outcome::Upstream {
                headers: r.headers.clone(),
                body: String::from_utf8_lossy(&r.upstream_body).into_owned(),
            };
        }
        Outcome::Paused
    }

    /// Answers the realm call with this token (`status` `None`: the call failed).
    pub fn answer(&mut self, token: u32, status: Option<u32>, body: &str) {
        let receiver = self
            .host
            .calls
            .iter()
            .find(|c| c.token == token)
            .map(|c| c.receiver)
            .unwrap();
        self.host.effective = receiver;
        set_current(receiver);
        self.worker.on_call_response(
            receiver,
            token,
            CallResponse {
                status,
                body: body.as_bytes().to_vec(),
            },
            &mut self.host,
        );
        self.pump();
    }

    /// The request's stream ends (as Envoy's on_done).
    pub fn done(&mut self, ctx: u32) {
        self.host.requests.get_mut(&ctx).unwrap().done = true;
        self.worker.on_done(ctx);
    }

    pub fn tick(&mut self) {
        self.host.effective = ROOT;
        set_current(ROOT);
        self.worker.on_tick(ROOT, &mut self.host);
        self.pump();
    }

    pub fn last_call(&self) -> &Call {
        self.host.calls.last().unwrap()
    }

    /// A counter's value (the worker's counts, flushed as the adapter does on its tick).
    pub fn metric(&mut self, m: Metric) -> u64 {
        let metrics = &mut self.host.metrics;
        self.worker
            .drain_counters(|metric, n| *metrics.entry(metric).or_default() += n);
        self.host.metrics.get(&m).copied().unwrap_or(0)
    }
}

/// A realm's 201 answer.
pub fn found(consumer_id: &str, username: &str, credential_id: &str, ttl_minutes: u32) -> String {
    serde_json::json!({
        "id": consumer_id, "username": username, "custom_id": null, "type": "developer",
        "tags": [], "consumer_group_names": ["gold", "beta"], "ttl": ttl_minutes, "negative_ttl": 5,
        "credential": {"id": credential_id, "created_at": "2026-01-01T00:00:00Z", "tags": [],
                       "expires_at": null}
    })
    .to_string()
}

/// A realm's 404 answer.
pub fn not_found(negative_ttl_minutes: u32) -> String {
    serde_json::json!({"status": 404, "title": "Not Found", "type": "about:blank",
                       "instance": "/x", "detail": "no such key", "negative_ttl": negative_ttl_minutes})
    .to_string()
}
