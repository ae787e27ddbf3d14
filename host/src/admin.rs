//! The admin address: `/ready` (200 `LIVE`) and `/stats/prometheus`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use tokio::sync::watch;

use crate::metrics::MetricsRegistry;

pub fn run(
    listener: std::net::TcpListener,
    metrics: Arc<MetricsRegistry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let runtime = match crate::server::local_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("admin: cannot build a runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("admin: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let metrics = metrics.clone();
                    tokio::task::spawn_local(async move {
                        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let metrics = metrics.clone();
                            async move { Ok::<_, std::convert::Infallible>(answer(req.uri().path(), &metrics)) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(crate::proxy::HEADER_READ_TIMEOUT)
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        }
    });
}

fn answer(path: &str, metrics: &MetricsRegistry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/ready" => (200, "text/plain; charset=UTF-8", "LIVE\n".to_string()),
        "/stats/prometheus" => (
            200,
            "text/plain; charset=UTF-8",
            metrics.render_prometheus(),
        ),
        _ => (
            404,
            "text/plain; charset=UTF-8",
            "invalid path\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::NOT_FOUND);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}
