//! The library's `spawn` / `shutdown`, as the end-to-end suite uses them.

mod common;

const STORE: common::StoreKind = common::StoreKind::Sqlite;

use std::time::Duration;

use common::HttpClient;
use realm_service::{spawn, ServiceConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn spawn_serves_on_a_free_port_and_shutdown_drops_keep_alive_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServiceConfig::new(dir.path().join("realm.db"));
    config.admin_token = Some(common::ADMIN.into());
    let service = spawn(config).await.expect("spawn");
    let addr = service.local_addr();
    assert_ne!(addr.port(), 0);
    let http = HttpClient::new(addr);
    http.call(
        "POST",
        "/v1/realms",
        Some(common::ADMIN),
        Some(json!({"name": "r"})),
    )
    .await
    .ok(201);

    // An idle keep-alive connection.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: realm\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answer")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    tokio::time::timeout(Duration::from_secs(5), service.shutdown())
        .await
        .expect("shutdown finishes");
    // The server closed the idle connection...
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("connection closed, not left hanging");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "connection still open: {read:?}"
    );
    // ... and accepts no new ones.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn the_data_survives_a_restart_of_the_library_service() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("realm.db");
    let mut config = ServiceConfig::new(database.clone());
    config.admin_token = Some(common::ADMIN.into());
    let first = spawn(config.clone()).await.unwrap();
    let realm = HttpClient::new(first.local_addr())
        .call(
            "POST",
            "/v1/realms",
            Some(common::ADMIN),
            Some(json!({"name": "kept"})),
        )
        .await
        .ok(201);
    first.shutdown().await;
    let second = spawn(config).await.unwrap();
    let got = HttpClient::new(second.local_addr())
        .call(
            "GET",
            &format!("/v1/realms/{}", realm["id"].as_str().unwrap()),
            Some(common::ADMIN),
            None,
        )
        .await
        .ok(200);
    assert_eq!(got, realm);
    second.shutdown().await;
}

#[tokio::test]
async fn a_database_path_that_cannot_be_opened_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServiceConfig::new(dir.path().join("missing-dir").join("realm.db"));
    let error = spawn(config).await.err().expect("error");
    assert!(error.to_string().contains("missing-dir"), "{error}");
}

#[tokio::test]
async fn an_admin_token_shorter_than_32_characters_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServiceConfig::new(dir.path().join("realm.db"));
    config.admin_token = Some("x".repeat(31));
    let error = spawn(config.clone()).await.err().expect("refused");
    assert!(error.to_string().contains("at least 32"), "{error}");
    config.admin_token = Some("x".repeat(32));
    spawn(config)
        .await
        .expect("32 characters are enough")
        .shutdown()
        .await;
}
