//! The end-of-run summary: one `Summary` value built from the run's totals, rendered as a
//! human block on stderr/stdout and as JSON. Both show the same numbers, so what a person
//! reads and what CI parses cannot disagree.

use crate::cli::{Plan, StopRule};
use crate::framing::Framing;
use crate::series::Point;
use crate::stats::{rate, ConnectFailure, DisconnectReason, ErrorKind, Latency, Window};
use crate::thresholds::Verdict;
use crate::units::{format_duration, format_us};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub target: String,
    pub framing: Framing,
    pub scenario: String,
    pub connections: usize,
    pub threads: usize,
    pub payload_size: usize,
    /// Whole run, warmup included.
    pub elapsed_s: f64,
    pub warmup_s: f64,
    /// The window the message counts, throughput and latencies cover.
    pub measured_s: f64,
    /// Stopped early by Ctrl-C.
    pub interrupted: bool,
    /// Messages sent / received in the measured window.
    pub sent: u64,
    pub received: u64,
    /// Received messages per second over the measured window.
    pub throughput_msgs_per_s: f64,
    /// Round-trip latencies in the measured window, microseconds.
    pub latency_us: Latency,
    /// Bots that connected at least once.
    pub connected: usize,
    pub connect_failures_total: u64,
    pub connect_failures: BTreeMap<&'static str, u64>,
    /// Errors over the whole run (connect failures included).
    pub errors_total: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// Connections that ended before the run did, by reason.
    pub disconnects: BTreeMap<&'static str, u64>,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    pub thresholds: Vec<Verdict>,
    pub series: Vec<Point>,
    /// Channel deliveries (only in the `lotus` scenario with rooms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelSummary>,
}

/// What the bots' room channels delivered, over the whole run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ChannelSummary {
    /// Messages delivered to subscribed bots.
    pub deliveries: u64,
    /// What a complete `--messages` run delivers (`None` with `--duration`).
    pub expected: Option<u64>,
    /// Message ids that deliveries skipped (each skip is also a `gap` error).
    pub missed: u64,
}

/// What a finished run hands to the report.
pub struct RunTotals {
    pub elapsed: Duration,
    pub measured: Duration,
    pub interrupted: bool,
    pub totals: Window,
    pub samples: Vec<String>,
    pub ever_connected: usize,
    pub series: Vec<Point>,
    pub deliveries: u64,
    pub missed: u64,
}

impl Summary {
    pub fn new(plan: &Plan, run: RunTotals) -> Self {
        let c = &run.totals.counters;
        let names = |names: &[&'static str], counts: &[u64]| -> BTreeMap<&'static str, u64> {
            names.iter().copied().zip(counts.iter().copied()).collect()
        };
        let measured_s = run.measured.as_secs_f64();
        Summary {
            target: plan.target.clone(),
            framing: plan.framing,
            scenario: plan.scenario.name(),
            connections: plan.connections,
            threads: plan.threads,
            payload_size: plan.payload_size,
            elapsed_s: run.elapsed.as_secs_f64(),
            warmup_s: plan.warmup.as_secs_f64(),
            measured_s,
            interrupted: run.interrupted,
            sent: run.totals.sent,
            received: run.totals.received,
            throughput_msgs_per_s: rate(run.totals.received, measured_s),
            latency_us: Latency::of(&run.totals.latency),
            connected: run.ever_connected,
            connect_failures_total: c.connect_failures.iter().sum(),
            connect_failures: names(&ConnectFailure::ALL.map(|k| k.name()), &c.connect_failures),
            errors_total: c.error_total(),
            errors: names(&ErrorKind::ALL.map(|k| k.name()), &c.errors),
            disconnects: names(&DisconnectReason::ALL.map(|k| k.name()), &c.disconnects),
            error_samples: run.samples,
            thresholds: Vec::new(),
            series: run.series,
            channel: plan
                .lotus
                .as_ref()
                .filter(|l| l.room_size > 0)
                .map(|l| ChannelSummary {
                    deliveries: run.deliveries,
                    expected: match plan.stop {
                        StopRule::Messages(n) => Some(crate::lotus::expected_deliveries(
                            plan.connections,
                            l.room_size,
                            n,
                        )),
                        StopRule::Duration(_) => None,
                    },
                    missed: run.missed,
                }),
        }
    }

    /// The multi-line human summary.
    pub fn human(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "stage-loadtest: {} bots -> {} ({} framing, scenario {}, {} threads)",
            self.connections, self.target, self.framing, self.scenario, self.threads
        );
        let _ = writeln!(
            o,
            "  window       {} measured (warmup {}, elapsed {}){}",
            secs(self.measured_s),
            secs(self.warmup_s),
            secs(self.elapsed_s),
            if self.interrupted {
                ", interrupted"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "  messages     {} sent, {} received",
            self.sent, self.received
        );
        let _ = writeln!(o, "  throughput   {:.1} msgs/s", self.throughput_msgs_per_s);
        let l = &self.latency_us;
        if l.count == 0 {
            let _ = writeln!(o, "  latency      no round trips measured");
        } else {
            let _ = writeln!(
                o,
                "  latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (min {}, mean {}, {} round trips)",
                format_us(l.p50),
                format_us(l.p90),
                format_us(l.p99),
                format_us(l.p999),
                format_us(l.max),
                format_us(l.min),
                format_us(l.mean.round() as u64),
                l.count
            );
        }
        let _ = writeln!(
            o,
            "  connections  {} of {} connected, connect failures: {}",
            self.connected,
            self.connections,
            counts(self.connect_failures_total, &self.connect_failures)
        );
        let _ = writeln!(
            o,
            "  errors       {}",
            counts(self.errors_total, &self.errors)
        );
        let disconnects: u64 = self.disconnects.values().sum();
        let _ = writeln!(
            o,
            "  disconnects  {}",
            counts(disconnects, &self.disconnects)
        );
        if let Some(c) = &self.channel {
            let expected = c
                .expected
                .map_or(String::new(), |e| format!(" of {e} expected"));
            let missed = match c.missed {
                0 => "none".to_string(),
                n => n.to_string(),
            };
            let _ = writeln!(
                o,
                "  channel      {} deliveries{expected}, missed ids: {missed}",
                c.deliveries
            );
        }
        for sample in &self.error_samples {
            let _ = writeln!(o, "    e.g. {sample}");
        }
        for v in &self.thresholds {
            let _ = writeln!(o, "  threshold    {v}");
        }
        o
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a summary always serializes")
    }

    pub fn thresholds_ok(&self) -> bool {
        self.thresholds.iter().all(|v| v.ok)
    }

    #[cfg(test)]
    pub fn empty_for_tests() -> Summary {
        Summary {
            target: "127.0.0.1:1".into(),
            framing: Framing::Packet,
            scenario: "echo".into(),
            connections: 1,
            threads: 1,
            payload_size: 32,
            elapsed_s: 0.0,
            warmup_s: 0.0,
            measured_s: 0.0,
            interrupted: false,
            sent: 0,
            received: 0,
            throughput_msgs_per_s: 0.0,
            latency_us: Latency::default(),
            connected: 0,
            connect_failures_total: 0,
            connect_failures: BTreeMap::new(),
            errors_total: 0,
            errors: BTreeMap::new(),
            disconnects: BTreeMap::new(),
            error_samples: Vec::new(),
            thresholds: Vec::new(),
            series: Vec::new(),
            channel: None,
        }
    }
}

fn secs(s: f64) -> String {
    if s <= 0.0 {
        return "0s".into();
    }
    format_duration(Duration::from_secs_f64(s))
}

/// `none`, or `3 (timeout 2, eof 1)` listing the non-zero entries.
fn counts(total: u64, by: &BTreeMap<&'static str, u64>) -> String {
    if total == 0 {
        return "none".into();
    }
    let parts: Vec<String> = by
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    format!("{total} ({})", parts.join(", "))
}

/// The once-per-second progress line.
pub fn progress_line(p: &Point, connections: usize) -> String {
    format!(
        "[{:>6.1}s] bots {}/{}  {:.0} msgs/s  p50 {}  p99 {}  errors {}{}",
        p.t,
        p.connected,
        connections,
        p.msgs_per_s,
        format_us(p.p50_us),
        format_us(p.p99_us),
        p.errors,
        if p.warmup { "  (warmup)" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Args;
    use crate::stats::{new_histogram, Counters};
    use clap::Parser;

    fn plan() -> Plan {
        Args::try_parse_from(["x", "--target", "127.0.0.1:9", "--connections", "4"])
            .unwrap()
            .plan()
            .unwrap()
    }

    fn window() -> Window {
        let mut latency = new_histogram();
        for us in [100, 200, 300, 400] {
            latency.record(us).unwrap();
        }
        let mut counters = Counters::default();
        counters.errors[0] = 2; // timeout
        counters.disconnects[2] = 2; // timeout
        counters.connect_failures[0] = 1;
        counters.errors[5] = 1; // connect
        Window {
            latency,
            sent: 40,
            received: 40,
            counters,
        }
    }

    #[test]
    fn numbers_and_rendering() {
        let s = Summary::new(
            &plan(),
            RunTotals {
                elapsed: Duration::from_secs(3),
                measured: Duration::from_secs(2),
                interrupted: false,
                totals: window(),
                samples: vec!["bot 1: no reply within 5s".into()],
                ever_connected: 3,
                series: Vec::new(),
                deliveries: 0,
                missed: 0,
            },
        );
        assert_eq!(s.throughput_msgs_per_s, 20.0);
        assert_eq!(s.latency_us.count, 4);
        assert_eq!(s.latency_us.max, 400);
        assert_eq!(s.errors_total, 3);
        assert_eq!(s.errors["timeout"], 2);
        assert_eq!(s.errors["protocol"], 0, "every kind is present in the JSON");
        assert_eq!(s.disconnects["timeout"], 2);
        assert_eq!(s.connect_failures["refused"], 1);

        let text = s.human();
        assert!(text.contains("40 sent, 40 received"), "{text}");
        assert!(text.contains("20.0 msgs/s"), "{text}");
        assert!(
            text.contains("errors       3 (connect 1, timeout 2)"),
            "{text}"
        );
        assert!(text.contains("disconnects  2 (timeout 2)"), "{text}");
        assert!(text.contains("3 of 4 connected"), "{text}");
        assert!(text.contains("e.g. bot 1"), "{text}");

        let json: serde_json::Value = serde_json::from_str(&s.json()).unwrap();
        assert_eq!(json["received"], 40);
        assert_eq!(json["latency_us"]["p99"], 400);
        assert_eq!(json["errors"]["timeout"], 2);
        assert_eq!(json["framing"], "packet");
    }

    #[test]
    fn empty_run_renders() {
        let s = Summary::new(
            &plan(),
            RunTotals {
                elapsed: Duration::ZERO,
                measured: Duration::ZERO,
                interrupted: true,
                totals: Window::default(),
                samples: Vec::new(),
                ever_connected: 0,
                series: Vec::new(),
                deliveries: 0,
                missed: 0,
            },
        );
        assert_eq!(s.throughput_msgs_per_s, 0.0);
        let text = s.human();
        assert!(text.contains("no round trips measured"));
        assert!(text.contains("errors       none"));
        assert!(text.contains("interrupted"));
        assert!(serde_json::from_str::<serde_json::Value>(&s.json()).is_ok());
    }

    #[test]
    fn progress() {
        let p = Point {
            t: 3.0,
            span_s: 1.0,
            warmup: true,
            connected: 5,
            sent: 10,
            received: 10,
            msgs_per_s: 10.0,
            p50_us: 120,
            p99_us: 2500,
            max_us: 3000,
            errors: 1,
        };
        let line = progress_line(&p, 8);
        assert_eq!(
            line,
            "[   3.0s] bots 5/8  10 msgs/s  p50 120us  p99 2.50ms  errors 1  (warmup)"
        );
    }
}
