//! Small statistics helpers: latency percentiles and human-readable units.

use std::time::Duration;

/// Latency samples; percentiles by the nearest-rank method.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<Duration>,
    sorted: bool,
}

impl Latencies {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            samples: Vec::with_capacity(n),
            sorted: true,
        }
    }

    pub fn push(&mut self, d: Duration) {
        self.samples.push(d);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
        self.sorted = false;
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.samples.sort_unstable();
            self.sorted = true;
        }
    }

    /// The `p`-th percentile (0 < p <= 100) by nearest rank; `None` without samples.
    pub fn percentile(&mut self, p: f64) -> Option<Duration> {
        self.sort();
        let n = self.samples.len();
        if n == 0 {
            return None;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        let index = rank.clamp(1, n) - 1;
        self.samples.get(index).copied()
    }
}

/// A duration as microseconds or milliseconds, whichever reads better.
pub fn fmt_latency(d: Option<Duration>) -> String {
    match d {
        None => "n/a".into(),
        Some(d) if d < Duration::from_millis(1) => format!("{} µs", d.as_micros()),
        Some(d) => format!("{:.2} ms", d.as_secs_f64() * 1e3),
    }
}

/// `a / b` as "1.23×", or "n/a" when either side is missing or zero.
pub fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => format!("{:.2}×", a / b),
        _ => "n/a".into(),
    }
}

/// Kibibytes as MiB with one decimal.
pub fn fmt_kib(kib: Option<u64>) -> String {
    match kib {
        Some(k) => format!("{:.1} MiB", k as f64 / 1024.0),
        None => "n/a".into(),
    }
}

/// A count with thousands separators, e.g. 12,345.
pub fn fmt_count(n: f64) -> String {
    let digits = (n.round() as u64).to_string().into_bytes();
    let groups: Vec<String> = digits
        .rchunks(3)
        .rev()
        .map(|group| String::from_utf8_lossy(group).into_owned())
        .collect();
    groups.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut l = Latencies::default();
        for n in (1..=100).rev() {
            l.push(ms(n));
        }
        assert_eq!(l.percentile(50.0), Some(ms(50)));
        assert_eq!(l.percentile(99.0), Some(ms(99)));
        assert_eq!(l.percentile(100.0), Some(ms(100)));
        assert_eq!(l.percentile(0.1), Some(ms(1)));
    }

    #[test]
    fn percentiles_of_few_samples_pick_an_actual_sample() {
        let mut l = Latencies::default();
        l.push(ms(7));
        l.push(ms(3));
        assert_eq!(l.percentile(50.0), Some(ms(3)));
        assert_eq!(l.percentile(99.0), Some(ms(7)));
    }

    #[test]
    fn no_samples_give_no_percentile() {
        let mut l = Latencies::default();
        assert_eq!(l.percentile(50.0), None);
        assert_eq!(fmt_latency(l.percentile(99.0)), "n/a");
    }

    #[test]
    fn formats_read_well() {
        assert_eq!(fmt_latency(Some(Duration::from_micros(250))), "250 µs");
        assert_eq!(fmt_latency(Some(Duration::from_micros(1500))), "1.50 ms");
        assert_eq!(fmt_ratio(Some(3.0), Some(2.0)), "1.50×");
        assert_eq!(fmt_ratio(Some(3.0), Some(0.0)), "n/a");
        assert_eq!(fmt_count(1234567.0), "1,234,567");
        assert_eq!(fmt_count(999.0), "999");
        assert_eq!(fmt_count(1000.0), "1,000");
        assert_eq!(fmt_count(0.0), "0");
    }
}
