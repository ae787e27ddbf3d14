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

/// Sends a `POST` over a fresh HTTP/1.1 connection with the body in chunks
/// (`Transfer-Encoding: chunked`): the first chunk goes with the headers, each next one after its
/// delay. Returns the reply (status 0 and the error as the body on a transport error); 20 s
/// limit in all.
pub async fn post_in_chunks(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    chunks: &[(Duration, &str)],
) -> Reply {
    let run = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ntransfer-encoding: chunked\r\n"
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut first = true;
        for (delay, chunk) in chunks {
            if !first {
                tokio::time::sleep(*delay).await;
            }
            let mut out = if first { head.clone() } else { String::new() };
            first = false;
            out.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
            stream.write_all(out.as_bytes()).await?;
            stream.flush().await?;
        }
        stream.write_all(b"0\r\n\r\n").await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(parse_response(&raw))
    };
    match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(err)) => Reply {
            status: 0,
            headers: HeaderMap::new(),
            body: format!("chunked POST failed: {err:?}"),
        },
        Err(_) => Reply {
            status: 0,
            headers: HeaderMap::new(),
            body: "chunked POST timed out".to_string(),
        },
    }
}

/// A raw HTTP/1.1 response (read to the end of the connection), with a chunked body decoded.
fn parse_response(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            if let (Ok(n), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(n.trim().as_bytes()),
                reqwest::header::HeaderValue::from_str(v.trim()),
            ) {
                headers.append(n, v);
            }
        }
    }
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
                break;
            };
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Reply {
        status,
        headers,
        body,
    }
}
