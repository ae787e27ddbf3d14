//! HTTP client helpers: send a request through the gateway and look at the answer, and at what
//! the echo upstream says it received.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

/// A client without connection reuse surprises: each test gets its own; every request has a
/// timeout so that nothing hangs.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|err| panic!("building the HTTP client: {err}"))
}

/// One answer from the gateway.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// Sends `request`. A transport error (timeout, reset) becomes a reply with status 0 and the
    /// error as its body, so that the scenario goes on and reports every case that went wrong.
    pub async fn send(what: &str, request: reqwest::RequestBuilder) -> Reply {
        match request.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                let headers = res.headers().clone();
                let body = res.text().await.unwrap_or_default();
                Reply {
                    status,
                    headers,
                    body,
                }
            }
            Err(err) => Reply {
                status: 0,
                headers: HeaderMap::new(),
                body: format!("{what}: request failed: {err:?}"),
            },
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The `message` of a JSON error body.
    pub fn message(&self) -> Option<String> {
        self.json()
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// What the echo upstream received (only meaningful for a 200 from the upstream).
    pub fn upstream(&self) -> Upstream {
        Upstream(self.json())
    }

    /// A one-line summary for failure messages.
    pub fn summary(&self) -> String {
        let mut body = self.body.clone();
        if body.len() > 600 {
            body.truncate(600);
            body.push('…');
        }
        format!("{} {}", self.status, body)
    }
}

/// The echo upstream's description of the request it received.
#[derive(Debug, Clone)]
pub struct Upstream(pub Value);

impl Upstream {
    /// A header as the upstream saw it (a repeated header gives its values joined by ", ").
    pub fn header(&self, name: &str) -> Option<String> {
        match self.0.get("headers")?.get(name.to_ascii_lowercase())? {
            Value::String(s) => Some(s.clone()),
            Value::Array(list) => Some(
                list.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            _ => None,
        }
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// A query argument (None when absent; a repeated one as a JSON list).
    pub fn arg(&self, name: &str) -> Option<Value> {
        self.0.get("args")?.get(name).cloned()
    }

    pub fn raw_query(&self) -> String {
        self.0
            .get("raw_query")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }

    pub fn body(&self) -> String {
        self.0
            .get("body")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }

    pub fn path(&self) -> String {
        self.0
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }
}

/// A `multipart/form-data` body with the given text fields; returns (content type, body).
pub fn multipart(fields: &[(&str, &str)]) -> (String, String) {
    let boundary = "keyrealm-e2e-boundary-7d1f";
    let mut body = String::new();
    for (name, value) in fields {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    (format!("multipart/form-data; boundary={boundary}"), body)
}
