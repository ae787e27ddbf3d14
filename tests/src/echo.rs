//! The echo upstream: answers every request with 200 and a JSON description of what it received,
//! shaped like httpbin's `/anything`. The end-to-end tests read it to assert what reached the
//! upstream through the gateway (consumer headers, hidden credentials, rewritten bodies).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Json, Response};
use axum::Router;
use serde_json::{Map, Value};
use tokio::net::TcpListener;

/// Bodies above this are refused (the echo is for tests and demos).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// The axum application of the echo upstream (one fallback handler for every method and path).
pub fn app() -> Router {
    app_counting(Arc::default())
}

/// Like [`app`], counting in `arrived` every request whose headers arrive (before its body).
pub fn app_counting(arrived: Arc<AtomicU64>) -> Router {
    Router::new().fallback(echo).with_state(arrived)
}

/// Serves the echo upstream on `listener` until the process ends (or the future is dropped).
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    axum::serve(listener, app()).await
}

/// A running in-process echo upstream; stops when dropped.
pub struct EchoUpstream {
    addr: SocketAddr,
    arrived: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoUpstream {
    /// Binds 127.0.0.1 on a free port and serves there.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let arrived = Arc::new(AtomicU64::new(0));
        let app = app_counting(arrived.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("echo upstream stopped: {err}");
            }
        });
        Ok(Self {
            addr,
            arrived,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests reached the upstream so far, counted when their headers arrived (so a
    /// request whose body never came is counted too).
    pub fn requests_arrived(&self) -> u64 {
        self.arrived.load(Ordering::SeqCst)
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(State(arrived): State<Arc<AtomicU64>>, request: Request) -> Response {
    arrived.fetch_add(1, Ordering::SeqCst);
    let (parts, body): (_, Body) = request.into_parts();
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => {
            Json(describe(&parts.method, &parts.uri, &parts.headers, &body)).into_response()
        }
        Err(err) => (
            axum::http::StatusCode::BAD_REQUEST,
            format!("echo upstream: cannot read the body: {err}"),
        )
            .into_response(),
    }
}

/// The JSON description of one request: `method`, `path`, `url`, `args`, `headers`, `body`,
/// `raw_query`. Header names are lowercased; a repeated header or query argument becomes a list.
pub fn describe(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Value {
    let raw_query = uri.query().unwrap_or("");
    let mut args = Map::new();
    if !raw_query.is_empty() {
        for (name, value) in form_urlencoded::parse(raw_query.as_bytes()) {
            push_value(&mut args, name.into_owned(), value.into_owned());
        }
    }
    let mut header_map = Map::new();
    for (name, value) in headers {
        push_value(
            &mut header_map,
            name.as_str().to_ascii_lowercase(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        );
    }
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    serde_json::json!({
        "method": method.as_str(),
        "path": uri.path(),
        "url": format!("http://{host}{path_and_query}"),
        "args": args,
        "headers": header_map,
        "body": String::from_utf8_lossy(body),
        "raw_query": raw_query,
    })
}

fn push_value(map: &mut Map<String, Value>, name: String, value: String) {
    match map.get_mut(&name) {
        None => {
            map.insert(name, Value::String(value));
        }
        Some(Value::Array(list)) => list.push(Value::String(value)),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, Value::String(value)]);
        }
    }
}
