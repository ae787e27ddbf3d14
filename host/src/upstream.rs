//! Upstream HTTP/1.1 connections: a per-worker pool of keep-alive connections to cluster
//! endpoints, used both for proxied requests and for the filters' HTTP calls.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::config::{ClusterConfig, DiscoveryType};

/// Largest body read from an upstream or a callout.
pub const MAX_BODY: usize = 64 << 20;
const MAX_IDLE_PER_ENDPOINT: usize = 128;

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
}

/// A response read in full.
pub struct FullResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

/// The worker's connection pool.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<SendRequest<Full<Bytes>>>>>,
    next: Cell<usize>,
}

impl Pool {
    async fn endpoint(&self, cluster: &ClusterConfig) -> Result<SocketAddr, UpstreamError> {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        let (host, port) = n
            .checked_rem(cluster.endpoints.len())
            .and_then(|i| cluster.endpoints.get(i))
            .ok_or_else(|| {
                UpstreamError::Connect(format!("cluster {} has no endpoints", cluster.name))
            })?;
        match cluster.discovery {
            DiscoveryType::Static => host
                .parse()
                .map(|ip| SocketAddr::new(ip, *port))
                .map_err(|_| UpstreamError::Connect(format!("bad address {host}"))),
            DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
                // Resolution counts as connection set-up: bounded by the connect timeout.
                let lookup = tokio::net::lookup_host((host.as_str(), *port));
                tokio::time::timeout(cluster.connect_timeout, lookup)
                    .await
                    .map_err(|_| UpstreamError::ConnectTimeout)?
                    .map_err(|e| UpstreamError::Connect(format!("resolving {host}: {e}")))?
                    .next()
                    .ok_or_else(|| UpstreamError::Connect(format!("{host} has no address")))
            }
        }
    }

    async fn connection(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<SendRequest<Full<Bytes>>, UpstreamError> {
        loop {
            let candidate = self.idle.borrow_mut().get_mut(&addr).and_then(Vec::pop);
            match candidate {
                Some(mut sender) => {
                    if sender.is_closed() {
                        continue;
                    }
                    if sender.ready().await.is_ok() {
                        return Ok(sender);
                    }
                }
                None => break,
            }
        }
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

    fn give_back(&self, addr: SocketAddr, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(sender);
        }
    }

    /// Sends a request to one endpoint of `cluster` and reads the whole response, all within
    /// `timeout` (connection set-up within the cluster's `connect_timeout`).
    pub async fn exchange(
        &self,
        cluster: &ClusterConfig,
        request: hyper::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<FullResponse, UpstreamError> {
        let work = async {
            let addr = self.endpoint(cluster).await?;
            let mut sender = self.connection(addr, cluster.connect_timeout).await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| UpstreamError::Reset(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| UpstreamError::Reset(e.to_string()))?
                .to_bytes();
            let keep_alive = !parts
                .headers
                .get_all(hyper::header::CONNECTION)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            if keep_alive {
                self.give_back(addr, sender);
            }
            let headers = parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect();
            Ok(FullResponse {
                status: parts.status.as_u16(),
                headers,
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
/// rest); content-length is recomputed from the body.
pub fn build_request(
    headers: &[(String, Vec<u8>)],
    body: Bytes,
) -> Result<hyper::Request<Full<Bytes>>, String> {
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
        if k.starts_with(':')
            || k == "host"
            || k == "content-length"
            || (is_hop_by_hop(k) && !te_trailers)
        {
            continue;
        }
        builder = builder.header(k.as_str(), v.as_slice());
    }
    let needs_length =
        !body.is_empty() || !matches!(pseudo(":method"), Some(b"GET") | Some(b"HEAD") | None);
    if needs_length {
        builder = builder.header(hyper::header::CONTENT_LENGTH, body.len());
    }
    builder.body(Full::new(body)).map_err(|e| e.to_string())
}
