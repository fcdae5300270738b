//! A self-contained chart of the per-second series: throughput (msgs/s) on top, p99
//! latency below, warmup shaded. Hand-written SVG with no scripts or external resources, so
//! the file opens anywhere (browser, CI artifact viewer) and can be attached to a report;
//! the HTML variant wraps the same SVG with the summary numbers.

use crate::report::Summary;
use crate::series::Point;
use crate::units::format_us;
use std::fmt::Write as _;

const WIDTH: f64 = 960.0;
const PANEL_H: f64 = 220.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 48.0;
const GAP: f64 = 56.0;
const BOTTOM: f64 = 44.0;

/// Escapes text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// The smallest "nice" number (1, 2 or 5 times a power of ten) at or above `v`, so the axis
/// ticks land on round values.
pub fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= v * (1.0 - 1e-12) {
            return m * mag;
        }
    }
    10.0 * mag
}

struct Panel<'a> {
    title: &'a str,
    top: f64,
    color: &'a str,
    /// y value of each point.
    values: Vec<f64>,
    /// Formats a y-axis tick label.
    label: &'a dyn Fn(f64) -> String,
}

/// The chart as a standalone SVG document.
pub fn svg(summary: &Summary) -> String {
    let points = &summary.series;
    let height = TOP + 2.0 * PANEL_H + GAP + BOTTOM;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(&format!(
            "stage-loadtest: {} bots -> {} ({}, {})",
            summary.connections, summary.target, summary.framing, summary.scenario
        ))
    );
    let _ = writeln!(
        o,
        r##"<text x="{LEFT}" y="38" fill="#555">{}</text>"##,
        escape(&format!(
            "{:.1} msgs/s over {:.1}s measured; p50 {}, p99 {}, max {}; {} errors",
            summary.throughput_msgs_per_s,
            summary.measured_s,
            format_us(summary.latency_us.p50),
            format_us(summary.latency_us.p99),
            format_us(summary.latency_us.max),
            summary.errors_total
        ))
    );
    let t_max = points.iter().map(|p| p.t).fold(0.0, f64::max).max(1.0);
    let msgs = |v: f64| format!("{v:.0}");
    let ms = |v: f64| format!("{v:.3}ms").replace(".000ms", "ms");
    let panels = [
        Panel {
            title: "throughput (msgs/s)",
            top: TOP + 10.0,
            color: "#1f77b4",
            values: points.iter().map(|p| p.msgs_per_s).collect(),
            label: &msgs,
        },
        Panel {
            title: "p99 latency (ms)",
            top: TOP + 10.0 + PANEL_H + GAP,
            color: "#d62728",
            values: points.iter().map(|p| p.p99_us as f64 / 1000.0).collect(),
            label: &ms,
        },
    ];
    for panel in &panels {
        draw_panel(&mut o, panel, points, t_max);
    }
    let _ = writeln!(
        o,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#333">seconds since start</text>"##,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        height - 8.0
    );
    o.push_str("</svg>\n");
    o
}

fn draw_panel(o: &mut String, panel: &Panel<'_>, points: &[Point], t_max: f64) {
    let w = WIDTH - LEFT - RIGHT;
    let h = PANEL_H - 20.0;
    let (x0, y0) = (LEFT, panel.top + 20.0);
    let y_max = nice_ceiling(panel.values.iter().copied().fold(0.0, f64::max));
    let x = |t: f64| x0 + w * (t / t_max);
    let y = |v: f64| y0 + h - h * (v / y_max).clamp(0.0, 1.0);

    let _ = writeln!(
        o,
        r#"<text x="{x0}" y="{}" font-weight="bold" fill="{}">{}</text>"#,
        panel.top + 12.0,
        panel.color,
        escape(panel.title)
    );
    // Warmup: shade the spans that were excluded from the statistics.
    if let Some(end) = points
        .iter()
        .filter(|p| p.warmup)
        .map(|p| p.t)
        .reduce(f64::max)
    {
        let _ = writeln!(
            o,
            r##"<rect x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{h:.1}" fill="#eeeeee"><title>warmup</title></rect>"##,
            x(end) - x0
        );
    }
    // Horizontal grid and y labels at fifths of the (nice) maximum.
    for i in 0..=5 {
        let v = y_max * f64::from(i) / 5.0;
        let yy = y(v);
        let _ = writeln!(
            o,
            r##"<line x1="{x0}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#dddddd"/>"##,
            x0 + w
        );
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#333">{}</text>"##,
            x0 - 6.0,
            yy + 4.0,
            escape(&(panel.label)(v))
        );
    }
    // X ticks: about ten, on whole seconds.
    let step = nice_ceiling(t_max / 10.0).max(1.0);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let xx = x(t);
        let _ = writeln!(
            o,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#999999"/>"##,
            y0 + h,
            y0 + h + 4.0
        );
        let _ = writeln!(
            o,
            r##"<text x="{xx:.1}" y="{:.1}" text-anchor="middle" fill="#333">{t}</text>"##,
            y0 + h + 16.0
        );
        t += step;
    }
    let _ = writeln!(
        o,
        r##"<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999999"/>"##
    );
    // The series: a line through every point, with a dot per point so a single second
    // (or a gap) is still visible.
    let coords: Vec<String> = points
        .iter()
        .zip(&panel.values)
        .map(|(p, v)| format!("{:.1},{:.1}", x(p.t), y(*v)))
        .collect();
    if !coords.is_empty() {
        let _ = writeln!(
            o,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            coords.join(" "),
            panel.color
        );
    }
    for (p, v) in points.iter().zip(&panel.values) {
        let _ = writeln!(
            o,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"><title>{}</title></circle>"#,
            x(p.t),
            y(*v),
            panel.color,
            escape(&format!("t={:.0}s: {}", p.t, (panel.label)(*v)))
        );
    }
}

/// The chart inside a small HTML page that also lists the summary numbers.
pub fn html(summary: &Summary) -> String {
    let l = &summary.latency_us;
    let rows = [
        ("target", summary.target.clone()),
        (
            "scenario",
            format!("{} ({} framing)", summary.scenario, summary.framing),
        ),
        (
            "bots",
            format!("{} ({} connected)", summary.connections, summary.connected),
        ),
        (
            "measured",
            format!(
                "{:.2}s (warmup {:.2}s)",
                summary.measured_s, summary.warmup_s
            ),
        ),
        (
            "messages",
            format!("{} sent, {} received", summary.sent, summary.received),
        ),
        (
            "throughput",
            format!("{:.1} msgs/s", summary.throughput_msgs_per_s),
        ),
        (
            "latency",
            format!(
                "p50 {}, p90 {}, p99 {}, p99.9 {}, max {}",
                format_us(l.p50),
                format_us(l.p90),
                format_us(l.p99),
                format_us(l.p999),
                format_us(l.max)
            ),
        ),
        ("errors", summary.errors_total.to_string()),
    ];
    let mut o = String::new();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n");
    let _ = writeln!(
        o,
        "<title>{}</title>",
        escape(&format!("stage-loadtest: {}", summary.target))
    );
    o.push_str("<style>body{font-family:sans-serif;margin:2em}td{padding:2px 12px 2px 0}td:first-child{color:#555}</style>\n</head>\n<body>\n");
    o.push_str("<table>\n");
    for (k, v) in rows {
        let _ = writeln!(o, "<tr><td>{}</td><td>{}</td></tr>", escape(k), escape(&v));
    }
    o.push_str("</table>\n");
    o.push_str(&svg(summary));
    o.push_str("</body>\n</html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64, rate: f64, p99: u64, warmup: bool) -> Point {
        Point {
            t,
            span_s: 1.0,
            warmup,
            connected: 4,
            sent: rate as u64,
            received: rate as u64,
            msgs_per_s: rate,
            p50_us: p99 / 2,
            p99_us: p99,
            max_us: p99 * 2,
            errors: 0,
        }
    }

    fn with_series(series: Vec<Point>) -> Summary {
        let mut s = Summary::empty_for_tests();
        s.target = "bots <&> \"quotes\"".into();
        s.series = series;
        s
    }

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{e}\n{svg}"))
    }

    #[test]
    fn svg_is_well_formed_with_two_series() {
        let s = with_series(
            (1..=12)
                .map(|i| point(f64::from(i), 1000.0 * f64::from(i), 250 * i as u64, i <= 2))
                .collect(),
        );
        let text = svg(&s);
        let doc = parse(&text);
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let polylines: Vec<_> = root
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .collect();
        assert_eq!(polylines.len(), 2, "throughput and p99");
        for p in polylines {
            assert_eq!(p.attribute("points").unwrap().split(' ').count(), 12);
        }
        assert!(root
            .descendants()
            .any(|n| n.has_tag_name("title") && n.text() == Some("warmup")));
        // The title survives escaping intact.
        assert!(root
            .descendants()
            .any(|n| n.text().is_some_and(|t| t.contains("bots <&> \"quotes\""))));
        assert!(!text.contains("<script"));
    }

    #[test]
    fn svg_with_no_or_one_point() {
        let empty = svg(&with_series(Vec::new()));
        let doc = parse(&empty);
        assert_eq!(
            doc.root_element()
                .descendants()
                .filter(|n| n.has_tag_name("polyline"))
                .count(),
            0
        );
        let one = svg(&with_series(vec![point(0.4, 0.0, 0, false)]));
        parse(&one);
        assert!(!one.contains("NaN") && !one.contains("inf"));
    }

    #[test]
    fn html_embeds_the_svg() {
        let page = html(&with_series(vec![point(1.0, 10.0, 100, false)]));
        assert!(page.starts_with("<!DOCTYPE html>"));
        let start = page.find("<svg").unwrap();
        let end = page.find("</svg>").unwrap() + "</svg>".len();
        parse(&page[start..end]);
        // The rest is XHTML-clean too, so any parser accepts it.
        let body = &page[page.find("<html").unwrap()..];
        parse(body);
    }

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(1.1), 2.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(23_456.0), 50_000.0);
        assert!((nice_ceiling(0.012) - 0.02).abs() < 1e-12);
    }
}
