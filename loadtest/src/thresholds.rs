//! Pass/fail limits (`--p99-max`, `--p50-max`, `--error-max`, `--min-throughput`) checked
//! against the final summary; any violation makes the exit code 1 and is printed by name,
//! so a CI job's log says what failed without opening the JSON.

use crate::report::Summary;
use crate::units::{format_duration, format_us};
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    pub p50_max: Option<Duration>,
    pub p99_max: Option<Duration>,
    pub error_max: Option<u64>,
    pub min_throughput: Option<f64>,
}

/// One checked threshold.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    /// The flag, e.g. `--p99-max`.
    pub threshold: &'static str,
    pub limit: String,
    pub actual: String,
    pub ok: bool,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.ok { "ok" } else { "VIOLATED" };
        write!(
            f,
            "{} {}: actual {} — {verdict}",
            self.threshold, self.limit, self.actual
        )
    }
}

impl Thresholds {
    pub fn is_empty(&self) -> bool {
        *self == Thresholds::default()
    }

    /// Checks every threshold that was set, in a fixed order.
    pub fn check(&self, s: &Summary) -> Vec<Verdict> {
        let mut out = Vec::new();
        // A latency limit cannot be met by a run that measured no round trip at all.
        let latency = |flag: &'static str, max: Duration, actual_us: u64| {
            let limit_us = max.as_micros().min(u64::MAX as u128) as u64;
            if s.latency_us.count == 0 {
                Verdict {
                    threshold: flag,
                    limit: format_duration(max),
                    actual: "no round trips measured".into(),
                    ok: false,
                }
            } else {
                Verdict {
                    threshold: flag,
                    limit: format_duration(max),
                    actual: format_us(actual_us),
                    ok: actual_us <= limit_us,
                }
            }
        };
        if let Some(max) = self.p50_max {
            out.push(latency("--p50-max", max, s.latency_us.p50));
        }
        if let Some(max) = self.p99_max {
            out.push(latency("--p99-max", max, s.latency_us.p99));
        }
        if let Some(max) = self.error_max {
            out.push(Verdict {
                threshold: "--error-max",
                limit: max.to_string(),
                actual: s.errors_total.to_string(),
                ok: s.errors_total <= max,
            });
        }
        if let Some(min) = self.min_throughput {
            out.push(Verdict {
                threshold: "--min-throughput",
                limit: format!("{min} msgs/s"),
                actual: format!("{:.1} msgs/s", s.throughput_msgs_per_s),
                ok: s.throughput_msgs_per_s >= min,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Latency;

    fn summary(p50: u64, p99: u64, count: u64, errors: u64, tput: f64) -> Summary {
        let mut s = Summary::empty_for_tests();
        s.latency_us = Latency {
            count,
            p50,
            p99,
            ..Latency::default()
        };
        s.errors_total = errors;
        s.throughput_msgs_per_s = tput;
        s
    }

    #[test]
    fn nothing_set_checks_nothing() {
        assert!(Thresholds::default().is_empty());
        assert!(Thresholds::default()
            .check(&summary(1, 2, 3, 4, 5.0))
            .is_empty());
    }

    #[test]
    fn limits_are_inclusive() {
        let t = Thresholds {
            p50_max: Some(Duration::from_micros(250)),
            p99_max: Some(Duration::from_millis(5)),
            error_max: Some(0),
            min_throughput: Some(1000.0),
        };
        let v = t.check(&summary(250, 5000, 10, 0, 1000.0));
        assert_eq!(v.len(), 4);
        assert!(v.iter().all(|v| v.ok), "{v:?}");

        let v = t.check(&summary(251, 5001, 10, 1, 999.9));
        assert!(v.iter().all(|v| !v.ok), "{v:?}");
        assert_eq!(v[1].threshold, "--p99-max");
        assert_eq!(v[1].actual, "5.00ms");
        assert!(v[1].to_string().contains("VIOLATED"));
    }

    #[test]
    fn latency_limit_without_data_fails() {
        let t = Thresholds {
            p99_max: Some(Duration::from_millis(5)),
            ..Thresholds::default()
        };
        let v = t.check(&summary(0, 0, 0, 0, 0.0));
        assert!(!v[0].ok);
        assert!(v[0].actual.contains("no round trips"));
    }
}
