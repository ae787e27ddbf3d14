//! Helpers shared by the integration tests: an in-process app driven with `oneshot`, and a small
//! HTTP client (with timeouts) for tests over TCP.
#![allow(dead_code)]

use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;

pub mod pg;

/// The bootstrap admin token of test services (at least 32 characters, as required).
pub const ADMIN: &str = "test-admin-token-0123456789abcdefghij";

/// Which store a test crate runs its suite on (each crate that includes this module says which
/// with a `const STORE: common::StoreKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// An answer, as a client sees it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    pub fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// Asserts a problem+json answer with this status and returns its body.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(
            self.content_type(),
            "application/problem+json",
            "{}",
            self.text
        );
        let body = self.json();
        assert_eq!(body["status"], status);
        for field in ["title", "type", "instance", "detail"] {
            assert!(body[field].is_string(), "problem lacks {field}: {body}");
        }
        body
    }
    /// Asserts a 400 naming `field` among its invalid_parameters.
    pub fn invalid(&self, field: &str) -> Value {
        let body = self.problem(400);
        let fields: Vec<&str> = body["invalid_parameters"]
            .as_array()
            .expect("invalid_parameters")
            .iter()
            .map(|p| p["field"].as_str().unwrap_or(""))
            .collect();
        assert!(fields.contains(&field), "expected {field} in {fields:?}");
        body
    }
    pub fn ok(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        if self.text.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }
}

/// A request with an optional bearer token and optional JSON body.
fn request(method: &str, uri: String, token: Option<&str>, body: Option<Value>) -> Request<Bytes> {
    let mut builder = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(uri);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let bytes = match body {
        Some(value) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(value.to_string())
        }
        None => Bytes::new(),
    };
    builder.body(bytes).expect("request")
}

/// Reads a whole response.
async fn answer_of<B>(response: axum::http::Response<B>) -> Answer
where
    B: HttpBody,
    B::Error: std::fmt::Debug,
{
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
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

pub fn id(body: &Value) -> String {
    body["id"].as_str().expect("id").to_string()
}

/// A tiny HTTP/1.1 client over TCP; every call has a timeout.
pub struct HttpClient {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    pub fn new(addr: std::net::SocketAddr) -> HttpClient {
        HttpClient {
            base: format!("http://{addr}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let request = request(method, format!("{}{path}", self.base), token, body).map(Full::new);
        let exchange = async {
            let response = self.client.request(request).await.expect("request failed");
            answer_of(response).await
        };
        tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {path} timed out"))
    }

    /// Like [`HttpClient::call`], but a failed connection (a killed server) is an `Err`, not a
    /// panic.
    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Answer, String> {
        let request = request(method, format!("{}{path}", self.base), token, body).map(Full::new);
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(Answer {
                status,
                headers,
                text: String::from_utf8_lossy(&bytes).into_owned(),
            })
        };
        tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {path} timed out"))
    }

    /// A browser's request to the console: an optional `Cookie` header and an optional
    /// urlencoded form (then a POST). Redirects are not followed.
    pub async fn browse(
        &self,
        path: &str,
        cookie: Option<&str>,
        form: Option<&[(&str, &str)]>,
    ) -> Answer {
        let mut builder = Request::builder()
            .method(if form.is_some() {
                Method::POST
            } else {
                Method::GET
            })
            .uri(format!("{}{path}", self.base));
        if let Some(cookie) = cookie {
            builder = builder.header(header::COOKIE, cookie);
        }
        let body = match form {
            Some(fields) => {
                builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                let mut encoded = form_urlencoded::Serializer::new(String::new());
                encoded.extend_pairs(fields.iter().copied());
                Bytes::from(encoded.finish())
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(body)).expect("request");
        let exchange = async {
            let response = self.client.request(request).await.expect("request failed");
            answer_of(response).await
        };
        tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .unwrap_or_else(|_| panic!("console {path} timed out"))
    }

    /// A POST that must answer 201; returns the created object.
    pub async fn create(&self, path: &str, token: &str, body: Value) -> Value {
        self.call("POST", path, Some(token), Some(body))
            .await
            .ok(201)
    }
}
