//! The metrics registry: metrics defined by filters (`proxy_define_metric`) and the host's own
//! counters, rendered as Prometheus text on the admin address.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Why a metric operation was refused (the ABI answers each with a proxy-wasm status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricError {
    /// No metric has this id.
    NotFound,
    /// The operation does not fit the metric's type (a negative counter increment, ...).
    BadArgument,
    /// Defining it would pass the `metrics` limit.
    Limit,
}

/// The three proxy-wasm metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Envoy's default histogram buckets.
const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

#[derive(Debug)]
struct Metric {
    name: String,
    kind: MetricKind,
    /// Counter/gauge value (gauges as two's complement i64), or histogram sum.
    value: i64,
    count: u64,
    buckets: [u64; BUCKETS.len()],
}

/// Host counters (`keyrealm_host_*`).
#[derive(Debug, Default)]
pub struct HostCounters {
    pub requests: AtomicU64,
    pub local_replies: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub http_calls: AtomicU64,
    pub http_call_failures: AtomicU64,
    pub vm_failures: AtomicU64,
    pub vm_replacements: AtomicU64,
    pub vm_replacement_failures: AtomicU64,
    pub wasm_fail_stream: AtomicU64,
    pub wasm_fail_open: AtomicU64,
    pub body_limit_rejections: AtomicU64,
}

#[derive(Debug, Default)]
struct Metrics {
    list: Vec<Metric>,
    /// (type, name) -> index in `list`.
    by_name: std::collections::HashMap<(u8, String), usize>,
}

/// All metrics of one running host; filters may define at most `limit`.
#[derive(Debug)]
pub struct MetricsRegistry {
    metrics: Mutex<Metrics>,
    limit: usize,
    pub host: HostCounters,
    /// Host/guest crossings of every wasm instance (`keyrealm_host_wasm_*calls_total`).
    pub hostcalls: crate::wasm::hostcalls::HostCallRegistry,
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        MetricsRegistry::new(crate::limits::Limits::default().metrics)
    }
}

impl MetricsRegistry {
    pub fn new(limit: usize) -> Self {
        MetricsRegistry {
            metrics: Mutex::default(),
            limit,
            host: HostCounters::default(),
            hostcalls: Default::default(),
        }
    }

    /// Defines a metric, or returns the id of the one with the same name and type;
    /// `InternalFailure` past the limit.
    pub fn define(&self, kind: MetricKind, name: &str) -> Result<u32, MetricError> {
        let mut metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        let key = (kind as u8, name.to_string());
        if let Some(i) = metrics.by_name.get(&key) {
            return Ok(*i as u32 + 1);
        }
        if metrics.list.len() >= self.limit {
            return Err(MetricError::Limit);
        }
        metrics.list.push(Metric {
            name: name.to_string(),
            kind,
            value: 0,
            count: 0,
            buckets: [0; BUCKETS.len()],
        });
        let index = metrics.list.len() - 1;
        metrics.by_name.insert(key, index);
        Ok(metrics.list.len() as u32)
    }

    fn with<T>(
        &self,
        id: u32,
        f: impl FnOnce(&mut Metric) -> Result<T, MetricError>,
    ) -> Result<T, MetricError> {
        let mut metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        let index = (id as usize).checked_sub(1).ok_or(MetricError::NotFound)?;
        let m = metrics.list.get_mut(index).ok_or(MetricError::NotFound)?;
        f(m)
    }

    pub fn increment(&self, id: u32, offset: i64) -> Result<(), MetricError> {
        self.with(id, |m| match m.kind {
            MetricKind::Counter if offset < 0 => Err(MetricError::BadArgument),
            MetricKind::Counter | MetricKind::Gauge => {
                m.value = m.value.wrapping_add(offset);
                Ok(())
            }
            MetricKind::Histogram => Err(MetricError::BadArgument),
        })
    }

    pub fn record(&self, id: u32, value: u64) -> Result<(), MetricError> {
        self.with(id, |m| {
            match m.kind {
                MetricKind::Counter => m.value = m.value.max(value as i64),
                MetricKind::Gauge => m.value = value as i64,
                MetricKind::Histogram => {
                    m.value = m.value.wrapping_add(value as i64);
                    m.count += 1;
                    for (i, le) in BUCKETS.iter().enumerate() {
                        if (value as f64) <= *le {
                            m.buckets[i] += 1;
                        }
                    }
                }
            }
            Ok(())
        })
    }

    pub fn get(&self, id: u32) -> Result<u64, MetricError> {
        self.with(id, |m| match m.kind {
            MetricKind::Histogram => Err(MetricError::BadArgument),
            _ => Ok(m.value as u64),
        })
    }

    /// Prometheus text exposition of every metric.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let host = &self.host;
        for (name, help, value) in [
            (
                "keyrealm_host_requests_total",
                "Downstream requests handled",
                &host.requests,
            ),
            (
                "keyrealm_host_local_replies_total",
                "Responses sent by a filter",
                &host.local_replies,
            ),
            (
                "keyrealm_host_upstream_failures_total",
                "Upstream connect failures and timeouts",
                &host.upstream_failures,
            ),
            (
                "keyrealm_host_http_calls_total",
                "HTTP calls made by filters",
                &host.http_calls,
            ),
            (
                "keyrealm_host_http_call_failures_total",
                "HTTP calls that failed or timed out",
                &host.http_call_failures,
            ),
            (
                "keyrealm_host_vm_failures_total",
                "Guest calls that trapped or ran out of time",
                &host.vm_failures,
            ),
            (
                "keyrealm_host_vm_replacements_total",
                "Instances replaced after a failure",
                &host.vm_replacements,
            ),
            (
                "keyrealm_host_vm_replacement_failures_total",
                "Attempts to start a replacement instance that failed",
                &host.vm_replacement_failures,
            ),
            (
                "keyrealm_host_wasm_fail_stream_total",
                "Requests answered 503 because a filter failed",
                &host.wasm_fail_stream,
            ),
            (
                "keyrealm_host_wasm_fail_open_total",
                "Requests that passed a failed filter (fail_open)",
                &host.wasm_fail_open,
            ),
            (
                "keyrealm_host_body_limit_rejections_total",
                "Requests answered 413 or 503 because a body was over the body limits",
                &host.body_limit_rejections,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        self.hostcalls.render_prometheus(&mut out);
        let metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        for m in metrics.list.iter() {
            let name = prometheus_name(&m.name);
            match m.kind {
                MetricKind::Counter => {
                    let _ = writeln!(out, "# TYPE {name} counter\n{name}{{}} {}", m.value as u64);
                }
                MetricKind::Gauge => {
                    let _ = writeln!(out, "# TYPE {name} gauge\n{name}{{}} {}", m.value);
                }
                MetricKind::Histogram => {
                    let _ = writeln!(out, "# TYPE {name} histogram");
                    for (i, le) in BUCKETS.iter().enumerate() {
                        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {}", m.buckets[i]);
                    }
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", m.count);
                    let _ = writeln!(
                        out,
                        "{name}_sum{{}} {}\n{name}_count{{}} {}",
                        m.value, m.count
                    );
                }
            }
        }
        out
    }
}

/// A metric name made valid for Prometheus: anything outside `[a-zA-Z0-9_:]` becomes `_`.
pub fn prometheus_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_histograms() {
        let r = MetricsRegistry::default();
        let c = r.define(MetricKind::Counter, "hits.total").expect("define");
        assert_eq!(r.define(MetricKind::Counter, "hits.total"), Ok(c));
        r.increment(c, 2).expect("increment");
        assert_eq!(r.increment(c, -1), Err(MetricError::BadArgument));
        assert_eq!(r.get(c), Ok(2));
        let g = r.define(MetricKind::Gauge, "g").expect("define");
        r.record(g, 7).expect("record");
        r.increment(g, -2).expect("increment");
        assert_eq!(r.get(g), Ok(5));
        assert_eq!(r.get(99), Err(MetricError::NotFound));
        let text = r.render_prometheus();
        assert!(text.contains("hits_total{} 2\n"), "{text}");
        assert!(text.contains("\ng{} 5\n"), "{text}");
    }
}
