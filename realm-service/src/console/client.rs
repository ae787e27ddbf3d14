//! The console's client of the service's HTTP API, in-process: requests go through a clone of
//! the API router with `oneshot`, exactly as they would arrive over the network.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

/// Largest API answer the console reads (a page of 1000 items is far below it).
const MAX_ANSWER: usize = 32 * 1024 * 1024;
/// No API call may take longer than this.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Api {
    router: Router,
}

/// An error answer of the API (its problem+json), or a failure to get one.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
    /// `invalid_parameters`: field → reason (several reasons for one field are joined).
    pub fields: BTreeMap<String, String>,
}

impl Problem {
    fn failed(detail: impl Into<String>) -> Problem {
        Problem {
            status: StatusCode::BAD_GATEWAY,
            detail: detail.into(),
            fields: BTreeMap::new(),
        }
    }

    pub fn is_unauthorized(&self) -> bool {
        self.status == StatusCode::UNAUTHORIZED
    }

    /// A field-less problem as an error for `field` (e.g. a 409 on a username), unless it already
    /// names fields.
    pub fn on_field(mut self, field: &str) -> Problem {
        if self.fields.is_empty() {
            self.fields.insert(field.to_string(), self.detail.clone());
        }
        self
    }

    /// A 409 (which names no field) as an error for `field`; any other problem as it is.
    pub fn conflict_on(self, field: &str) -> Problem {
        if self.status == StatusCode::CONFLICT {
            self.on_field(field)
        } else {
            self
        }
    }
}

impl Api {
    pub fn new(router: Router) -> Api {
        Api { router }
    }

    /// Sends one request; `Ok` with the JSON answer (`Null` for an empty one) on 2xx.
    pub async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Problem> {
        let (status, bytes) = self.raw(token, method, path, body).await?;
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| {
                Problem::failed(format!("the API answered {status} with bad JSON: {e}"))
            });
        }
        Err(problem(status, &bytes))
    }

    /// Sends one request and returns the status and body as they are.
    pub async fn raw(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, axum::body::Bytes), Problem> {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .map_err(|e| Problem::failed(format!("cannot build the API request: {e}")))?;
        let call = async {
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .map_err(|e| Problem::failed(format!("API call failed: {e}")))?;
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER)
                .await
                .map_err(|e| Problem::failed(format!("cannot read the API answer: {e}")))?;
            Ok((status, bytes))
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| Problem::failed("the API did not answer in time"))?
    }

    pub async fn get(&self, token: &str, path: &str) -> Result<Value, Problem> {
        self.call(Some(token), Method::GET, path, None).await
    }

    /// Every item of a paged list, following `next` links, at most `max_items` (the bool says
    /// whether the list went on beyond them).
    pub async fn get_all(
        &self,
        token: &str,
        path: &str,
        max_items: usize,
    ) -> Result<(Vec<Value>, bool), Problem> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut next = Some(format!("{path}{separator}page%5Bsize%5D=1000"));
        let mut items = Vec::new();
        while let Some(url) = next.take() {
            let page = self.get(token, &url).await?;
            if let Some(data) = page.get("data").and_then(Value::as_array) {
                items.extend(data.iter().cloned());
            }
            next = page
                .pointer("/meta/page/next")
                .and_then(Value::as_str)
                .map(str::to_string);
            if items.len() >= max_items {
                let more = items.len() > max_items || next.is_some();
                items.truncate(max_items);
                return Ok((items, more));
            }
        }
        Ok((items, false))
    }
}

fn problem(status: StatusCode, bytes: &[u8]) -> Problem {
    let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let detail = value
        .get("detail")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("the API answered {status}"));
    let mut fields = BTreeMap::new();
    for parameter in value
        .get("invalid_parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let field = parameter.get("field").and_then(Value::as_str).unwrap_or("");
        let reason = parameter
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("");
        fields
            .entry(field.to_string())
            .and_modify(|r: &mut String| {
                r.push_str("; ");
                r.push_str(reason);
            })
            .or_insert_with(|| reason.to_string());
    }
    Problem {
        status,
        detail,
        fields,
    }
}
