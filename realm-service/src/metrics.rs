//! Prometheus counters, rendered as text on `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// The outcome of one authenticate call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Found,
    NotFound,
    Unauthorized,
    Forbidden,
    BadRequest,
}

const OUTCOMES: [(AuthOutcome, &str); 5] = [
    (AuthOutcome::Found, "found"),
    (AuthOutcome::NotFound, "not_found"),
    (AuthOutcome::Unauthorized, "unauthorized"),
    (AuthOutcome::Forbidden, "forbidden"),
    (AuthOutcome::BadRequest, "bad_request"),
];

#[derive(Default)]
pub struct Metrics {
    authenticate: [AtomicU64; 5],
    cache_hit: AtomicU64,
    cache_miss: AtomicU64,
    requests: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
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
        let mut requests = self.requests.lock();
        // Look up by &str first: no allocation once a route has been seen.
        if let Some(by_status) = requests.get_mut(route) {
            *by_status.entry(status).or_insert(0) += 1;
        } else {
            requests.insert(route.to_string(), BTreeMap::from([(status, 1)]));
        }
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
            "# HELP realm_service_authenticate_cache_total Authenticate look-ups answered from the in-process cache (hit) or SQLite (miss).\n",
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
        for (route, by_status) in self.requests.lock().iter() {
            for (status, value) in by_status {
                let _ = writeln!(
                    out,
                    "realm_service_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {value}"
                );
            }
        }
        out
    }
}
