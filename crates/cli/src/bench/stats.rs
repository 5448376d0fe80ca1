//! Latency histograms, percentiles and the result table.

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// Sub-buckets per power of two (2^6 = 64: every bucket is within 1/64 ≈ 1.6 % of its
/// values).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values are clamped to 2^40 µs (about 12 days).
const MAX_EXP: u32 = 40;
const BUCKETS: usize = (2 * SUB + (MAX_EXP as u64 - SUB_BITS as u64 - 1) * SUB) as usize;

/// A log-linear histogram of microsecond values. Allocates its buckets on the first
/// record, so an unused histogram costs nothing.
#[derive(Clone, Debug, Default)]
pub(crate) struct Histogram {
    counts: Vec<u32>,
    total: u64,
    sum: u128,
    max: u64,
}

fn index(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let v = v.min((1u64 << MAX_EXP) - 1);
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let shift = exp - SUB_BITS;
    let mantissa = (v >> shift) - SUB; // 0..SUB
    (2 * SUB + u64::from(exp - SUB_BITS - 1) * SUB + mantissa) as usize
}

/// Lowest value of bucket `i` and its width.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < 2 * SUB {
        return (i, 1);
    }
    let rel = i - 2 * SUB;
    let exp = rel / SUB + u64::from(SUB_BITS) + 1;
    let mantissa = rel % SUB;
    let shift = exp - u64::from(SUB_BITS);
    ((SUB + mantissa) << shift, 1 << shift)
}

impl Histogram {
    /// Record one value (µs).
    pub(crate) fn record(&mut self, micros: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        let i = index(micros);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.total += 1;
        self.sum += u128::from(micros);
        self.max = self.max.max(micros);
    }

    /// Add every value of `other`.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// Number of recorded values.
    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// The value below which `q` (0..=1) of the values lie, in µs (bucket midpoint;
    /// 0 when empty).
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                let (lo, width) = bucket_range(i);
                let mid = lo as f64 + (width as f64 - 1.0) / 2.0;
                return mid.min(self.max as f64);
            }
        }
        self.max as f64
    }

    /// Mean in µs.
    pub(crate) fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// Maximum in µs.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }
}

/// One measured figure.
#[derive(Clone, Debug)]
pub(crate) struct Metric {
    /// Stable machine name (the JSON key).
    pub(crate) key: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
}

/// What a scenario run produced: its parameters and its figures, in order.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    pub(crate) scenario: &'static str,
    pub(crate) params: Map<String, Value>,
    pub(crate) metrics: Vec<Metric>,
    pub(crate) notes: Vec<String>,
}

impl Report {
    pub(crate) fn new(scenario: &'static str) -> Self {
        Report {
            scenario,
            params: Map::new(),
            metrics: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn param(&mut self, key: &str, value: impl Into<Value>) {
        self.params.insert(key.to_owned(), value.into());
    }

    pub(crate) fn metric(&mut self, key: impl Into<String>, value: f64, unit: &'static str) {
        self.metrics.push(Metric {
            key: key.into(),
            value,
            unit,
        });
    }

    /// p50, p99, p99.9, mean and max of a latency histogram, in milliseconds.
    pub(crate) fn latency(&mut self, prefix: &str, h: &Histogram) {
        self.metric(format!("{prefix}_p50_ms"), h.quantile(0.50) / 1000.0, "ms");
        self.metric(format!("{prefix}_p99_ms"), h.quantile(0.99) / 1000.0, "ms");
        self.metric(
            format!("{prefix}_p999_ms"),
            h.quantile(0.999) / 1000.0,
            "ms",
        );
        self.metric(format!("{prefix}_mean_ms"), h.mean() / 1000.0, "ms");
        self.metric(format!("{prefix}_max_ms"), h.max() as f64 / 1000.0, "ms");
    }

    pub(crate) fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// The machine-readable form (`--json`).
    pub(crate) fn to_json(&self, label: Option<&str>) -> Value {
        let mut metrics = Map::new();
        let mut units = Map::new();
        for m in &self.metrics {
            let v = if m.value.is_finite() {
                serde_json::Number::from_f64(round_sig(m.value)).map_or(Value::Null, Value::Number)
            } else {
                Value::Null
            };
            metrics.insert(m.key.clone(), v);
            units.insert(m.key.clone(), Value::from(m.unit));
        }
        let mut out = Map::new();
        out.insert("scenario".into(), self.scenario.into());
        if let Some(l) = label {
            out.insert("label".into(), l.into());
        }
        out.insert("params".into(), Value::Object(self.params.clone()));
        out.insert("metrics".into(), Value::Object(metrics));
        out.insert("units".into(), Value::Object(units));
        out.insert(
            "notes".into(),
            Value::Array(self.notes.iter().cloned().map(Value::from).collect()),
        );
        Value::Object(out)
    }

    /// The human-readable table.
    pub(crate) fn to_table(&self, label: Option<&str>) -> String {
        let mut s = String::new();
        let title = match label {
            Some(l) => format!("bench {} ({l})", self.scenario),
            None => format!("bench {}", self.scenario),
        };
        let _ = writeln!(s, "{title}");
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| match v {
                Value::String(t) => format!("{k}={t}"),
                other => format!("{k}={other}"),
            })
            .collect();
        let _ = writeln!(s, "  {}", params.join(" "));
        let width = self.metrics.iter().map(|m| m.key.len()).max().unwrap_or(0);
        for m in &self.metrics {
            let _ = writeln!(
                s,
                "  {:<width$}  {:>14}  {}",
                m.key,
                format_value(m.value),
                m.unit
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    }
}

/// Round to 6 significant digits (keeps the JSON readable).
fn round_sig(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let digits = 6 - (v.abs().log10().floor() as i32 + 1);
    let factor = 10f64.powi(digits);
    (v * factor).round() / factor
}

fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        let int = v.round() as i64;
        let digits = int.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        if int < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 || a == 0.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.5}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let mut prev_end = 0u64;
        for i in 0..BUCKETS {
            let (lo, width) = bucket_range(i);
            assert_eq!(lo, prev_end, "bucket {i}");
            assert_eq!(index(lo), i);
            assert_eq!(index(lo + width - 1), i);
            prev_end = lo + width;
        }
    }

    #[test]
    fn quantiles_are_within_the_bucket_precision() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.02, "{p50}");
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.02, "{p99}");
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.max(), 10_000);
        assert!((h.mean() - 5000.5).abs() < 1e-6);
    }

    #[test]
    fn merging_adds_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.max(), 1_000_000);
        assert_eq!(Histogram::default().quantile(0.5), 0.0);
    }

    #[test]
    fn huge_values_are_clamped_not_lost() {
        let mut h = Histogram::default();
        h.record(u64::MAX);
        assert_eq!(h.count(), 1);
        assert!(h.quantile(1.0) > 1e11);
    }

    #[test]
    fn values_are_grouped_for_the_table() {
        assert_eq!(format_value(1_234_567.0), "1,234,567");
        assert_eq!(format_value(12.345), "12.3");
        assert_eq!(format_value(0.5), "0.500");
        assert_eq!(round_sig(123_456_789.0), 123_457_000.0);
    }
}
