//! Parsing and printing of the human units used on the command line and in reports:
//! durations such as `250us`, `5ms`, `1.5s`, `2m` and rates such as `100` or `12.5`.
//! One parser for every duration flag keeps `--p99-max 5ms` and `--think-time 5ms` alike.

use std::time::Duration;

/// Parses `<number><unit>` with unit `ns`, `us` (or `µs`), `ms`, `s`, `m` or `h`.
/// A bare `0` is accepted; any other bare number is refused because its unit would be a guess.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` needs a unit: ns, us, ms, s, m or h (e.g. 5ms)"))?;
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 250us, 5ms, 1.5s)"))?;
    let scale_ns = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use ns, us, ms, s, m or h"
            ))
        }
    };
    let ns = value * scale_ns;
    if !ns.is_finite() || ns > u64::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    Ok(Duration::from_nanos(ns.round() as u64))
}

/// Parses a non-negative, finite rate or count given as a decimal number.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("`{text}` must be a finite number >= 0"));
    }
    Ok(v)
}

/// Like `parse_rate`, but zero is refused (a zero ramp-up rate would never connect anyone).
pub fn parse_positive_rate(text: &str) -> Result<f64, String> {
    let v = parse_rate(text)?;
    if v == 0.0 {
        return Err("must be greater than 0".into());
    }
    Ok(v)
}

/// A latency in microseconds, printed with a unit that keeps 3 significant digits or so.
pub fn format_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// A duration printed compactly (`1.5s`, `250ms`, `40us`).
pub fn format_duration(d: Duration) -> String {
    format_us(d.as_micros().min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5ms"), Ok(Duration::from_millis(5)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10ns"), Ok(Duration::from_nanos(10)));
        assert_eq!(parse_duration(" 30s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_why() {
        assert!(parse_duration("5").unwrap_err().contains("unit"));
        assert!(parse_duration("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-5ms").is_err());
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e400s").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("12.5"), Ok(12.5));
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("inf").is_err());
        assert!(parse_rate("x").is_err());
        assert!(parse_positive_rate("0").is_err());
        assert_eq!(parse_positive_rate("100"), Ok(100.0));
    }

    #[test]
    fn formatting() {
        assert_eq!(format_us(999), "999us");
        assert_eq!(format_us(1_234), "1.23ms");
        assert_eq!(format_us(2_500_000), "2.50s");
        assert_eq!(format_duration(Duration::from_millis(5)), "5.00ms");
    }
}
