//! Upstream HTTP/1.1 connections: a per-worker pool of keep-alive connections to cluster
//! endpoints, used both for proxied requests and for the filters' HTTP calls.
//!
//! Each cluster has its own round-robin counter. DNS clusters keep their answers for the
//! cluster's `dns_refresh_rate` (Envoy's default 5 s); a `STRICT_DNS` cluster spreads requests
//! over every address of every endpoint, a `LOGICAL_DNS` one uses the first address (as Envoy).
//! A pooled connection that turns out to be closed gets one retry on a fresh connection, when
//! the request was not sent yet or is idempotent. Idle pooled connections are closed after
//! Envoy's upstream `idle_timeout` default (1 hour).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::body::ProxyBody;
use crate::config::{ClusterConfig, DiscoveryType};
use crate::limits::{collect_body, BodyError, BodyReservation, Limits, ProcessBudget};
use crate::metrics::MetricsRegistry;

const MAX_IDLE_PER_ENDPOINT: usize = 128;
/// How long a pooled connection may stay idle (Envoy's upstream `idle_timeout` default).
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a worker uses to reach upstreams: its connection pool, the clusters, the host's
/// counters, the process's body budget and the limits.
pub struct WorkerCtx {
    pub pool: Pool,
    pub clusters: Arc<BTreeMap<String, ClusterConfig>>,
    pub metrics: Arc<MetricsRegistry>,
    pub budget: Arc<ProcessBudget>,
    pub limits: Limits,
    /// Woken when a filter's instance may have continued, answered or failed a paused stream
    /// (see `filter_slot`): the requests waiting on one look again.
    pub changed: tokio::sync::Notify,
}

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection failure: {0}")]
    Connect(String),
    #[error("connect timeout")]
    ConnectTimeout,
    #[error("timeout")]
    Timeout,
    #[error("upstream reset: {0}")]
    Reset(String),
    #[error("the response body is over the body limits")]
    TooLarge,
}

/// A response read in full.
pub struct FullResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

struct DnsAnswer {
    addrs: Vec<SocketAddr>,
    fetched: Instant,
}

/// The worker's connection pool.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
    /// Round-robin position per cluster.
    next: RefCell<HashMap<String, usize>>,
    dns: RefCell<HashMap<(String, u16), DnsAnswer>>,
}

/// Methods a request may be sent again for (RFC 9110 9.2.2).
fn idempotent(method: &hyper::Method) -> bool {
    matches!(
        *method,
        hyper::Method::GET
            | hyper::Method::HEAD
            | hyper::Method::OPTIONS
            | hyper::Method::TRACE
            | hyper::Method::PUT
            | hyper::Method::DELETE
    )
}

/// A copy of a request whose body is known whole (a streaming one cannot be sent twice).
fn copy_request(r: &hyper::Request<ProxyBody>) -> Option<hyper::Request<ProxyBody>> {
    let mut copy = hyper::Request::new(ProxyBody::full(r.body().as_full()?));
    *copy.method_mut() = r.method().clone();
    *copy.uri_mut() = r.uri().clone();
    *copy.version_mut() = r.version();
    *copy.headers_mut() = r.headers().clone();
    Some(copy)
}

/// An upstream connection lent to one exchange: given back to the pool once the response body
/// was read to its end, dropped (closed) otherwise.
pub struct Lent {
    addr: SocketAddr,
    sender: SendRequest<ProxyBody>,
    keep_alive: bool,
}

impl Lent {
    /// The response was read whole: the connection may serve the next request.
    pub fn give_back(self, pool: &Pool) {
        if self.keep_alive {
            pool.give_back(self.addr, self.sender);
        }
    }
}

impl Pool {
    /// The cluster's next round-robin position.
    fn next_index(&self, cluster: &str) -> usize {
        let mut next = self.next.borrow_mut();
        let n = next.entry(cluster.to_string()).or_insert(0);
        let i = *n;
        *n = n.wrapping_add(1);
        i
    }

    /// The addresses of one DNS endpoint, from the cache while fresh.
    async fn resolve(
        &self,
        cluster: &ClusterConfig,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, UpstreamError> {
        let key = (host.to_string(), port);
        let stale = {
            let dns = self.dns.borrow();
            match dns.get(&key) {
                Some(a) if a.fetched.elapsed() < cluster.dns_refresh_rate => {
                    return Ok(a.addrs.clone())
                }
                Some(a) => Some(a.addrs.clone()),
                None => None,
            }
        };
        // Resolution counts as connection set-up: bounded by the connect timeout.
        let lookup = tokio::net::lookup_host((host, port));
        let fresh = match tokio::time::timeout(cluster.connect_timeout, lookup).await {
            Err(_) => Err(UpstreamError::ConnectTimeout),
            Ok(Err(e)) => Err(UpstreamError::Connect(format!("resolving {host}: {e}"))),
            Ok(Ok(addrs)) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.dedup();
                if addrs.is_empty() {
                    Err(UpstreamError::Connect(format!("{host} has no address")))
                } else {
                    Ok(addrs)
                }
            }
        };
        match fresh {
            Ok(addrs) => {
                self.dns.borrow_mut().insert(
                    key,
                    DnsAnswer {
                        addrs: addrs.clone(),
                        fetched: Instant::now(),
                    },
                );
                Ok(addrs)
            }
            // As Envoy, a failed refresh keeps the last answer.
            Err(e) => stale.ok_or(e),
        }
    }

    /// The endpoint the next request to `cluster` goes to.
    async fn endpoint(&self, cluster: &ClusterConfig) -> Result<SocketAddr, UpstreamError> {
        let no_endpoints =
            || UpstreamError::Connect(format!("cluster {} has no endpoints", cluster.name));
        let n = self.next_index(&cluster.name);
        match cluster.discovery {
            DiscoveryType::Static => {
                let (host, port) = n
                    .checked_rem(cluster.endpoints.len())
                    .and_then(|i| cluster.endpoints.get(i))
                    .ok_or_else(no_endpoints)?;
                host.parse()
                    .map(|ip| SocketAddr::new(ip, *port))
                    .map_err(|_| UpstreamError::Connect(format!("bad address {host}")))
            }
            DiscoveryType::StrictDns => {
                let mut all = Vec::new();
                let mut failure = None;
                for (host, port) in &cluster.endpoints {
                    match self.resolve(cluster, host, *port).await {
                        Ok(addrs) => all.extend(addrs),
                        Err(e) => failure = Some(e),
                    }
                }
                match n.checked_rem(all.len()).and_then(|i| all.get(i)) {
                    Some(a) => Ok(*a),
                    None => Err(failure.unwrap_or_else(no_endpoints)),
                }
            }
            DiscoveryType::LogicalDns => {
                let (host, port) = cluster.endpoints.first().ok_or_else(no_endpoints)?;
                let addrs = self.resolve(cluster, host, *port).await?;
                addrs.first().copied().ok_or_else(no_endpoints)
            }
        }
    }

    /// A pooled connection to `addr` (`true`) or a new one (`false`).
    async fn connection(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<(SendRequest<ProxyBody>, bool), UpstreamError> {
        loop {
            let candidate = self.idle.borrow_mut().get_mut(&addr).and_then(Vec::pop);
            match candidate {
                Some(mut idle) => {
                    if idle.sender.is_closed() || idle.since.elapsed() > UPSTREAM_IDLE_TIMEOUT {
                        continue;
                    }
                    if idle.sender.ready().await.is_ok() {
                        return Ok((idle.sender, true));
                    }
                }
                None => break,
            }
        }
        Ok((self.connect(addr, connect_timeout).await?, false))
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let stream = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(|e| UpstreamError::Connect(format!("{addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(format!("{addr}: {e}")))?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn give_back(&self, addr: SocketAddr, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        // Connections idle past the timeout go first.
        list.retain(|i| i.since.elapsed() <= UPSTREAM_IDLE_TIMEOUT && !i.sender.is_closed());
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Sends a request to one endpoint of `cluster` (connection set-up within the cluster's
    /// `connect_timeout`) and returns the response head, its body still to read, and the
    /// connection to give back once it is read.
    pub async fn start(
        &self,
        cluster: &ClusterConfig,
        request: hyper::Request<ProxyBody>,
    ) -> Result<(hyper::Response<hyper::body::Incoming>, Lent), UpstreamError> {
        let addr = self.endpoint(cluster).await?;
        let (mut sender, reused) = self.connection(addr, cluster.connect_timeout).await?;
        // A pooled connection may have been closed by the upstream just now: keep what is
        // needed to send the request once more on a fresh one.
        let backup = if reused && idempotent(request.method()) {
            copy_request(&request)
        } else {
            None
        };
        let response = match sender.try_send_request(request).await {
            Ok(r) => r,
            Err(mut e) => {
                let again = e.take_message().or(backup);
                match again {
                    Some(req) if reused => {
                        tracing::debug!(%addr, "pooled connection was stale ({}); retrying on a fresh one", e.error());
                        sender = self.connect(addr, cluster.connect_timeout).await?;
                        sender
                            .send_request(req)
                            .await
                            .map_err(|e| UpstreamError::Reset(e.to_string()))?
                    }
                    _ => return Err(UpstreamError::Reset(e.into_error().to_string())),
                }
            }
        };
        let keep_alive = !response
            .headers()
            .get_all(hyper::header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        Ok((
            response,
            Lent {
                addr,
                sender,
                keep_alive,
            },
        ))
    }

    /// Sends a request and reads the whole response, all within `timeout`; the response body
    /// is limited to `limit` bytes and counted against `reservation` (the filters' HTTP calls).
    pub async fn exchange(
        &self,
        cluster: &ClusterConfig,
        request: hyper::Request<ProxyBody>,
        timeout: Duration,
        limit: usize,
        reservation: &mut BodyReservation,
    ) -> Result<FullResponse, UpstreamError> {
        let work = async {
            let (response, lent) = self.start(cluster, request).await?;
            let (parts, body) = response.into_parts();
            let body = collect_body(body, limit, reservation)
                .await
                .map_err(|e| match e {
                    BodyError::TooLarge(_) | BodyError::OverBudget => UpstreamError::TooLarge,
                    BodyError::Read(e) => UpstreamError::Reset(e),
                })?;
            lent.give_back(self);
            Ok(FullResponse {
                status: parts.status.as_u16(),
                headers: header_pairs(&parts.headers),
                body,
            })
        };
        if timeout.is_zero() {
            return work.await;
        }
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }
}

/// A hyper header map as proxy-wasm pairs (lower-case names, byte values, in order).
pub fn header_pairs(headers: &hyper::HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

impl UpstreamError {
    /// The local reply Envoy's router sends for this failure (status, body).
    pub fn router_reply(&self) -> (u16, &'static str) {
        match self {
            UpstreamError::Timeout => (504, "upstream request timeout"),
            UpstreamError::ConnectTimeout => {
                (503, "upstream connect error or disconnect/reset before headers. reset reason: connection timeout")
            }
            UpstreamError::Connect(_) => {
                (503, "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure")
            }
            UpstreamError::Reset(_) => {
                (503, "upstream connect error or disconnect/reset before headers. reset reason: connection termination")
            }
            // Envoy's answer when a response is over its buffer limit before headers went out.
            UpstreamError::TooLarge => (503, "response payload too large"),
        }
    }
}

/// Hop-by-hop headers a proxy does not forward.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
    )
}

/// Builds a request from a proxy-wasm header list (`:method`, `:path`, `:authority` and the
/// rest). For a body known whole, content-length is recomputed from it; a streaming body keeps
/// the content-length the filters left (as Envoy), else it is sent chunked.
pub fn build_request(
    headers: &[(String, Vec<u8>)],
    body: ProxyBody,
) -> Result<hyper::Request<ProxyBody>, String> {
    let pseudo = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    };
    let method = hyper::Method::from_bytes(pseudo(":method").unwrap_or(b"GET"))
        .map_err(|e| e.to_string())?;
    let path = pseudo(":path").unwrap_or(b"/");
    let uri = hyper::Uri::try_from(path).map_err(|e| format!(":path: {e}"))?;
    let mut builder = hyper::Request::builder().method(method).uri(uri);
    if let Some(authority) = pseudo(":authority") {
        builder = builder.header(hyper::header::HOST, authority);
    }
    for (k, v) in headers {
        let te_trailers = k == "te" && v.eq_ignore_ascii_case(b"trailers");
        let whole = matches!(body, ProxyBody::Full(_));
        if k.starts_with(':')
            || k == "host"
            || (k == "content-length" && whole)
            || (is_hop_by_hop(k) && !te_trailers)
        {
            continue;
        }
        builder = builder.header(k.as_str(), v.as_slice());
    }
    if let Some(whole) = body.as_full() {
        let needs_length =
            !whole.is_empty() || !matches!(pseudo(":method"), Some(b"GET") | Some(b"HEAD") | None);
        if needs_length {
            builder = builder.header(hyper::header::CONTENT_LENGTH, whole.len());
        }
    }
    builder.body(body).map_err(|e| e.to_string())
}
