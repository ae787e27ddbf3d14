//! The HTTP side of the tests: an [`Answer`] as a client sees it (with assertions for the API's
//! success and problem+json shapes), request building, and a small HTTP/1.1 client over TCP
//! where every call has a timeout. Also used by `examples/lookup_latency.rs`.
#![allow(dead_code)]

use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

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
pub fn request(
    method: &str,
    uri: String,
    token: Option<&str>,
    body: Option<Value>,
) -> Request<Bytes> {
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
pub async fn answer_of<B>(response: axum::http::Response<B>) -> Answer
where
    B: HttpBody,
    B::Error: std::fmt::Display,
{
    try_answer_of(response).await.expect("body")
}

/// Reads a whole response; a body that breaks off is an `Err`.
pub async fn try_answer_of<B>(response: axum::http::Response<B>) -> Result<Answer, String>
where
    B: HttpBody,
    B::Error: std::fmt::Display,
{
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
        self.try_call(method, path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}"))
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
        self.exchange(request, || format!("{method} {path}")).await
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
        self.exchange(request, || format!("console {path}"))
            .await
            .unwrap_or_else(|e| panic!("console {path} failed: {e}"))
    }

    /// Sends `request` and reads the whole answer within 20 s (past that, a panic naming
    /// `what`); a failed connection or body is an `Err`.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        what: impl FnOnce() -> String,
    ) -> Result<Answer, String> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            try_answer_of(response).await
        };
        tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .unwrap_or_else(|_| panic!("{} timed out", what()))
    }

    /// A POST that must answer 201; returns the created object.
    pub async fn create(&self, path: &str, token: &str, body: Value) -> Value {
        self.call("POST", path, Some(token), Some(body))
            .await
            .ok(201)
    }
    /// Through the admin API (token `admin`): control plane `name`, a data-plane token of it and
    /// realm `name` allowing it.
    pub async fn data_plane_realm(&self, admin: &str, name: &str) -> DataPlaneRealm {
        let field = |object: &Value, field: &str| object[field].as_str().expect(field).to_string();
        let cp = self
            .create("/v2/control-planes", admin, json!({ "name": name }))
            .await;
        let cp = field(&cp, "id");
        let token = self
            .create(
                &format!("/v2/control-planes/{cp}/data-plane-tokens"),
                admin,
                json!({}),
            )
            .await;
        let realm = self
            .create(
                "/v1/realms",
                admin,
                json!({ "name": name, "allowed_control_planes": [cp] }),
            )
            .await;
        DataPlaneRealm {
            token: field(&token, "token"),
            token_id: field(&token, "id"),
            realm: field(&realm, "id"),
            cp,
        }
    }
}

/// What [`HttpClient::data_plane_realm`] made: ids, and the data-plane token itself.
pub struct DataPlaneRealm {
    pub cp: String,
    pub token: String,
    pub token_id: String,
    pub realm: String,
}
