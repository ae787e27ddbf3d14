//! Helpers shared by the integration tests: an in-process app driven with `oneshot`, a small
//! HTTP client (with timeouts) for tests over TCP (`http`), PostgreSQL clusters (`pg`) and the
//! built binary as a process (`serve`).
#![allow(dead_code)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::Router;
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;

mod http;
pub mod pg;
pub mod serve;

pub use http::*;

/// The bootstrap admin token of test services (at least 32 characters, as required).
pub const ADMIN: &str = "test-admin-token-0123456789abcdefghij";

/// Which store a test crate runs its suite on (each crate that includes this module says which
/// with a `const STORE: common::StoreKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// The service's router over a fresh database (SQLite file or PostgreSQL database, as the
/// crate's `STORE` says), with admin token [`ADMIN`].
pub struct TestApp {
    pub router: Router,
    pub state: realm_service::AppState,
    pub dir: TempDir,
    /// The PostgreSQL URL, on PostgreSQL.
    pub url: Option<String>,
}

impl TestApp {
    pub async fn new() -> TestApp {
        TestApp::on(crate::STORE).await
    }

    pub async fn on(store: StoreKind) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let (database, url) = match store {
            StoreKind::Sqlite => (
                realm_service::Database::Sqlite(dir.path().join("realm.db")),
                None,
            ),
            StoreKind::Postgres => {
                let url = pg::shared().create_database().await;
                (realm_service::Database::Postgres(url.clone()), Some(url))
            }
        };
        let state = realm_service::AppState::connect(&database, Some(ADMIN))
            .await
            .expect("open state");
        // On PostgreSQL the cache is used once the invalidation listener is connected.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !state.listening() {
            assert!(
                std::time::Instant::now() < deadline,
                "the invalidation listener did not connect"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        TestApp {
            router: realm_service::app(state.clone()),
            state,
            dir,
            url,
        }
    }

    /// `SELECT count(*) ...` straight on the database (`$1` is `param`; compare ids as text,
    /// e.g. `CAST(realm_id AS TEXT) = $1`, which both stores understand).
    pub async fn count(&self, sql: &str, param: Option<&str>) -> i64 {
        match &self.url {
            None => {
                let db =
                    rusqlite::Connection::open(self.dir.path().join("realm.db")).expect("open db");
                match param {
                    Some(p) => db.query_row(sql, [p], |r| r.get(0)),
                    None => db.query_row(sql, [], |r| r.get(0)),
                }
                .expect("count")
            }
            Some(url) => {
                let client = pg::connect(url).await;
                let row = match param {
                    Some(p) => client.query_one(sql, &[&p]).await,
                    None => client.query_one(sql, &[]).await,
                }
                .expect("count");
                row.get(0)
            }
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        answer_of(response).await
    }

    /// A request with an optional bearer token and optional JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let request = request(method, path.to_string(), token, body).map(Body::from);
        self.send(request).await
    }

    /// An admin call.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.call(method, path, Some(ADMIN), body).await
    }

    /// An admin `GET`.
    pub async fn get(&self, path: &str) -> Answer {
        self.admin("GET", path, None).await
    }

    /// An admin `DELETE`.
    pub async fn delete(&self, path: &str) -> Answer {
        self.admin("DELETE", path, None).await
    }

    /// An admin `POST` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.admin("POST", path, Some(body)).await
    }

    /// An admin `PATCH` with a JSON body.
    pub async fn patch(&self, path: &str, body: Value) -> Answer {
        self.admin("PATCH", path, Some(body)).await
    }

    /// An admin call with a raw body and content type.
    pub async fn admin_raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> Answer {
        let request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.to_string()))
            .expect("request");
        self.send(request).await
    }

    pub async fn authenticate(&self, realm: &str, token: &str, secret: &str) -> Answer {
        self.call(
            "POST",
            &format!("/{realm}/v0/authenticate"),
            Some(token),
            Some(json!({ "secret": secret })),
        )
        .await
    }

    /// The world's data plane looking up the world's key.
    pub async fn look_up(&self, w: &World) -> Answer {
        self.authenticate(&w.realm, &w.token, &w.secret).await
    }

    pub async fn control_plane(&self, name: &str) -> String {
        let answer = self
            .admin("POST", "/v2/control-planes", Some(json!({ "name": name })))
            .await;
        id(&answer.ok(201))
    }

    /// A new data-plane token of control plane `cp`.
    pub async fn dp_token(&self, cp: &str) -> String {
        let answer = self
            .admin(
                "POST",
                &format!("/v2/control-planes/{cp}/data-plane-tokens"),
                Some(json!({ "name": "dp" })),
            )
            .await;
        answer.ok(201)["token"].as_str().expect("token").to_string()
    }

    pub async fn realm(&self, body: Value) -> String {
        id(&self.admin("POST", "/v1/realms", Some(body)).await.ok(201))
    }

    pub async fn consumer(&self, realm: &str, username: &str) -> String {
        let answer = self
            .admin(
                "POST",
                &format!("/v1/realms/{realm}/consumers"),
                Some(json!({ "username": username })),
            )
            .await;
        id(&answer.ok(201))
    }

    /// Creates a key; returns (key id, secret).
    pub async fn key(&self, realm: &str, consumer: &str, body: Value) -> (String, String) {
        let answer = self
            .admin(
                "POST",
                &format!("/v1/realms/{realm}/consumers/{consumer}/keys"),
                Some(body),
            )
            .await
            .ok(201);
        (
            id(&answer),
            answer["secret"].as_str().expect("secret").to_string(),
        )
    }

    /// A control plane with a token, a realm allowing it, a consumer and a generated key.
    pub async fn world(&self) -> World {
        let cp = self.control_plane("cp").await;
        let token = self.dp_token(&cp).await;
        let realm = self
            .realm(json!({ "name": "prod", "allowed_control_planes": [cp] }))
            .await;
        let consumer = self.consumer(&realm, "Ariel").await;
        let (key, secret) = self.key(&realm, &consumer, json!({ "type": "new" })).await;
        World {
            cp,
            token,
            realm,
            consumer,
            key,
            secret,
        }
    }

    pub async fn metric(&self, line_prefix: &str) -> u64 {
        let text = self.call("GET", "/metrics", None, None).await.text;
        metric_value(&text, line_prefix)
    }
}

/// The value of the metric line starting with `line_prefix` (0 when absent).
pub fn metric_value(text: &str, line_prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub struct World {
    pub cp: String,
    pub token: String,
    pub realm: String,
    pub consumer: String,
    pub key: String,
    pub secret: String,
}

impl World {
    pub fn realm_path(&self) -> String {
        format!("/v1/realms/{}", self.realm)
    }
    pub fn consumer_path(&self) -> String {
        format!("{}/consumers/{}", self.realm_path(), self.consumer)
    }
    pub fn key_path(&self) -> String {
        format!("{}/keys/{}", self.consumer_path(), self.key)
    }
}

pub fn id(body: &Value) -> String {
    body["id"].as_str().expect("id").to_string()
}
