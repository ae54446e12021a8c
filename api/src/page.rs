//! `GET /`: the latest rounds as a server-rendered HTML page with an SVG chart, the serving
//! hostname (as the original page showed) and auto-refresh. No JavaScript at all. Values are
//! shown as people read them ([`Shown`]: no binary-float noise); the API's JSON keeps them
//! whole.

use std::fmt::Write;

use fleetmeter_wire::Shown;

use crate::round::{LegacyValue, Round};

/// Seconds between automatic reloads.
pub const REFRESH_SECONDS: u32 = 5;

pub fn render(hostname: &str, rounds: &[Round], values: &[LegacyValue]) -> String {
    let mut html = String::with_capacity(16 * 1024);
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<link rel="icon" href="data:,">
<title>fleetmeter — measurements</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
h1 {{ font-size: 1.4rem; margin-bottom: 0.2rem; }}
.host {{ color: #666; margin-top: 0; }}
table {{ border-collapse: collapse; margin-top: 1rem; }}
th, td {{ padding: 0.25rem 0.8rem; border-bottom: 1px solid #ddd; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
svg {{ border: 1px solid #ddd; background: #fafafa; }}
.line {{ fill: none; stroke: #1f77b4; stroke-width: 2; }}
.point {{ fill: #1f77b4; }}
.axis {{ font-size: 11px; fill: #666; }}
</style>
</head>
<body>
<h1>fleetmeter measurements</h1>
<p class="host">Hostname: <span id="hostname">{}</span> · refreshes every {REFRESH_SECONDS} s</p>
"#,
        escape(hostname)
    );
    if rounds.is_empty() {
        html.push_str("<p id=\"empty\">No rounds stored yet.</p>\n");
    } else {
        chart(&mut html, rounds);
        table(&mut html, rounds);
    }
    if !values.is_empty() {
        html.push_str("<h2>Values from <code>GET /nuevo</code></h2>\n<ul id=\"values\">\n");
        for v in values {
            let _ = writeln!(
                html,
                "<li>{} ----&gt; {} °C</li>",
                format_ts(v.ts),
                Shown(v.value)
            );
        }
        html.push_str("</ul>\n");
    }
    html.push_str("</body>\n</html>\n");
    html
}

/// One point per round, oldest on the left.
fn chart(html: &mut String, rounds: &[Round]) {
    const W: f64 = 800.0;
    const H: f64 = 240.0;
    const PAD: f64 = 36.0;
    /// Room for the value labels on the left.
    const LEFT: f64 = 64.0;
    let points: Vec<&Round> = rounds.iter().rev().collect();
    let (min, max) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(r.value), hi.max(r.value))
        });
    let span = if max > min { max - min } else { 1.0 };
    let x = |i: usize| {
        if points.len() == 1 {
            (LEFT + W - PAD) / 2.0
        } else {
            LEFT + (W - LEFT - PAD) * i as f64 / (points.len() - 1) as f64
        }
    };
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * (v - min) / span;
    let _ = writeln!(
        html,
        r#"<svg id="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="Published value per round">"#
    );
    let _ = writeln!(
        html,
        r#"<text class="axis" x="4" y="{:.1}">{}</text><text class="axis" x="4" y="{:.1}">{}</text>"#,
        y(max) + 4.0,
        Shown(max),
        y(min) + 4.0,
        Shown(min)
    );
    let polyline: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{:.1},{:.1}", x(i), y(r.value)))
        .collect();
    let _ = writeln!(
        html,
        r#"<polyline class="line" points="{}"/>"#,
        polyline.join(" ")
    );
    for (i, r) in points.iter().enumerate() {
        let _ = writeln!(
            html,
            r#"<circle class="point" data-round="{}" cx="{:.1}" cy="{:.1}" r="3"><title>round {}: {}</title></circle>"#,
            r.round,
            x(i),
            y(r.value),
            r.round,
            escape(&format!(
                "{} {}",
                Shown(r.value),
                r.unit.as_deref().unwrap_or("")
            ))
        );
    }
    html.push_str("</svg>\n");
}

fn table(html: &mut String, rounds: &[Round]) {
    html.push_str(
        "<table id=\"rounds\">\n<thead><tr><th>time (UTC)</th><th>round</th><th>value</th>\
         <th>devices</th><th>leader</th><th>aggregator</th></tr></thead>\n<tbody>\n",
    );
    for r in rounds {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{} {}</td>\
             <td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            format_ts(r.ts),
            r.round,
            Shown(r.value),
            escape(r.unit.as_deref().unwrap_or("")),
            r.count,
            escape(&r.leader),
            escape(&r.aggregator)
        );
    }
    html.push_str("</tbody>\n</table>\n");
}

/// Text from clients (device ids, leader, aggregator) goes through here before the page:
/// `& < > " '` become entities, safe in element text and in quoted attributes.
pub fn escape(text: &str) -> String {
    html_escape::encode_quoted_attribute(text).into_owned()
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) from milliseconds since the Unix epoch; a time past what
/// `jiff` can hold (late in year 9999) shows as the latest one it can.
pub fn format_ts(ms: u64) -> String {
    let ts = i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    ts.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_ts(0), "1970-01-01 00:00:00");
        assert_eq!(format_ts(1_766_334_379_000), "2025-12-21 16:26:19");
        assert_eq!(format_ts(951_782_400_000), "2000-02-29 00:00:00");
        assert!(
            format_ts(u64::MAX).starts_with("9999-12-"),
            "the latest time, no panic"
        );
    }

    #[test]
    fn escapes_client_text() {
        assert_eq!(
            escape("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#x27;y&#x27;&lt;/b&gt;"
        );
    }

    #[test]
    fn one_point_per_round_and_no_script() {
        let rounds: Vec<Round> = (1..=3)
            .rev()
            .map(|n| Round {
                round: n,
                value: 80.0 + n as f64,
                count: 1,
                devices: vec!["1".into()],
                aggregator: "mean@0.1.0".into(),
                leader: "<script>".into(),
                ts: 1_766_334_379_000,
                unit: Some("°C".into()),
                counter: None,
                version: fleetmeter_wire::VERSION,
                values: Some(vec![80.0 + n as f64]),
            })
            .collect();
        let html = render("host-1", &rounds, &[]);
        assert_eq!(html.matches("<circle class=\"point\"").count(), 3);
        assert!(!html.contains("<script"), "client text must be escaped");
        assert!(html.contains("host-1"));
    }
}
