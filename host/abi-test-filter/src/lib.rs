//! abi-test-filter: a general-purpose proxy-wasm filter for testing hosts. What it does is
//! chosen by its JSON plugin configuration ([`Config`]); each option exercises one area of the
//! proxy-wasm ABI: header add/replace/remove on request and response, body read and rewrite,
//! shared data with CAS, the tick timer, metrics, properties, local responses, and an HTTP call
//! and its answer. The same scenarios run in Envoy and in keyrealm-host (`host/tests/`), and
//! must observe the same results.
//!
//! Built for wasm32-wasip1 by `scripts/build-wasm.sh` into
//! `target/wasm32-wasip1/release/abi_test_filter.wasm`. Root id: `abi_test`.

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;

/// Header edits: applied in the order add, replace, remove.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    #[serde(default)]
    pub add: Vec<(String, String)>,
    #[serde(default)]
    pub replace: Vec<(String, String)>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A body edit.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyEdit {
    /// Replace the whole body with this.
    pub replace: Option<String>,
    /// Prepend this to the body.
    pub prefix: Option<String>,
    /// Append this to the body.
    pub suffix: Option<String>,
}

/// A local response, sent on request headers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalReply {
    pub status: u32,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Only when the request has this header.
    pub when_header: Option<String>,
}

/// An HTTP call made on request headers; the request waits for its answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Callout {
    pub cluster: String,
    pub path: String,
    #[serde(default = "default_authority")]
    pub authority: String,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// When the answer's status is this, answer the client locally with it (status and body).
    pub deny_on_status: Option<u32>,
    /// Copy the answer's body to the upstream request in `x-call-body` (printable ASCII only).
    #[serde(default)]
    pub copy_body: bool,
    /// Answer Continue from the request body callback even while the call is pending (what
    /// the SDK's default does); shows whether the host hands the body over while the headers
    /// are paused.
    #[serde(default)]
    pub body_continues: bool,
    /// Only when the request has this header.
    pub when_header: Option<String>,
}

fn default_authority() -> String {
    "callout.test".into()
}
fn default_method() -> String {
    "GET".into()
}
fn default_timeout() -> u64 {
    1000
}

/// The whole configuration; every part is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub request_headers: HeaderEdits,
    #[serde(default)]
    pub response_headers: HeaderEdits,
    pub request_body: Option<BodyEdit>,
    pub response_body: Option<BodyEdit>,
    pub local_reply: Option<LocalReply>,
    pub http_call: Option<Callout>,
    /// Count requests in shared data under this key (CAS loop); the count goes to the upstream
    /// in `x-shared-count`.
    pub shared_counter: Option<String>,
    /// Tick period; each tick counts in shared data `ticks`, and requests carry `x-ticked:
    /// yes` once a tick happened.
    pub tick_ms: Option<u64>,
    /// Define metrics with this prefix: a counter of requests, a gauge, a histogram; the
    /// counter's value goes upstream in `x-metric-requests`.
    pub metrics_prefix: Option<String>,
    /// Properties to read on request headers; each value (strings as is, 8-byte integers as
    /// decimal) goes upstream in `x-prop-<path with dots as dashes>`; missing ones as `<none>`.
    #[serde(default)]
    pub properties: Vec<String>,
    /// Properties to read on response headers; values go to the client the same way.
    #[serde(default)]
    pub response_properties: Vec<String>,
    /// Record the order of the end-of-stream callbacks (`on_done`, `on_log`) in shared data
    /// (and log each as `abi-test-filter lifecycle: <event>`)
    /// `lifecycle`; each request carries the record so far upstream in `x-lifecycle`.
    #[serde(default)]
    pub record_lifecycle: bool,
    /// Register a shared queue with this name on configure; each request enqueues its path, and
    /// `on_queue_ready` moves what is queued to shared data `queue_seen` (comma-separated); each
    /// request carries the record so far upstream in `x-queue-seen`.
    pub queue: Option<String>,
    /// Refuse the configuration (tests start-up failure).
    #[serde(default)]
    pub refuse: bool,
    /// Panic (the guest traps) on request headers when the request has this header: tests
    /// what a host answers for a failing filter, and how it replaces the instance.
    pub trap_when_header: Option<String>,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Metrics {
    requests: u32,
    gauge: u32,
    histogram: u32,
}

#[derive(Default)]
struct Root {
    config: std::rc::Rc<Config>,
    metrics: Option<std::rc::Rc<Metrics>>,
    queue: Option<u32>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config: Config = if bytes.is_empty() {
            Config::default()
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(c) => c,
                Err(e) => {
                    log::error!("abi-test-filter: bad configuration: {e}");
                    return false;
                }
            }
        };
        if config.refuse {
            log::error!("abi-test-filter: configuration refused on purpose");
            return false;
        }
        if let Some(ms) = config.tick_ms {
            self.set_tick_period(Duration::from_millis(ms));
        }
        if let Some(prefix) = &config.metrics_prefix {
            let define = |t, n: &str| {
                proxy_wasm::hostcalls::define_metric(t, &format!("{prefix}{n}")).unwrap_or(0)
            };
            self.metrics = Some(std::rc::Rc::new(Metrics {
                requests: define(MetricType::Counter, "requests"),
                gauge: define(MetricType::Gauge, "last_path_length"),
                histogram: define(MetricType::Histogram, "body_bytes"),
            }));
        }
        self.queue = config
            .queue
            .as_ref()
            .and_then(|name| proxy_wasm::hostcalls::register_shared_queue(name).ok());
        self.config = std::rc::Rc::new(config);
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            append_shared(self, "queue_seen", &String::from_utf8_lossy(&item));
        }
    }

    fn on_tick(&mut self) {
        loop {
            let (value, cas) = self.get_shared_data("ticks");
            let n = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            if self
                .set_shared_data("ticks", Some((n + 1).to_string().as_bytes()), cas)
                .is_ok()
            {
                break;
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            call: None,
            queue: self.queue,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    config: std::rc::Rc<Config>,
    metrics: Option<std::rc::Rc<Metrics>>,
    call: Option<u32>,
    queue: Option<u32>,
}

/// Appends `event` to the comma-separated list in shared data `key` (CAS loop).
fn append_shared<C: Context + ?Sized>(c: &C, key: &str, event: &str) {
    loop {
        let (value, cas) = c.get_shared_data(key);
        let mut text = value
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_default();
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(event);
        if c.set_shared_data(key, Some(text.as_bytes()), cas).is_ok() {
            return;
        }
    }
}

fn property_header(path: &str) -> String {
    format!("x-prop-{}", path.replace('.', "-"))
}

fn property_text(value: Option<Vec<u8>>) -> String {
    match value {
        None => "<none>".into(),
        Some(v) => match String::from_utf8(v.clone()) {
            Ok(s) if v.len() != 8 || s.chars().all(|c| !c.is_control()) => s,
            _ if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                i64::from_le_bytes(b).to_string()
            }
            _ => format!("<{} bytes>", v.len()),
        },
    }
}

impl Stream {
    fn apply_request_edits(&self) {
        let e = &self.config.request_headers;
        for (k, v) in &e.add {
            self.add_http_request_header(k, v);
        }
        for (k, v) in &e.replace {
            self.set_http_request_header(k, Some(v));
        }
        for k in &e.remove {
            self.set_http_request_header(k, None);
        }
    }

    fn count_shared(&self, key: &str) -> u64 {
        loop {
            let (value, cas) = self.get_shared_data(key);
            let n = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            match self.set_shared_data(key, Some((n + 1).to_string().as_bytes()), cas) {
                Ok(()) => return n + 1,
                Err(_) => continue,
            }
        }
    }
}

fn edit_body(original: &[u8], edit: &BodyEdit) -> Vec<u8> {
    let mut out = match &edit.replace {
        Some(r) => r.as_bytes().to_vec(),
        None => original.to_vec(),
    };
    if let Some(p) = &edit.prefix {
        let mut v = p.as_bytes().to_vec();
        v.extend_from_slice(&out);
        out = v;
    }
    if let Some(s) = &edit.suffix {
        out.extend_from_slice(s.as_bytes());
    }
    out
}

impl Stream {
    fn record(&self, event: &str) {
        if self.config.record_lifecycle {
            append_shared(self, "lifecycle", event);
            // Also in the log, for tests that cannot read shared data (a host that exited).
            log::info!("abi-test-filter lifecycle: {event}");
        }
    }
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        self.record("done");
        true
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if self.call != Some(token) {
            log::error!("abi-test-filter: answer for unknown token {token}");
            return;
        }
        self.call = None;
        let status = self.get_http_call_response_header(":status");
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        if let (Some(deny), Some(s)) = (
            self.config
                .http_call
                .as_ref()
                .and_then(|c| c.deny_on_status),
            &status,
        ) {
            if s == &deny.to_string() {
                self.send_http_response(deny, vec![("x-denied-by-callout", "1")], Some(&body));
                return;
            }
        }
        self.set_http_request_header("x-call-status", Some(status.as_deref().unwrap_or("none")));
        self.set_http_request_header("x-call-headers", Some(&num_headers.min(1).to_string()));
        self.set_http_request_header("x-call-body-bytes", Some(&body.len().to_string()));
        if self.config.http_call.as_ref().is_some_and(|c| c.copy_body) {
            let text: String = body
                .iter()
                .map(|b| {
                    if (0x20..0x7f).contains(b) {
                        char::from(*b)
                    } else {
                        '?'
                    }
                })
                .collect();
            self.set_http_request_header("x-call-body", Some(&text));
        }
        self.resume_http_request();
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = self.config.clone();
        if let Some(h) = &config.trap_when_header {
            if self.get_http_request_header(h).is_some() {
                panic!("abi-test-filter: trapping on request, as configured");
            }
        }
        if let Some(l) = &config.local_reply {
            let applies = match &l.when_header {
                Some(h) => self.get_http_request_header(h).is_some(),
                None => true,
            };
            if applies {
                let headers: Vec<(&str, &str)> = l
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                self.send_http_response(l.status, headers, Some(l.body.as_bytes()));
                return Action::Pause;
            }
        }
        self.apply_request_edits();
        if config.request_body.is_some() {
            self.set_http_request_header("content-length", None);
        }
        if config.record_lifecycle {
            let (value, _) = self.get_shared_data("lifecycle");
            let text = value
                .and_then(|v| String::from_utf8(v).ok())
                .unwrap_or_default();
            self.set_http_request_header("x-lifecycle", Some(&text));
        }
        if let Some(queue) = self.queue {
            let (value, _) = self.get_shared_data("queue_seen");
            let text = value
                .and_then(|v| String::from_utf8(v).ok())
                .unwrap_or_default();
            self.set_http_request_header("x-queue-seen", Some(&text));
            let path = self.get_http_request_header(":path").unwrap_or_default();
            let status = match self.enqueue_shared_queue(queue, Some(path.as_bytes())) {
                Ok(()) => "ok".to_string(),
                Err(s) => format!("{s:?}"),
            };
            self.set_http_request_header("x-enqueued", Some(&status));
        }
        if let Some(key) = &config.shared_counter {
            let n = self.count_shared(key);
            self.set_http_request_header("x-shared-count", Some(&n.to_string()));
        }
        if config.tick_ms.is_some() {
            let (ticks, _) = self.get_shared_data("ticks");
            self.set_http_request_header(
                "x-ticked",
                Some(if ticks.is_some() { "yes" } else { "no" }),
            );
        }
        if let Some(m) = &self.metrics {
            let _ = proxy_wasm::hostcalls::increment_metric(m.requests, 1);
            let path_len = self
                .get_http_request_header(":path")
                .map(|p| p.len())
                .unwrap_or(0);
            let _ = proxy_wasm::hostcalls::record_metric(m.gauge, path_len as u64);
            let value = proxy_wasm::hostcalls::get_metric(m.requests).unwrap_or(0);
            self.set_http_request_header("x-metric-requests", Some(&value.to_string()));
        }
        for p in &config.properties {
            let path: Vec<&str> = p.split('.').collect();
            let value = property_text(self.get_property(path));
            self.set_http_request_header(&property_header(p), Some(&value));
        }
        let call = config.http_call.as_ref().filter(|c| match &c.when_header {
            Some(h) => self.get_http_request_header(h).is_some(),
            None => true,
        });
        if let Some(c) = call {
            let headers = vec![
                (":method", c.method.as_str()),
                (":path", c.path.as_str()),
                (":authority", c.authority.as_str()),
                ("x-from-filter", "abi-test"),
            ];
            let body = if c.body.is_empty() {
                None
            } else {
                Some(c.body.as_bytes())
            };
            match self.dispatch_http_call(
                &c.cluster,
                headers,
                body,
                vec![],
                Duration::from_millis(c.timeout_ms),
            ) {
                Ok(token) => {
                    self.call = Some(token);
                    return Action::Pause;
                }
                Err(status) => {
                    self.set_http_request_header(
                        "x-call-status",
                        Some(&format!("dispatch-error-{}", status as u32)),
                    );
                }
            }
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.call.is_some() {
            if self
                .config
                .http_call
                .as_ref()
                .is_some_and(|c| c.body_continues)
            {
                return Action::Continue;
            }
            // Keep the request waiting for the call's answer.
            return Action::Pause;
        }
        let Some(edit) = self.config.request_body.clone() else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        if let Some(m) = &self.metrics {
            let _ = proxy_wasm::hostcalls::record_metric(m.histogram, body.len() as u64);
        }
        let new = edit_body(&body, &edit);
        self.set_http_request_body(0, body_size, &new);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = self.config.clone();
        let e = &config.response_headers;
        for (k, v) in &e.add {
            self.add_http_response_header(k, v);
        }
        for (k, v) in &e.replace {
            self.set_http_response_header(k, Some(v));
        }
        for k in &e.remove {
            self.set_http_response_header(k, None);
        }
        if config.response_body.is_some() {
            self.set_http_response_header("content-length", None);
        }
        for p in &config.response_properties {
            let path: Vec<&str> = p.split('.').collect();
            let value = property_text(self.get_property(path));
            self.set_http_response_header(&property_header(p), Some(&value));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.record("log");
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(edit) = self.config.response_body.clone() else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let new = edit_body(&body, &edit);
        self.set_http_response_body(0, body_size, &new);
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_parses_and_rejects_unknown_fields() {
        let c: Config = serde_json::from_str(
            r#"{"request_headers":{"add":[["a","1"]]},"http_call":{"cluster":"c","path":"/p"},"tick_ms":10}"#,
        )
        .expect("valid");
        assert_eq!(
            c.request_headers.add,
            vec![("a".to_string(), "1".to_string())]
        );
        assert_eq!(c.http_call.map(|h| h.timeout_ms), Some(1000));
        assert!(serde_json::from_str::<Config>(r#"{"nope":1}"#).is_err());
    }

    #[test]
    fn body_edits() {
        let e = BodyEdit {
            prefix: Some("<".into()),
            suffix: Some(">".into()),
            ..BodyEdit::default()
        };
        assert_eq!(edit_body(b"x", &e), b"<x>");
        let r = BodyEdit {
            replace: Some("new".into()),
            ..BodyEdit::default()
        };
        assert_eq!(edit_body(b"old", &r), b"new");
    }

    #[test]
    fn property_values() {
        assert_eq!(property_text(None), "<none>");
        assert_eq!(property_text(Some(b"/a".to_vec())), "/a");
        assert_eq!(property_text(Some(200i64.to_le_bytes().to_vec())), "200");
    }
}
