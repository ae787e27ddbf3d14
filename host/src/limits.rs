//! Every limit the host puts on what a guest (or a client) may make it hold, in one place, as
//! Envoy's wasm host has its `limits`. Each has a default (below, and in `docs/host.md`) and can
//! be changed with `--limit NAME=VALUE` on the command line or through [`crate::HostOptions`].
//!
//! What happens past each limit:
//! - memory and table growth past the limit fails inside the guest (`memory.grow` /
//!   `table.grow` answer -1), as the wasm spec allows; the instance lives on;
//! - a host call that would pass a limit is refused with `InternalFailure` (the SDKs turn an
//!   unexpected status into a panic, so a Rust filter usually traps: its instance fails and is
//!   replaced, and the request it served gets Envoy's 503);
//! - log lines are cut at `log_line_bytes`; the in-memory log keeps at most `log_kept_bytes`;
//! - bodies: a request body past `request_body_bytes`, or one that would take the connection's
//!   or the process's buffered body bytes past `connection_body_bytes` / `process_body_bytes`,
//!   is answered 413; an upstream response body past the same budgets is answered 503.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The limits applied to every instance, request and connection. `VmLimits` is the same type
/// under its older name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of one call into the guest (epoch interruption).
    pub call_budget: Duration,
    /// Budget of start-up calls (`_initialize`, `on_vm_start`, `on_configure`).
    pub start_budget: Duration,
    /// The longest a filter may keep a request or response paused; then the request fails
    /// (503, or passes with `fail_open`) and its context ends.
    pub pause_limit: Duration,
    /// Linear memory of one instance, in bytes (one memory: modules with more are refused).
    pub memory_bytes: usize,
    /// Elements of all tables of one instance.
    pub table_elements: usize,
    /// Pairs in one header map a guest may build (add, replace, set pairs).
    pub header_pairs: usize,
    /// Bytes (names and values) of one header map a guest may build.
    pub header_map_bytes: usize,
    /// Size a guest may make a body buffer (`proxy_set_buffer_bytes`).
    pub buffer_bytes: usize,
    /// Bytes of shared data (keys and values) in the whole process.
    pub shared_data_bytes: usize,
    /// Items waiting in one shared queue.
    pub queue_items: usize,
    /// Bytes waiting in all shared queues of the process.
    pub queue_bytes: usize,
    /// HTTP calls one instance may have outstanding (recorded or in flight).
    pub pending_calls: usize,
    /// Metrics the filters of the process may define.
    pub metrics: usize,
    /// Bytes of one guest log line (longer ones are cut and marked).
    pub log_line_bytes: usize,
    /// Bytes of log lines kept in memory (`RunningHost::log`); older lines are dropped.
    pub log_kept_bytes: usize,
    /// Body bytes of one request (413 past it).
    pub request_body_bytes: usize,
    /// Body bytes of one upstream response or HTTP call answer (503 past it).
    pub response_body_bytes: usize,
    /// Body bytes one downstream connection may have buffered at once, over all its requests.
    pub connection_body_bytes: usize,
    /// Body bytes the whole process may have buffered at once.
    pub process_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_budget: Duration::from_millis(1000),
            start_budget: Duration::from_secs(10),
            pause_limit: Duration::from_secs(60),
            memory_bytes: 256 << 20,
            table_elements: 100_000,
            header_pairs: 1_000,
            header_map_bytes: 1 << 20,
            buffer_bytes: 64 << 20,
            shared_data_bytes: 64 << 20,
            queue_items: 10_000,
            queue_bytes: 64 << 20,
            pending_calls: 1_000,
            metrics: 10_000,
            log_line_bytes: 16 << 10,
            log_kept_bytes: 8 << 20,
            request_body_bytes: 64 << 20,
            response_body_bytes: 64 << 20,
            connection_body_bytes: 128 << 20,
            process_body_bytes: 1 << 30,
        }
    }
}

/// A `--limit NAME=VALUE` the host does not understand.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("--limit {0}: expected NAME=VALUE")]
    Syntax(String),
    #[error("--limit {0}: unknown limit (known: {known})", known = Limits::NAMES.join(", "))]
    Unknown(String),
    #[error("--limit {name}: {value:?} is not a whole number above 0")]
    Value { name: String, value: String },
}

impl Limits {
    /// The names `--limit` accepts; `_ms` and `_s` values are durations, the others counts or
    /// bytes.
    pub const NAMES: &'static [&'static str] = &[
        "call_budget_ms",
        "start_budget_ms",
        "pause_limit_s",
        "memory_bytes",
        "table_elements",
        "header_pairs",
        "header_map_bytes",
        "buffer_bytes",
        "shared_data_bytes",
        "queue_items",
        "queue_bytes",
        "pending_calls",
        "metrics",
        "log_line_bytes",
        "log_kept_bytes",
        "request_body_bytes",
        "response_body_bytes",
        "connection_body_bytes",
        "process_body_bytes",
    ];

    /// Applies one `NAME=VALUE` (a whole number above 0).
    pub fn set(&mut self, assignment: &str) -> Result<(), LimitError> {
        let (name, value) = assignment
            .split_once('=')
            .ok_or_else(|| LimitError::Syntax(assignment.to_string()))?;
        let (name, value) = (name.trim(), value.trim());
        let n: u64 = value
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| LimitError::Value {
                name: name.to_string(),
                value: value.to_string(),
            })?;
        let size = usize::try_from(n).unwrap_or(usize::MAX);
        match name {
            "call_budget_ms" => self.call_budget = Duration::from_millis(n),
            "start_budget_ms" => self.start_budget = Duration::from_millis(n),
            "pause_limit_s" => self.pause_limit = Duration::from_secs(n),
            "memory_bytes" => self.memory_bytes = size,
            "table_elements" => self.table_elements = size,
            "header_pairs" => self.header_pairs = size,
            "header_map_bytes" => self.header_map_bytes = size,
            "buffer_bytes" => self.buffer_bytes = size,
            "shared_data_bytes" => self.shared_data_bytes = size,
            "queue_items" => self.queue_items = size,
            "queue_bytes" => self.queue_bytes = size,
            "pending_calls" => self.pending_calls = size,
            "metrics" => self.metrics = size,
            "log_line_bytes" => self.log_line_bytes = size,
            "log_kept_bytes" => self.log_kept_bytes = size,
            "request_body_bytes" => self.request_body_bytes = size,
            "response_body_bytes" => self.response_body_bytes = size,
            "connection_body_bytes" => self.connection_body_bytes = size,
            "process_body_bytes" => self.process_body_bytes = size,
            _ => return Err(LimitError::Unknown(name.to_string())),
        }
        Ok(())
    }
}

/// Body bytes buffered by the whole process.
#[derive(Debug)]
pub struct ProcessBudget {
    used: AtomicUsize,
    limit: usize,
}

impl ProcessBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(ProcessBudget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes buffered now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Body bytes buffered by one downstream connection (its requests, HTTP/2 streams included).
#[derive(Debug)]
pub struct ConnectionBudget {
    used: Cell<usize>,
    limit: usize,
}

impl ConnectionBudget {
    pub fn new(limit: usize) -> Rc<Self> {
        Rc::new(ConnectionBudget {
            used: Cell::new(0),
            limit,
        })
    }
}

/// Body bytes one exchange holds, counted against its connection and the process until it is
/// dropped.
#[derive(Debug)]
pub struct BodyReservation {
    process: Arc<ProcessBudget>,
    connection: Option<Rc<ConnectionBudget>>,
    held: usize,
}

impl BodyReservation {
    pub fn new(process: Arc<ProcessBudget>, connection: Option<Rc<ConnectionBudget>>) -> Self {
        BodyReservation {
            process,
            connection,
            held: 0,
        }
    }

    /// Counts `n` more bytes; `false` (nothing counted) when a budget would be passed.
    pub fn grow(&mut self, n: usize) -> bool {
        if let Some(c) = &self.connection {
            match c.used.get().checked_add(n) {
                Some(total) if total <= c.limit => {}
                _ => return false,
            }
        }
        if !self.process.take(n) {
            return false;
        }
        if let Some(c) = &self.connection {
            c.used.set(c.used.get() + n);
        }
        self.held += n;
        true
    }

    /// Counts exactly `total` bytes (growing or shrinking); `false` (nothing changed) when a
    /// budget would be passed.
    pub fn set(&mut self, total: usize) -> bool {
        if total >= self.held {
            return self.grow(total - self.held);
        }
        let freed = self.held - total;
        self.process.give(freed);
        if let Some(c) = &self.connection {
            c.used.set(c.used.get().saturating_sub(freed));
        }
        self.held = total;
        true
    }

    /// Bytes this reservation holds.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for BodyReservation {
    fn drop(&mut self) {
        self.process.give(self.held);
        if let Some(c) = &self.connection {
            c.used.set(c.used.get().saturating_sub(self.held));
        }
    }
}

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the connection's or the process's body budget is used up")]
    OverBudget,
    #[error("{0}")]
    Read(String),
}

/// Reads a body whole, at most `limit` bytes, counting each chunk against `reservation`.
pub async fn collect_body<B>(
    body: B,
    limit: usize,
    reservation: &mut BodyReservation,
) -> Result<bytes::Bytes, BodyError>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut chunks: Vec<bytes::Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are dropped (see docs/host.md)
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(BodyError::TooLarge(limit));
        }
        if !reservation.grow(data.len()) {
            return Err(BodyError::OverBudget);
        }
        chunks.push(data);
    }
    Ok(match chunks.len() {
        0 => bytes::Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut all = bytes::BytesMut::with_capacity(total);
            for c in chunks {
                all.extend_from_slice(&c);
            }
            all.freeze()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_set_by_name() {
        let mut l = Limits::default();
        l.set("table_elements=5").expect("set");
        l.set("call_budget_ms = 20").expect("set");
        assert_eq!(l.table_elements, 5);
        assert_eq!(l.call_budget, Duration::from_millis(20));
        assert!(matches!(l.set("nope=1"), Err(LimitError::Unknown(_))));
        assert!(matches!(l.set("metrics=0"), Err(LimitError::Value { .. })));
        assert!(matches!(l.set("metrics"), Err(LimitError::Syntax(_))));
        for name in Limits::NAMES {
            l.set(&format!("{name}=7")).expect(name);
        }
    }

    #[test]
    fn reservations_count_against_connection_and_process() {
        let process = ProcessBudget::new(100);
        let conn = ConnectionBudget::new(60);
        let mut a = BodyReservation::new(process.clone(), Some(conn.clone()));
        assert!(a.grow(50));
        assert!(!a.grow(20), "the connection's 60 would be passed");
        let mut b = BodyReservation::new(process.clone(), None);
        assert!(b.grow(50));
        assert!(!b.grow(1), "the process's 100 would be passed");
        drop(a);
        assert_eq!(process.used(), 50);
        assert_eq!(conn.used.get(), 0);
        assert!(b.grow(50));
    }
}
