//! Prometheus counters, rendered as text on `GET /metrics`.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

/// The outcome of one authenticate call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Found,
    NotFound,
    Unauthorized,
    Forbidden,
    BadRequest,
    /// The service failed (storage): a 5xx.
    Error,
}

const OUTCOMES: [(AuthOutcome, &str); 6] = [
    (AuthOutcome::Found, "found"),
    (AuthOutcome::NotFound, "not_found"),
    (AuthOutcome::Unauthorized, "unauthorized"),
    (AuthOutcome::Forbidden, "forbidden"),
    (AuthOutcome::BadRequest, "bad_request"),
    (AuthOutcome::Error, "error"),
];

#[derive(Default)]
pub struct Metrics {
    authenticate: [AtomicU64; 6],
    cache_hit: AtomicU64,
    cache_miss: AtomicU64,
    requests: RwLock<HashMap<String, HashMap<u16, AtomicU64>>>,
}

impl Metrics {
    pub fn authenticate(&self, outcome: AuthOutcome) {
        let index = OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        self.authenticate[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn cache(&self, hit: bool) {
        let counter = if hit {
            &self.cache_hit
        } else {
            &self.cache_miss
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `route` is the matched route template, or `unmatched`.
    pub fn request(&self, route: &str, status: u16) {
        // Seen before: a shared lock and an atomic add (no allocation, no exclusive lock).
        if let Some(counter) = self.requests.read().get(route).and_then(|m| m.get(&status)) {
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.requests
            .write()
            .entry(route.to_string())
            .or_default()
            .entry(status)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP realm_service_authenticate_total Authenticate calls by outcome.\n");
        out.push_str("# TYPE realm_service_authenticate_total counter\n");
        for (index, (_, name)) in OUTCOMES.iter().enumerate() {
            let value = self.authenticate[index].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "realm_service_authenticate_total{{result=\"{name}\"}} {value}"
            );
        }
        out.push_str(
            "# HELP realm_service_authenticate_cache_total Authenticate look-ups answered from the in-process cache (hit) or the database (miss).\n",
        );
        out.push_str("# TYPE realm_service_authenticate_cache_total counter\n");
        let _ = writeln!(
            out,
            "realm_service_authenticate_cache_total{{result=\"hit\"}} {}",
            self.cache_hit.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "realm_service_authenticate_cache_total{{result=\"miss\"}} {}",
            self.cache_miss.load(Ordering::Relaxed)
        );
        out.push_str("# HELP realm_service_http_requests_total HTTP requests by route template and status.\n");
        out.push_str("# TYPE realm_service_http_requests_total counter\n");
        let requests = self.requests.read();
        let mut rows: Vec<(&String, u16, u64)> = requests
            .iter()
            .flat_map(|(route, by_status)| {
                by_status
                    .iter()
                    .map(move |(status, n)| (route, *status, n.load(Ordering::Relaxed)))
            })
            .collect();
        rows.sort();
        for (route, status, value) in rows {
            let _ = writeln!(
                out,
                "realm_service_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {value}"
            );
        }
        out
    }
}
