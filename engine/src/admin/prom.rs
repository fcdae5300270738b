//! The Prometheus text exposition format (version 0.0.4), written by hand: `# HELP` and
//! `# TYPE` once per metric family, then its samples, label values escaped. Hand-written
//! because every figure is gathered from the cores' plain counters at scrape time
//! (`node::stats`): a client library's registry (prometheus, prometheus-client, metrics)
//! would hold them in shared atomics that the packet path would have to update, which this
//! engine does not allow, and using only its encoder would mean rebuilding a registry per
//! scrape. The format is small and specified; the tests below pin it.

use std::fmt::Write;

/// A metric family's type.
#[derive(Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A number as the format writes it: integers exactly, floats in Rust's shortest form
/// (which Prometheus parses), infinities as `+Inf` / `-Inf`.
pub trait Number {
    fn write(&self, out: &mut String);
}

impl Number for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Number for usize {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Number for f64 {
    fn write(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

/// The text of one scrape.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family: its help line and type. Its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.name());
    }

    /// One sample of the current family (`name` may carry a `_bucket` / `_sum` / `_count`
    /// suffix for a histogram).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Number) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.write(&mut self.out);
        self.out.push('\n');
    }

    /// A histogram's samples: `counts[i]` observations in bucket `i` (not cumulative; the
    /// last one above every bound), written as the format's cumulative `le` buckets, plus
    /// `_sum` and `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for (i, count) in counts.iter().enumerate() {
            cumulative += count;
            let le = match bounds.get(i) {
                Some(b) => {
                    let mut s = String::new();
                    b.write(&mut s);
                    s
                }
                None => "+Inf".to_string(),
            };
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative);
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Label values escape `\`, `"` and newlines.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Help text escapes `\` and newlines.
fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut e = Exposition::default();
        e.family("stage_frames_in_total", Kind::Counter, "Frames\nin \\ out");
        e.sample(
            "stage_frames_in_total",
            &[("core", "0"), ("listener", "tcp://a\"b\\c\nd")],
            42u64,
        );
        e.family("stage_up", Kind::Gauge, "Up.");
        e.sample("stage_up", &[], 1.5f64);
        assert_eq!(
            e.finish(),
            "# HELP stage_frames_in_total Frames\\nin \\\\ out\n\
             # TYPE stage_frames_in_total counter\n\
             stage_frames_in_total{core=\"0\",listener=\"tcp://a\\\"b\\\\c\\nd\"} 42\n\
             # HELP stage_up Up.\n\
             # TYPE stage_up gauge\n\
             stage_up 1.5\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let mut e = Exposition::default();
        e.family("d_seconds", Kind::Histogram, "D.");
        e.histogram("d_seconds", &[("k", "x")], &[0.001, 0.5], &[2, 0, 3], 7.25);
        let text = e.finish();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "d_seconds_bucket{k=\"x\",le=\"0.001\"} 2",
                "d_seconds_bucket{k=\"x\",le=\"0.5\"} 2",
                "d_seconds_bucket{k=\"x\",le=\"+Inf\"} 5",
                "d_seconds_sum{k=\"x\"} 7.25",
                "d_seconds_count{k=\"x\"} 5",
            ]
        );
    }

    #[test]
    fn special_floats() {
        let mut s = String::new();
        f64::INFINITY.write(&mut s);
        s.push(' ');
        f64::NAN.write(&mut s);
        s.push(' ');
        0.00001f64.write(&mut s);
        assert_eq!(s, "+Inf NaN 0.00001");
    }
}
