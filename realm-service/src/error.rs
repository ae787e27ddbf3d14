//! Errors: the crate's own [`Error`] (start-up, storage) and [`ApiError`], which every handler
//! returns and which renders as `application/problem+json`.
//!
//! Handlers do not know the request path, so an [`ApiError`] travels to the outer middleware as a
//! response extension; [`to_problem`] fills in `instance` and writes the body. It also turns any
//! other 4xx/5xx (axum's 404/405 fallbacks, extractor rejections) into problem+json, so no error
//! leaves the service in another shape.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Failures of the service outside a request: opening or migrating the database, binding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database {database}: {reason}")]
    Database { database: String, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("background task failed: {0}")]
    Task(String),
}

/// One entry of `invalid_parameters` in a 400 answer.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct InvalidParameter {
    /// The field (body path such as `allowed_control_planes[1]`, query parameter, or path segment).
    pub field: String,
    /// Why the value was refused.
    pub reason: String,
    /// The rule that failed, when there is a named one (`required`, `type`, `min`, `max`, `unknown`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl InvalidParameter {
    pub fn new(field: impl Into<String>, rule: &str, reason: impl Into<String>) -> Self {
        InvalidParameter {
            field: field.into(),
            reason: reason.into(),
            rule: Some(rule.to_string()),
        }
    }
}

/// The problem+json body (RFC 7807 with Konnect's extra fields).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    pub status: u16,
    pub title: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub instance: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid_parameters: Option<Vec<InvalidParameter>>,
    /// Only on 404 from the authenticate endpoint: how many minutes a data plane may cache the miss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_ttl: Option<i64>,
}

/// An error answer of the API. Rendered by [`to_problem`].
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
    pub invalid_parameters: Vec<InvalidParameter>,
    pub negative_ttl: Option<i64>,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: detail.into(),
            invalid_parameters: Vec::new(),
            negative_ttl: None,
        }
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, detail)
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }
    /// A 400 naming the fields at fault.
    pub fn invalid(params: Vec<InvalidParameter>) -> Self {
        let detail = params
            .iter()
            .map(|p| format!("{}: {}", p.field, p.reason))
            .collect::<Vec<_>>()
            .join("; ");
        ApiError {
            status: StatusCode::BAD_REQUEST,
            detail,
            invalid_parameters: params,
            negative_ttl: None,
        }
    }
    /// A 400 for one field.
    pub fn invalid_field(field: impl Into<String>, rule: &str, reason: impl Into<String>) -> Self {
        Self::invalid(vec![InvalidParameter::new(field, rule, reason)])
    }
    /// The database cannot be reached: 503, and the client may retry.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database unavailable; retry later",
        )
    }
    /// Something broke inside (storage). Logged; the client sees no internals.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    fn into_problem(self, instance: String) -> Problem {
        let status = self.status.as_u16();
        let invalid_parameters = if self.status == StatusCode::BAD_REQUEST {
            Some(self.invalid_parameters)
        } else {
            None
        };
        Problem {
            status,
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            kind: format!("https://httpstatuses.com/{status}"),
            instance,
            detail: self.detail,
            invalid_parameters,
            negative_ttl: self.negative_ttl,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// Content type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Renders an [`ApiError`] left by a handler, and converts every other error answer (axum's
/// rejections and fallbacks) to problem+json. `instance` is the request path.
pub async fn to_problem(response: Response, instance: &str) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    if let Some(error) = response.extensions().get::<ApiError>().cloned() {
        return render(error, instance, response);
    }
    let already = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if already {
        return response;
    }
    // An answer produced by axum (rejection text, empty 404/405): keep its message as the
    // detail, never more than a short text.
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let detail = if text.is_empty() {
        match status {
            StatusCode::NOT_FOUND => "no such route".to_string(),
            StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".to_string(),
            StatusCode::PAYLOAD_TOO_LARGE => "request body is larger than 1 MiB".to_string(),
            _ => status.canonical_reason().unwrap_or("error").to_string(),
        }
    } else {
        text
    };
    let mut error = ApiError::new(status, detail.clone());
    if status == StatusCode::BAD_REQUEST {
        error.invalid_parameters = vec![InvalidParameter::new("request", "invalid", detail)];
    }
    render(error, instance, Response::from_parts(parts, Body::empty()))
}

fn render(error: ApiError, instance: &str, response: Response) -> Response {
    let problem = error.into_problem(instance.to_string());
    let body = serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec());
    let (mut parts, _) = response.into_parts();
    parts.extensions.remove::<ApiError>();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    Response::from_parts(parts, Body::from(body))
}
