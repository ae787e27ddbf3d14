//! The HTTP request path: the request through the wasm filters, routing, the upstream
//! exchange, the response back through the filters, and the end of each HTTP context — with
//! Envoy's pause and buffering semantics.
//!
//! Bodies stream both ways ([`crate::chain`]): a chunk goes on as soon as every filter passed
//! it, so SSE and large downloads pass with bounded memory; a filter that pauses or buffers
//! holds the flow as Envoy's filter chain does, within the body limits (`limits.rs`: 413 for a
//! request, 503 for a response, when a filter buffers past them).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::sync::oneshot;

use crate::body::ProxyBody;
use crate::chain::{failure_reply, local_reply_parts, plain_reply, Chain, Contexts, Pump, Stop};
use crate::config::{ListenerConfig, RouteMatch};
use crate::filter_slot::FilterSlot;
use crate::limits::{BodyReservation, ConnectionBudget};
use crate::upstream::{build_request, header_pairs, is_hop_by_hop, Lent, UpstreamError, WorkerCtx};
use crate::wasm::{get_value, replace_value, HeaderList, LocalResponse, RequestInfo};

/// One listener as a worker runs it: its configuration and its filters' slots, in order.
pub struct ListenerRuntime {
    pub config: ListenerConfig,
    pub filters: Vec<Rc<FilterSlot>>,
}

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The most request header bytes a client may send (Envoy's `max_request_headers_kb` default).
pub const MAX_REQUEST_HEADERS: usize = 60 * 1024;
/// How long a client may send nothing while its request body is being read.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The error a handler returns to make hyper reset the connection (`proxy_close_stream`).
#[derive(Debug, thiserror::Error)]
#[error("stream reset: {0}")]
pub struct StreamReset(String);

pub type HttpResponse = Response<ProxyBody>;

/// What the response phase starts from.
enum Answer {
    /// The upstream's response head, its body to read, the connection it came on, and when the
    /// route's timeout ends.
    Upstream {
        headers: HeaderList,
        body: Incoming,
        lent: Lent,
        deadline: Option<tokio::time::Instant>,
    },
    /// A local reply (a filter's, or the router's).
    Local(LocalResponse),
}

/// Serves one request: the request through the filters, routing and the upstream exchange,
/// the response through the filters, and the end of each context.
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
    if let Some(reply) = refused_upgrade(&parts) {
        return Ok(reply);
    }
    let headers = request_header_list(&parts);
    let info = RequestInfo {
        source: remote,
        destination: local,
        protocol: protocol_name(parts.version).to_string(),
        start_time: Some(std::time::SystemTime::now()),
    };
    let contexts = Rc::new(Contexts::default());
    let no_body = hyper::body::Body::is_end_stream(&body);

    // The request phase runs on its own task: its body keeps flowing upstream while the
    // response is awaited.
    let (head_tx, head_rx) = oneshot::channel();
    let pump = Pump {
        chain: Chain::request(&rt.filters, info, contexts.clone(), ctx.clone()),
        source: Some(body),
        initial_body: None,
        source_idle: Some(BODY_READ_TIMEOUT),
        deadline: None,
        reservation: BodyReservation::new(ctx.budget.clone(), Some(connection.clone())),
        restart_on_local: false,
        complete: false,
    };
    // A request without a body is over once its headers passed the filters: no task for it.
    let mut request = if no_body {
        let _ = pump.run(headers, head_tx).await;
        None
    } else {
        Some(tokio::task::spawn_local(pump.run(headers, head_tx)))
    };
    let answer = match head_rx.await {
        Ok(Ok((headers, body))) => {
            let forwarding = forward(&rt.config, &ctx, headers, body);
            tokio::pin!(forwarding);
            let mut request_over = request.is_none();
            loop {
                tokio::select! {
                    a = &mut forwarding => {
                        // An upload broken off by a filter fails the exchange too: the filter's
                        // answer is the one to give.
                        if !request_over && request.as_ref().is_some_and(|r| r.is_finished()) {
                            if let Some(Err(stop)) = join(&mut request).await {
                                break request_stopped(stop, &ctx)?;
                            }
                        }
                        break a;
                    }
                    r = join(&mut request), if !request_over => {
                        request_over = true;
                        // A filter that stops the request after its head went upstream still
                        // answers the client, as the response has not started.
                        if let Some(Err(stop)) = r {
                            break request_stopped(stop, &ctx)?;
                        }
                    }
                }
            }
        }
        Ok(Err(stop)) => request_stopped(stop, &ctx)?,
        Err(_) => Answer::Local(failure_reply()),
    };

    // The response phase, through the filters in reverse order, on its own task: the head is
    // answered here, the body streams after it.
    let (headers, source, initial_body, lent, deadline) = match answer {
        Answer::Upstream {
            headers,
            body,
            lent,
            deadline,
        } => (headers, Some(body), None, Some(lent), deadline),
        Answer::Local(l) => {
            let (headers, body) = local_reply_parts(l);
            (headers, None, Some(Bytes::from(body)), None, None)
        }
    };
    let pump = Pump {
        chain: Chain::response(contexts.clone(), ctx.clone()),
        source,
        initial_body,
        source_idle: None,
        deadline,
        reservation: BodyReservation::new(ctx.budget.clone(), Some(connection)),
        restart_on_local: true,
        complete: false,
    };
    let (head_tx, head_rx) = oneshot::channel();
    let pool_ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        let ended = pump.run(headers, head_tx).await;
        if let (Ok(true), Some(lent)) = (&ended, lent) {
            lent.give_back(&pool_ctx.pool);
        }
        if let Some(r) = request {
            r.abort();
        }
        contexts.finish_all();
    });
    let head = parts.method == hyper::Method::HEAD;
    match head_rx.await {
        Ok(Ok((headers, body))) => Ok(to_response(headers, body, head)),
        Ok(Err(Stop::SourceTimeout)) => Ok(plain(504, "upstream request timeout")),
        Ok(Err(Stop::SourceError(_))) => Ok(plain(
            503,
            UpstreamError::Reset(String::new()).router_reply().1,
        )),
        Ok(Err(stop)) => Err(StreamReset(format!("{stop:?}"))),
        Err(_) => Err(StreamReset("the response phase ended".into())),
    }
}

/// The request phase's result, once its task ends (`None`: it was cancelled or there is none).
async fn join(
    task: &mut Option<tokio::task::JoinHandle<Result<bool, Stop>>>,
) -> Option<Result<bool, Stop>> {
    match task.as_mut() {
        Some(t) => t.await.ok(),
        None => std::future::pending().await,
    }
}

/// The answer to a request its filters (or its client) stopped.
fn request_stopped(stop: Stop, ctx: &WorkerCtx) -> Result<Answer, StreamReset> {
    let host = &ctx.metrics.host;
    Ok(Answer::Local(match stop {
        Stop::Local(_, l) => {
            host.local_replies.fetch_add(1, Ordering::Relaxed);
            l
        }
        Stop::Failed(..) => failure_reply(),
        Stop::TooLarge(_) => plain_reply(413, "Payload Too Large"),
        Stop::SourceTimeout => plain_reply(408, "request timeout"),
        Stop::Reset => return Err(StreamReset("closed by a filter".into())),
        Stop::SourceError(e) => return Err(StreamReset(format!("reading the request body: {e}"))),
    }))
}

fn plain(status: u16, body: &'static str) -> HttpResponse {
    let mut r = Response::new(ProxyBody::full(Bytes::from_static(body.as_bytes())));
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
            let mut r = Response::new(ProxyBody::empty());
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
    let mut r = Response::new(ProxyBody::empty());
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

/// Routes the request and sends it upstream; the answer is the upstream's response head (its
/// body still to read) or the router's local reply.
async fn forward(
    listener: &ListenerConfig,
    ctx: &WorkerCtx,
    mut headers: HeaderList,
    body: ProxyBody,
) -> Answer {
    let authority = String::from_utf8_lossy(get_value(&headers, ":authority").unwrap_or_default());
    let path = String::from_utf8_lossy(get_value(&headers, ":path").unwrap_or_default());
    let Some(route) = find_route(listener, &authority, &path) else {
        return Answer::Local(plain_reply(404, ""));
    };
    let Some(cluster) = ctx.clusters.get(&route.cluster) else {
        return Answer::Local(plain_reply(503, "no healthy upstream"));
    };
    if !route.timeout.is_zero() {
        replace_value(
            &mut headers,
            "x-envoy-expected-rq-timeout-ms",
            route.timeout.as_millis().to_string().into_bytes(),
        );
    }
    if get_value(&headers, ":method").is_none_or(<[u8]>::is_empty) {
        return Answer::Local(plain_reply(503, "missing required header: :method"));
    }
    // As Envoy's upstream codec, a header a filter made invalid fails the request with a 503
    // that names it.
    for (k, v) in &headers {
        if k.starts_with(':') {
            continue;
        }
        if hyper::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Answer::Local(plain_reply(503, &format!("invalid header name: {k}")));
        }
        if hyper::header::HeaderValue::from_bytes(v).is_err() {
            return Answer::Local(plain_reply(503, &format!("invalid header value for: {k}")));
        }
    }
    let request = match build_request(&headers, body) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("bad request after filters: {e}");
            return Answer::Local(plain_reply(400, ""));
        }
    };
    let started = Instant::now();
    // The route's timeout covers the whole response, its body included (as Envoy's).
    let deadline = (!route.timeout.is_zero()).then(|| tokio::time::Instant::now() + route.timeout);
    let sent = ctx.pool.start(cluster, request);
    let answer = match deadline {
        Some(at) => tokio::time::timeout_at(at, sent)
            .await
            .unwrap_or(Err(UpstreamError::Timeout)),
        None => sent.await,
    };
    match answer {
        Ok((response, lent)) => {
            let (parts, body) = response.into_parts();
            let mut headers: HeaderList = vec![(
                ":status".into(),
                parts.status.as_u16().to_string().into_bytes(),
            )];
            headers.extend(
                header_pairs(&parts.headers)
                    .into_iter()
                    .filter(|(k, _)| !is_hop_by_hop(k)),
            );
            // Envoy's own value replaces one the upstream sent.
            replace_value(
                &mut headers,
                "x-envoy-upstream-service-time",
                started.elapsed().as_millis().to_string().into_bytes(),
            );
            Answer::Upstream {
                headers,
                body,
                lent,
                deadline,
            }
        }
        Err(e) => {
            ctx.metrics
                .host
                .upstream_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(cluster = %route.cluster, "upstream: {e}");
            let (status, body) = e.router_reply();
            Answer::Local(plain_reply(status, body))
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

/// The response for the client. A body known whole gets its own content-length, except in the
/// answer to a HEAD request, which has no body and keeps the content-length it was given (as
/// Envoy does); a streaming body keeps the content-length the upstream and the filters left.
fn to_response(headers: HeaderList, body: ProxyBody, head: bool) -> HttpResponse {
    let status = get_value(&headers, ":status")
        .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok())
        .and_then(|s| hyper::StatusCode::from_u16(s).ok());
    let Some(status) = status else {
        // What Envoy's codec answers for a response whose `:status` is not a number.
        return plain(502, "missing required header: :status");
    };
    let whole = matches!(body, ProxyBody::Full(_));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let map = response.headers_mut();
    for (k, v) in &headers {
        if k.starts_with(':') || (k == "content-length" && whole && !head) || is_hop_by_hop(k) {
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
