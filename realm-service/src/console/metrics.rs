//! The overview's chart: the service's own `/metrics` (read through the API like everything
//! else), sampled every [`INTERVAL`] into a ring buffer of [`SAMPLES`] (the last five minutes),
//! drawn as inline SVG: the authenticate rate by outcome and the cache hit ratio.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Weak;
use std::time::{Duration, Instant};

use axum::http::Method;
use maud::{html, Markup, PreEscaped};
use parking_lot::Mutex;

use super::Inner;

pub const INTERVAL: Duration = Duration::from_secs(5);
pub const SAMPLES: usize = 61;

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub at: Option<Instant>,
    pub found: u64,
    pub not_found: u64,
    /// unauthorized, forbidden, bad_request and error.
    pub refused: u64,
    pub hit: u64,
    pub miss: u64,
}

#[derive(Default)]
pub struct Sampler {
    samples: Mutex<VecDeque<Sample>>,
}

impl Sampler {
    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock();
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The stored samples plus `now` (a fresh sample that is not stored).
    pub fn with(&self, now: Option<Sample>) -> Vec<Sample> {
        let mut samples: Vec<Sample> = self.samples.lock().iter().copied().collect();
        samples.extend(now);
        samples
    }
}

/// Samples every [`INTERVAL`] until the console is dropped.
pub fn spawn_sampler(console: Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = console.upgrade() else {
                return;
            };
            if let Some(sample) = read(&inner.api).await {
                inner.sampler.push(sample);
            }
        }
    });
}

/// `GET /metrics` through the API, parsed.
pub async fn read(api: &super::client::Api) -> Option<Sample> {
    let (status, body) = api.raw(None, Method::GET, "/metrics", None).await.ok()?;
    if !status.is_success() {
        return None;
    }
    Some(parse(std::str::from_utf8(&body).ok()?))
}

fn parse(text: &str) -> Sample {
    let mut sample = Sample {
        at: Some(Instant::now()),
        ..Sample::default()
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        let slot = match name {
            "realm_service_authenticate_total{result=\"found\"}" => &mut sample.found,
            "realm_service_authenticate_total{result=\"not_found\"}" => &mut sample.not_found,
            n if n.starts_with("realm_service_authenticate_total{") => &mut sample.refused,
            "realm_service_authenticate_cache_total{result=\"hit\"}" => &mut sample.hit,
            "realm_service_authenticate_cache_total{result=\"miss\"}" => &mut sample.miss,
            _ => continue,
        };
        *slot += value;
    }
    sample
}

/// What happened between two samples.
struct Step {
    /// Seconds before the newest sample (the end of this step).
    ago: f64,
    found: f64,
    not_found: f64,
    refused: f64,
    /// Hit ratio in this step (None: no look-ups).
    hit_ratio: Option<f64>,
}

/// Totals over the window, for the numbers beside the chart.
pub struct Totals {
    pub found: u64,
    pub not_found: u64,
    pub refused: u64,
    pub hit_ratio: Option<f64>,
    pub seconds: u64,
}

fn steps(samples: &[Sample]) -> (Vec<Step>, Totals) {
    let newest = samples.last().and_then(|s| s.at);
    let mut steps = Vec::new();
    for pair in samples.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let (Some(ta), Some(tb), Some(newest)) = (a.at, b.at, newest) else {
            continue;
        };
        let secs = tb.duration_since(ta).as_secs_f64().max(0.001);
        let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
        let hits = b.hit.saturating_sub(a.hit);
        let misses = b.miss.saturating_sub(a.miss);
        steps.push(Step {
            ago: newest.duration_since(tb).as_secs_f64(),
            found: rate(a.found, b.found),
            not_found: rate(a.not_found, b.not_found),
            refused: rate(a.refused, b.refused),
            hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
        });
    }
    let totals = match (samples.first(), samples.last()) {
        (Some(first), Some(last)) => {
            let hits = last.hit.saturating_sub(first.hit);
            let misses = last.miss.saturating_sub(first.miss);
            Totals {
                found: last.found.saturating_sub(first.found),
                not_found: last.not_found.saturating_sub(first.not_found),
                refused: last.refused.saturating_sub(first.refused),
                hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
                seconds: match (first.at, last.at) {
                    (Some(a), Some(b)) => b.duration_since(a).as_secs(),
                    _ => 0,
                },
            }
        }
        _ => Totals {
            found: 0,
            not_found: 0,
            refused: 0,
            hit_ratio: None,
            seconds: 0,
        },
    };
    (steps, totals)
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 150.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;
/// The chart spans this many seconds, ending now.
const SPAN: f64 = (INTERVAL.as_secs() as f64) * (SAMPLES as f64 - 1.0);

fn x(ago: f64) -> f64 {
    LEFT + (WIDTH - LEFT - 8.0) * (1.0 - (ago / SPAN).clamp(0.0, 1.0))
}

fn y(value: f64, max: f64) -> f64 {
    TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - (value / max).clamp(0.0, 1.0))
}

/// A round upper bound for the axis: 1, 2, 5, 10, 20, 50, ...
fn nice_max(value: f64) -> f64 {
    if !value.is_finite() {
        return 1.0;
    }
    let mut base = 1.0;
    loop {
        for m in [1.0, 2.0, 5.0] {
            if m * base >= value {
                return m * base;
            }
        }
        base *= 10.0;
    }
}

fn axes(out: &mut String, max: f64, format: impl Fn(f64) -> String) {
    let bottom = HEIGHT - BOTTOM;
    for fraction in [0.0, 0.5, 1.0] {
        let v = max * fraction;
        let yy = y(v, max);
        let _ = write!(
            out,
            r#"<line class="grid" x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - 8.0,
            LEFT - 6.0,
            yy + 4.0,
            format(v)
        );
    }
    for (ago, label) in [(SPAN, "-5 min"), (SPAN / 2.0, "-2.5 min"), (0.0, "now")] {
        let _ = write!(
            out,
            r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            x(ago).clamp(LEFT + 18.0, WIDTH - 20.0),
            bottom + 16.0
        );
    }
}

fn polyline(out: &mut String, class: &str, points: &[(f64, f64)]) {
    if points.is_empty() {
        return;
    }
    let mut d = String::new();
    for (px, py) in points {
        let _ = write!(d, "{px:.1},{py:.1} ");
    }
    let _ = write!(
        out,
        r#"<polyline class="{class}" points="{}"/>"#,
        d.trim_end()
    );
    if points.len() == 1 {
        let (px, py) = points[0];
        let _ = write!(
            out,
            r#"<circle class="{class}" cx="{px:.1}" cy="{py:.1}" r="2.5"/>"#
        );
    }
}

/// The two charts and their totals. Only numbers computed here go into the SVG text.
pub fn charts(samples: &[Sample]) -> Markup {
    let (steps, totals) = steps(samples);
    let max = nice_max(
        steps
            .iter()
            .map(|s| s.found.max(s.not_found).max(s.refused))
            .fold(0.0, f64::max),
    );
    let mut rate = String::new();
    let _ = write!(
        rate,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="authenticate calls per second by outcome, last 5 minutes">"#
    );
    axes(&mut rate, max, |v| {
        if max < 5.0 {
            format!("{v:.1}/s")
        } else {
            format!("{v:.0}/s")
        }
    });
    for (class, pick) in [
        ("found", (|s: &Step| s.found) as fn(&Step) -> f64),
        ("not-found", |s: &Step| s.not_found),
        ("refused", |s: &Step| s.refused),
    ] {
        let points: Vec<(f64, f64)> = steps.iter().map(|s| (x(s.ago), y(pick(s), max))).collect();
        polyline(&mut rate, class, &points);
    }
    rate.push_str("</svg>");

    let mut ratio = String::new();
    let _ = write!(
        ratio,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="authenticate cache hit ratio, last 5 minutes">"#
    );
    axes(&mut ratio, 1.0, |v| format!("{:.0}%", v * 100.0));
    // A gap where there were no look-ups.
    let mut segment = Vec::new();
    for step in &steps {
        match step.hit_ratio {
            Some(r) => segment.push((x(step.ago), y(r, 1.0))),
            None => {
                polyline(&mut ratio, "hit", &segment);
                segment.clear();
            }
        }
    }
    polyline(&mut ratio, "hit", &segment);
    ratio.push_str("</svg>");

    let per_min = |n: u64| {
        if totals.seconds == 0 {
            0.0
        } else {
            n as f64 * 60.0 / totals.seconds as f64
        }
    };
    html! {
        div.charts {
            section.card.chart-card {
                h3 { "Authenticate calls" }
                p.muted { "Per second, by outcome, over the last " (window(totals.seconds)) "." }
                (PreEscaped(rate))
                ul.legend {
                    li { span.swatch.found {} "found " strong { (totals.found) } " (" (format!("{:.1}", per_min(totals.found))) "/min)" }
                    li { span.swatch.not-found {} "not found " strong { (totals.not_found) } }
                    li { span.swatch.refused {} "refused (401/403/400/5xx) " strong { (totals.refused) } }
                }
            }
            section.card.chart-card {
                h3 { "Cache hit ratio" }
                p.muted { "Authenticate look-ups answered from the in-process cache." }
                (PreEscaped(ratio))
                ul.legend {
                    li { span.swatch.hit {} "hit ratio " strong { (match totals.hit_ratio {
                        Some(r) => format!("{:.1}%", r * 100.0),
                        None => "no look-ups".to_string(),
                    }) } }
                }
            }
        }
    }
}

fn window(seconds: u64) -> String {
    match seconds {
        0 => "moments (the console samples every 5 s)".to_string(),
        s if s < 90 => format!("{s} s"),
        s => format!("{:.1} min", s as f64 / 60.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_services_metrics() {
        let sample = parse(
            "# HELP x\nrealm_service_authenticate_total{result=\"found\"} 7\n\
             realm_service_authenticate_total{result=\"not_found\"} 2\n\
             realm_service_authenticate_total{result=\"forbidden\"} 1\n\
             realm_service_authenticate_total{result=\"unauthorized\"} 3\n\
             realm_service_authenticate_cache_total{result=\"hit\"} 5\n\
             realm_service_authenticate_cache_total{result=\"miss\"} 4\n",
        );
        assert_eq!(
            (
                sample.found,
                sample.not_found,
                sample.refused,
                sample.hit,
                sample.miss
            ),
            (7, 2, 4, 5, 4)
        );
    }

    #[test]
    fn axis_maxima_are_round() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(1.5), 2.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(11.0), 20.0);
        assert_eq!(nice_max(140.0), 200.0);
    }
}
