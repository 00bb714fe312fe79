//! The Prometheus text exposition format (0.0.4), written by hand: a few
//! dozen lines instead of a registry crate, and the hot path stays plain
//! atomics. Pure: no I/O, no clock.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the request-duration buckets; `+Inf` follows.
/// Long-polls (up to 60 s) land in `+Inf`, which is what they are.
pub const DURATION_BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A scrape body being written, family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {}", kind.as_str());
    }

    /// One sample line: `name{label="value",…} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", format_value(value));
    }

    /// A family of one unlabelled series; `None` (a figure not available
    /// now) writes the family without a sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: Option<f64>) {
        self.family(name, kind, help);
        if let Some(value) = value {
            self.sample(name, &[], value);
        }
    }

    /// The `_bucket`, `_sum` and `_count` lines of one histogram.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], snapshot: &HistogramSnapshot) {
        let mut cumulative = 0;
        for (index, count) in snapshot.buckets.iter().enumerate() {
            cumulative += count;
            let le = DURATION_BUCKETS.get(index).copied().unwrap_or(f64::INFINITY);
            let _ = write!(self.out, "{name}_bucket");
            write_labels(&mut self.out, labels, Some(&format_value(le)));
            let _ = writeln!(self.out, " {cumulative}");
        }
        self.sample(&format!("{name}_sum"), labels, snapshot.sum_seconds);
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let pairs = labels.iter().copied().chain(le.map(|le| ("le", le)));
    for (index, (name, value)) in pairs.enumerate() {
        if index > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"{}\"", escape_label(value));
    }
    out.push('}');
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Integers without a fraction, infinities as `+Inf`/`-Inf`.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

/// A latency histogram over [`DURATION_BUCKETS`]: one atomic per bucket,
/// so observing is two relaxed additions, no lock.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let index = DURATION_BUCKETS.partition_point(|bound| *bound < seconds);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// What a scrape reads of a [`Histogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Per bucket, not cumulative; the last is `+Inf`.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_and_type_and_escape_what_they_must() {
        let mut text = Exposition::default();
        text.family("echolia_things_total", Kind::Counter, "Things.\nWith a back\\slash.");
        text.sample("echolia_things_total", &[("model", "a\"b\\c\nd"), ("x", "y")], 3.0);
        text.family("echolia_level", Kind::Gauge, "A level.");
        text.sample("echolia_level", &[], 0.5);
        assert_eq!(
            text.finish(),
            "# HELP echolia_things_total Things.\\nWith a back\\\\slash.\n\
             # TYPE echolia_things_total counter\n\
             echolia_things_total{model=\"a\\\"b\\\\c\\nd\",x=\"y\"} 3\n\
             # HELP echolia_level A level.\n\
             # TYPE echolia_level gauge\n\
             echolia_level 0.5\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_and_end_at_inf() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(500)); // ≤ 0.001
        histogram.observe(Duration::from_millis(1)); // exactly on a bound: ≤ 0.001
        histogram.observe(Duration::from_millis(30)); // ≤ 0.05
        histogram.observe(Duration::from_secs(59)); // +Inf
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 4);
        assert!((snapshot.sum_seconds - 59.0315).abs() < 1e-9, "{}", snapshot.sum_seconds);

        let mut text = Exposition::default();
        text.histogram("h", &[("route", "/sync/push")], &snapshot);
        let body = text.finish();
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), DURATION_BUCKETS.len() + 3);
        assert_eq!(lines[0], "h_bucket{route=\"/sync/push\",le=\"0.001\"} 2");
        assert_eq!(lines[4], "h_bucket{route=\"/sync/push\",le=\"0.025\"} 2");
        assert_eq!(lines[5], "h_bucket{route=\"/sync/push\",le=\"0.05\"} 3");
        assert_eq!(lines[12], "h_bucket{route=\"/sync/push\",le=\"10\"} 3");
        assert_eq!(lines[13], "h_bucket{route=\"/sync/push\",le=\"+Inf\"} 4");
        assert_eq!(lines[14], "h_sum{route=\"/sync/push\"} 59.0315");
        assert_eq!(lines[15], "h_count{route=\"/sync/push\"} 4");
    }

    #[test]
    fn values_use_prometheus_spellings() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(12.0), "12");
        assert_eq!(format_value(0.0025), "0.0025");
    }
}
