//! Benchmark baseline: a bare axum handler that answers every `POST /{realmId}/v0/authenticate`
//! with a fixed 201 JSON body, so the authenticate endpoint can be compared with the cheapest
//! answer axum can give on the same machine in the same run (`bench/realm-service/run.sh`).
//!
//! With `--read-body` the handler first reads the whole request body (as authenticate must):
//! that variant shows what reading a body costs by itself.
//!
//! `cargo run --release -p realm-service --example bare_201 -- 127.0.0.1:18101 [--read-body]`

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;

/// About the size of a real authenticate answer.
const BODY: &str = r#"{"id":"00000000-0000-0000-0000-000000000000","username":"Ariel","custom_id":null,"type":null,"tags":[],"consumer_group_names":[],"ttl":10,"negative_ttl":10,"credential":{"id":"00000000-0000-0000-0000-000000000000","created_at":"2026-01-01T00:00:00Z","tags":[],"expires_at":null}}"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18101".to_string());
    let read_body = args.next().as_deref() == Some("--read-body");
    let fixed = || {
        (
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/json")],
            BODY,
        )
    };
    let handler = if read_body {
        post(move |body: Bytes| async move {
            std::hint::black_box(body);
            fixed().into_response()
        })
    } else {
        post(move || async move { fixed().into_response() })
    };
    let app = Router::new().route("/{realm}/v0/authenticate", handler);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
