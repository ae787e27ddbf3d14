//! The HTTP request path: the wasm filters' request phase, routing, the upstream exchange, the
//! response phase, and the end of each HTTP context — with Envoy's pause semantics.
//!
//! Bodies are buffered: the request body is read before the filters run (so a filter that
//! pauses its headers sees `on_request_body` for the whole body, as Envoy does when the request
//! arrives at once), and the upstream response is read before the response phase. Both count
//! against the body limits (`limits.rs`): past them, 413 for a request, 503 for a response.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::config::{ListenerConfig, RouteMatch};
use crate::filter_slot::{ContextHandle, FilterSlot};
use crate::limits::{collect_body, BodyError, BodyReservation, ConnectionBudget};
use crate::upstream::{build_request, is_hop_by_hop, UpstreamError, WorkerCtx};
use crate::wasm::abi::headers::{get_value, replace_value};
use crate::wasm::instance::{Action, VmError, VmInstance};
use crate::wasm::{HeaderList, LocalResponse, RequestInfo, StreamState};

/// One listener as a worker runs it: its configuration and its filters' slots, in order.
pub struct ListenerRuntime {
    pub config: ListenerConfig,
    pub filters: Vec<Rc<FilterSlot>>,
}

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The most request header bytes a client may send (Envoy's `max_request_headers_kb` default).
pub const MAX_REQUEST_HEADERS: usize = 60 * 1024;
/// How long a client may take to send a request's body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The error a handler returns to make hyper reset the connection (`proxy_close_stream`).
#[derive(Debug, thiserror::Error)]
#[error("stream reset: {0}")]
pub struct StreamReset(String);

type HttpResponse = Response<Full<Bytes>>;

/// A response on its way to the client, as the response filters see it.
struct Pending {
    headers: HeaderList,
    body: Vec<u8>,
}

/// Which half of the exchange a filter callback works on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
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

    /// Whether the guest called `proxy_continue_stream` for this direction.
    fn continued(self, s: &StreamState) -> bool {
        match self {
            Direction::Request => s.request_continued,
            Direction::Response => s.response_continued,
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

enum Outcome {
    Continue,
    Local(LocalResponse),
    Reset,
    Failed(String),
}

/// Ends every context when the request is over, also when the client goes away mid-request.
struct ContextsGuard(Vec<ContextHandle>);

impl Drop for ContextsGuard {
    fn drop(&mut self) {
        let contexts = std::mem::take(&mut self.0);
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

/// Serves one request: the filters' request phase, routing and the upstream exchange, the
/// response phase, and the end of each context.
pub async fn handle(
    req: Request<Incoming>,
    rt: Rc<ListenerRuntime>,
    ctx: Rc<WorkerCtx>,
    connection: Rc<ConnectionBudget>,
    remote: Option<SocketAddr>,
    local: Option<SocketAddr>,
) -> Result<HttpResponse, StreamReset> {
    ctx.metrics.host.requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    if let Some(reply) = refused_by_codec(&parts) {
        return Ok(reply);
    }
    // Envoy's `max_request_headers_kb`: the header map's names and values, path included.
    let header_bytes = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum::<usize>()
        + parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if header_bytes > MAX_REQUEST_HEADERS {
        return Ok(plain(431, "Request Header Fields Too Large"));
    }
    // The request's body and, later, its response count against the connection's and the
    // process's body budgets until the exchange is over.
    let mut reservation = BodyReservation::new(ctx.budget.clone(), Some(connection));
    let limit = ctx.limits.request_body_bytes;
    let collected = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        collect_body(body, limit, &mut reservation),
    )
    .await;
    let Ok(collected) = collected else {
        return Ok(plain(408, "request timeout"));
    };
    if let Some(reply) = refused_upgrade(&parts) {
        return Ok(reply);
    }
    let mut body = match collected {
        Ok(b) => Vec::from(b),
        Err(BodyError::TooLarge(_) | BodyError::OverBudget) => {
            ctx.metrics
                .host
                .body_limit_rejections
                .fetch_add(1, Ordering::Relaxed);
            return Ok(plain(413, "Payload Too Large"));
        }
        Err(BodyError::Read(e)) => {
            return Err(StreamReset(format!("reading the request body: {e}")));
        }
    };
    let mut headers = request_header_list(&parts);
    let info = RequestInfo {
        source: remote,
        destination: local,
        protocol: protocol_name(parts.version).to_string(),
        start_time: Some(std::time::SystemTime::now()),
    };
    let mut guard = ContextsGuard(Vec::new());
    let mut local_reply: Option<LocalResponse> = None;

    // Request phase, filter by filter.
    for filter in &rt.filters {
        let outcome = match filter.create_context(info.clone()).await {
            Ok(handle) => {
                guard.0.push(handle.clone());
                let outcome =
                    run_filter(&handle, Direction::Request, &mut headers, &mut body).await;
                if matches!(outcome, Outcome::Failed(_)) {
                    // No further callbacks for a failed context, but it still ends (on_log,
                    // on_done, on_delete) if its instance survived, e.g. a stream paused past
                    // the pause limit; for an instance that was replaced, finishing does nothing.
                    if let Some(failed) = guard.0.pop() {
                        failed.finish();
                    }
                }
                outcome
            }
            Err(e) => Outcome::Failed(e.to_string()),
        };
        match outcome {
            Outcome::Continue => {}
            Outcome::Local(l) => {
                local_reply = Some(l);
                break;
            }
            Outcome::Reset => return Err(StreamReset("closed by a filter".into())),
            Outcome::Failed(e) => {
                tracing::error!("{e}");
                if filter.plugin.config.fails_open() {
                    ctx.metrics
                        .host
                        .wasm_fail_open
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                ctx.metrics
                    .host
                    .wasm_fail_stream
                    .fetch_add(1, Ordering::Relaxed);
                local_reply = Some(failure_reply());
                break;
            }
        }
    }

    let mut pending = match local_reply {
        Some(l) => {
            ctx.metrics
                .host
                .local_replies
                .fetch_add(1, Ordering::Relaxed);
            local_response(l)
        }
        None => forward(&rt.config, &ctx, headers, body, &mut reservation).await,
    };

    // Response phase, in reverse order.
    for i in (0..guard.0.len()).rev() {
        let outcome = run_filter(
            &guard.0[i],
            Direction::Response,
            &mut pending.headers,
            &mut pending.body,
        )
        .await;
        match outcome {
            Outcome::Continue => {}
            Outcome::Local(l) => pending = local_response(l),
            Outcome::Reset => return Err(StreamReset("closed by a filter".into())),
            Outcome::Failed(e) => {
                tracing::error!("{e}");
                // A failed context gets no further callbacks, but it still ends.
                let failed = guard.0.remove(i);
                failed.finish();
                if failed.filter.plugin.config.fails_open() {
                    ctx.metrics
                        .host
                        .wasm_fail_open
                        .fetch_add(1, Ordering::Relaxed);
                } else {
                    ctx.metrics
                        .host
                        .wasm_fail_stream
                        .fetch_add(1, Ordering::Relaxed);
                    pending = local_response(failure_reply());
                }
            }
        }
    }

    let response = to_response(pending, parts.method == hyper::Method::HEAD);
    for c in std::mem::take(&mut guard.0) {
        c.finish();
    }
    Ok(response)
}

/// Envoy's answer for a request whose filter failed (`failStream`: 503, no body).
fn failure_reply() -> LocalResponse {
    LocalResponse {
        status: 503,
        details: "wasm_fail_stream".into(),
        body: Vec::new(),
        headers: Vec::new(),
    }
}

fn plain(status: u16, body: &'static str) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// What Envoy's HTTP/1 codec refuses before anything else runs: HTTP/1.0 and older (426, no
/// `accept_http_10`), HTTP/1.1 without a Host (400).
fn refused_by_codec(parts: &hyper::http::request::Parts) -> Option<HttpResponse> {
    match parts.version {
        hyper::Version::HTTP_09 | hyper::Version::HTTP_10 => Some(plain(426, "Upgrade Required")),
        hyper::Version::HTTP_11
            if parts.uri.authority().is_none()
                && !parts.headers.contains_key(hyper::header::HOST) =>
        {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
            Some(r)
        }
        _ => None,
    }
}

/// The `x-envoy-*` request headers Envoy's connection manager removes from a request it
/// considers external (`cleanInternalHeaders` and `x-envoy-internal`), before the filters.
const ENVOY_EXTERNAL_STRIPPED: &[&str] = &[
    "x-envoy-internal",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
];

/// The tokens of the request's `Connection` headers, lower case.
fn connection_tokens(parts: &hyper::http::request::Parts) -> impl Iterator<Item = String> + '_ {
    parts
        .headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Envoy without `upgrade_configs` refuses an upgrade (`Connection: upgrade` and an `Upgrade`
/// other than `h2c`, which it drops and serves as a plain request) with an empty 403.
fn refused_upgrade(parts: &hyper::http::request::Parts) -> Option<HttpResponse> {
    let upgrade = parts.headers.get(hyper::header::UPGRADE)?;
    let asks = connection_tokens(parts).any(|t| t == "upgrade");
    if !asks || upgrade.as_bytes().eq_ignore_ascii_case(b"h2c") {
        return None;
    }
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = hyper::StatusCode::FORBIDDEN;
    Some(r)
}

/// The request as a proxy-wasm header map, with what Envoy's connection manager adds.
/// The protocol as Envoy's `request.protocol` property names it.
fn protocol_name(version: hyper::Version) -> &'static str {
    match version {
        hyper::Version::HTTP_09 => "HTTP/0.9",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_2 => "HTTP/2",
        hyper::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn request_header_list(parts: &hyper::http::request::Parts) -> HeaderList {
    // As Envoy: the authority of an absolute URI (or HTTP/2's `:authority`) first, else the
    // Host header, repeated ones joined with ",".
    let authority = match parts.uri.authority() {
        Some(a) => a.as_str().as_bytes().to_vec(),
        None => parts
            .headers
            .get_all(hyper::header::HOST)
            .iter()
            .map(|v| v.as_bytes())
            .collect::<Vec<_>>()
            .join(&b","[..]),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    // Envoy takes the scheme a proxy in front forwarded (`x-forwarded-proto`), if it is one.
    let scheme: &[u8] = match parts.headers.get("x-forwarded-proto").map(|v| v.as_bytes()) {
        Some(b"https") => b"https",
        _ => b"http",
    };
    let mut list: HeaderList = vec![
        (":authority".into(), authority),
        (":path".into(), path.as_bytes().to_vec()),
        (":method".into(), parts.method.as_str().as_bytes().to_vec()),
        (":scheme".into(), scheme.to_vec()),
    ];
    let h2 = parts.version == hyper::Version::HTTP_2;
    // Headers the client named in `Connection` are hop-by-hop too (Envoy removes them).
    let nominated: Vec<String> = connection_tokens(parts).collect();
    for (k, v) in &parts.headers {
        let name = k.as_str();
        // `TE: trailers` is the one TE value Envoy passes on.
        let te_trailers = name == "te" && v.as_bytes().eq_ignore_ascii_case(b"trailers");
        if name == "host"
            || (is_hop_by_hop(name) && !te_trailers)
            || nominated.iter().any(|t| t == name)
            || ENVOY_EXTERNAL_STRIPPED.contains(&name)
        {
            continue;
        }
        // Envoy answers `Expect: 100-continue` itself and strips it (no proxy_100_continue).
        if name == "expect" && v.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            continue;
        }
        // HTTP/2 may split cookies into several fields; Envoy joins them (RFC 9113 8.2.3).
        if h2 && name == "cookie" {
            if let Some((_, joined)) = list.iter_mut().find(|(k, _)| k == "cookie") {
                joined.extend_from_slice(b"; ");
                joined.extend_from_slice(v.as_bytes());
                continue;
            }
        }
        list.push((name.to_string(), v.as_bytes().to_vec()));
    }
    if get_value(&list, "x-forwarded-proto").is_none() {
        list.push(("x-forwarded-proto".into(), b"http".to_vec()));
    }
    if get_value(&list, "x-request-id").is_none() {
        list.push((
            "x-request-id".into(),
            uuid::Uuid::new_v4().to_string().into_bytes(),
        ));
    }
    list
}

/// Runs one filter's callbacks for one direction — the headers, then the body if there is one —
/// waiting while it keeps the stream paused. On `Continue`, `headers` and `body` hold what the
/// filter left in them; on `Failed` they are unchanged when the filter fails open (the request
/// passes on), and not needed otherwise (as after `Local` and `Reset`).
async fn run_filter(
    handle: &ContextHandle,
    dir: Direction,
    headers: &mut HeaderList,
    body: &mut Vec<u8>,
) -> Outcome {
    // The stream keeps its own copy (later callbacks and properties read it); the caller's copy
    // is only needed again if a failure lets the exchange pass unfiltered.
    let keep = handle.filter.plugin.config.fails_open();
    let count = headers.len();
    let eos = body.is_empty();
    let h = if keep {
        headers.clone()
    } else {
        std::mem::take(headers)
    };
    let first = handle.with_vm(|vm, id| {
        if let Some(s) = vm.stream_mut(id) {
            let (slot, _, continued) = dir.parts(s);
            *slot = Some(h);
            *continued = false;
            if dir == Direction::Response {
                // A local reply asked for after the request phase has nothing left to answer.
                s.local_response = None;
            }
        }
        dir.on_headers(vm, id, count, eos)
    });
    let mut action = match first {
        Ok(a) => a,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if let Some(o) = early_outcome(handle) {
        return o;
    }
    // Envoy (without allow_on_headers_stop_iteration) stops everything while the headers are
    // paused: the body callback comes only after the filter continues.
    let stop_all = !handle.filter.plugin.config.allow_on_headers_stop_iteration;
    if action == Action::Pause && (stop_all || body.is_empty()) {
        if let Some(o) = wait_resume(handle, dir).await {
            return o;
        }
        action = Action::Continue;
        let _ = handle.with_vm(|vm, id| {
            if let Some(s) = vm.stream_mut(id) {
                *dir.parts(s).2 = false;
            }
            Ok(())
        });
    }
    if !body.is_empty() {
        let b = if keep {
            body.clone()
        } else {
            std::mem::take(body)
        };
        let size = b.len();
        let second = handle.with_vm(|vm, id| {
            if let Some(s) = vm.stream_mut(id) {
                *dir.parts(s).1 = Some(b);
            }
            dir.on_body(vm, id, size, true)
        });
        // As in Envoy, a body callback that continues resumes a stream paused in its headers.
        action = match second {
            Ok(a) => a,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        if let Some(o) = early_outcome(handle) {
            return o;
        }
    }
    if action == Action::Pause {
        if let Some(o) = wait_resume(handle, dir).await {
            return o;
        }
    }
    let taken = handle.with_vm(|vm, id| {
        Ok(vm.stream_mut(id).map(|s| {
            let (h, b, _) = dir.parts(s);
            (h.clone(), b.clone())
        }))
    });
    match taken {
        Ok(Some((h, b))) => {
            if let Some(h) = h {
                *headers = h;
            }
            if let Some(b) = b {
                *body = b;
            }
            Outcome::Continue
        }
        Ok(None) => Outcome::Failed("the context is gone".into()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// A local reply or reset the filter asked for during its last callback.
fn early_outcome(handle: &ContextHandle) -> Option<Outcome> {
    let state = handle.with_vm(|vm, id| {
        Ok(vm
            .stream_mut(id)
            .map(|s| (s.local_response.take(), s.closed)))
    });
    match state {
        Ok(Some((_, true))) => Some(Outcome::Reset),
        Ok(Some((Some(l), false))) => Some(Outcome::Local(l)),
        Ok(_) => None,
        Err(e) => Some(Outcome::Failed(e.to_string())),
    }
}

/// Waits until the filter continues the paused direction, answers locally, resets, or its
/// instance fails. `None` means it continued.
async fn wait_resume(handle: &ContextHandle, dir: Direction) -> Option<Outcome> {
    let limit = handle.filter.plugin.limits.pause_limit;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let notified = handle.filter.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let continued = handle.with_vm(|vm, id| Ok(vm.stream(id).map(|s| dir.continued(s))));
        let continued = match continued {
            Err(e) => return Some(Outcome::Failed(e.to_string())),
            Ok(None) => return Some(Outcome::Failed("the context is gone".into())),
            Ok(Some(c)) => c,
        };
        if let Some(o) = early_outcome(handle) {
            return Some(o);
        }
        if continued {
            return None;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Some(Outcome::Failed(format!("a filter kept the stream paused for more than {limit:?}")));
            }
        }
    }
}

/// A local reply as a response: Envoy sets `content-type: text/plain` when there is a body,
/// then applies the filter's headers (replacing).
fn local_response(l: LocalResponse) -> Pending {
    let mut headers: HeaderList = vec![(":status".into(), l.status.to_string().into_bytes())];
    if !l.body.is_empty() {
        headers.push(("content-type".into(), b"text/plain".to_vec()));
    }
    for (k, v) in l.headers {
        replace_value(&mut headers, &k, v);
    }
    Pending {
        headers,
        body: l.body,
    }
}

fn router_reply(status: u16, body: &str) -> Pending {
    local_response(LocalResponse {
        status,
        details: String::new(),
        body: body.as_bytes().to_vec(),
        headers: Vec::new(),
    })
}

/// Routes the request and sends it upstream.
async fn forward(
    listener: &ListenerConfig,
    ctx: &WorkerCtx,
    mut headers: HeaderList,
    body: Vec<u8>,
    reservation: &mut BodyReservation,
) -> Pending {
    let authority = String::from_utf8_lossy(get_value(&headers, ":authority").unwrap_or_default());
    let path = String::from_utf8_lossy(get_value(&headers, ":path").unwrap_or_default());
    let Some(route) = find_route(listener, &authority, &path) else {
        return router_reply(404, "");
    };
    let Some(cluster) = ctx.clusters.get(&route.cluster) else {
        return router_reply(503, "no healthy upstream");
    };
    if !route.timeout.is_zero() {
        replace_value(
            &mut headers,
            "x-envoy-expected-rq-timeout-ms",
            route.timeout.as_millis().to_string().into_bytes(),
        );
    }
    if get_value(&headers, ":method").is_none_or(<[u8]>::is_empty) {
        return router_reply(503, "missing required header: :method");
    }
    // As Envoy's upstream codec, a header a filter made invalid fails the request with a 503
    // that names it.
    for (k, v) in &headers {
        if k.starts_with(':') {
            continue;
        }
        if hyper::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return router_reply(503, &format!("invalid header name: {k}"));
        }
        if hyper::header::HeaderValue::from_bytes(v).is_err() {
            return router_reply(503, &format!("invalid header value for: {k}"));
        }
    }
    let request = match build_request(&headers, Bytes::from(body)) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("bad request after filters: {e}");
            return router_reply(400, "");
        }
    };
    let started = Instant::now();
    let limit = ctx.limits.response_body_bytes;
    let answer = ctx
        .pool
        .exchange(cluster, request, route.timeout, limit, reservation)
        .await;
    match answer {
        Ok(r) => {
            let mut headers: HeaderList =
                vec![(":status".into(), r.status.to_string().into_bytes())];
            for (k, v) in r.headers {
                if !is_hop_by_hop(&k) {
                    headers.push((k, v));
                }
            }
            // Envoy's own value replaces one the upstream sent.
            replace_value(
                &mut headers,
                "x-envoy-upstream-service-time",
                started.elapsed().as_millis().to_string().into_bytes(),
            );
            Pending {
                headers,
                body: Vec::from(r.body),
            }
        }
        Err(e) => {
            let counter = match e {
                UpstreamError::TooLarge => &ctx.metrics.host.body_limit_rejections,
                _ => &ctx.metrics.host.upstream_failures,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(cluster = %route.cluster, "upstream: {e}");
            let (status, body) = e.router_reply();
            router_reply(status, body)
        }
    }
}

fn find_route<'a>(
    listener: &'a ListenerConfig,
    authority: &str,
    path: &str,
) -> Option<&'a crate::config::Route> {
    let vh = find_virtual_host(listener, authority)?;
    vh.routes.iter().find(|r| match &r.matcher {
        RouteMatch::Prefix(p) => path.starts_with(p.as_str()),
        RouteMatch::Path(p) => path.split('?').next() == Some(p.as_str()),
    })
}

/// Envoy's virtual host search: the whole Host value (port included, case-insensitive) against
/// exact domains, then suffix wildcards (`*.foo.com`), then prefix wildcards (`foo.*`), the
/// longest wildcard first, then `*`. A wildcard stands for at least one character.
fn find_virtual_host<'a>(
    listener: &'a ListenerConfig,
    authority: &str,
) -> Option<&'a crate::config::VirtualHost> {
    let host = authority.to_ascii_lowercase();
    let domains = || {
        listener.virtual_hosts.iter().flat_map(|vh| {
            vh.domains
                .iter()
                .filter(|d| d.as_str() != "*")
                .map(move |d| (d.to_ascii_lowercase(), vh))
        })
    };
    if let Some((_, vh)) = domains().find(|(d, _)| !d.contains('*') && *d == host) {
        return Some(vh);
    }
    let longest = |wildcard: fn(&str) -> Option<&str>, matches: fn(&str, &str) -> bool| {
        domains()
            .filter_map(|(d, vh)| {
                let fixed = wildcard(&d)?;
                (host.len() > fixed.len() && matches(&host, fixed)).then_some((fixed.len(), vh))
            })
            .fold(None, |best: Option<(usize, _)>, (len, vh)| match best {
                Some((best_len, _)) if best_len >= len => best,
                _ => Some((len, vh)),
            })
            .map(|(_, vh)| vh)
    };
    longest(|d| d.strip_prefix('*'), |h, s| h.ends_with(s))
        .or_else(|| longest(|d| d.strip_suffix('*'), |h, p| h.starts_with(p)))
        .or_else(|| {
            listener
                .virtual_hosts
                .iter()
                .find(|vh| vh.domains.iter().any(|d| d == "*"))
        })
}

/// The response for the client. Its content-length is the body's, except in the answer to a
/// HEAD request, which has no body and keeps the content-length it was given (as Envoy does).
fn to_response(pending: Pending, head: bool) -> HttpResponse {
    let status = get_value(&pending.headers, ":status")
        .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok())
        .and_then(|s| hyper::StatusCode::from_u16(s).ok());
    let Some(status) = status else {
        // What Envoy's codec answers for a response whose `:status` is not a number.
        return plain(502, "missing required header: :status");
    };
    let mut response = Response::new(Full::new(Bytes::from(pending.body)));
    *response.status_mut() = status;
    let map = response.headers_mut();
    for (k, v) in &pending.headers {
        if k.starts_with(':') || (k == "content-length" && !head) || is_hop_by_hop(k) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_bytes(v),
        ) {
            map.append(name, value);
        }
    }
    response
}
