//! `GET /`: the latest rounds as a server-rendered HTML page with an SVG chart, the serving
//! hostname (as the original page showed) and auto-refresh. No JavaScript at all. Values are
//! shown as people read them ([`Shown`]: no binary-float noise); the API's JSON keeps them
//! whole.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write,
};

use fleetmeter_wire::Shown;

use crate::round::{LegacyValue, Round};

mod quantities;

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
body {{ font-family: system-ui, sans-serif; margin: 1rem auto; padding: 0 1rem; max-width: 60rem; color: #222; }}
h1 {{ font-size: 1.4rem; margin-bottom: 0.2rem; }}
h2 {{ font-size: 1.1rem; margin-top: 1.5rem; }}
.host {{ color: #666; margin-top: 0; }}
.scroll {{ overflow-x: auto; }}
table {{ border-collapse: collapse; margin-top: 1rem; }}
th, td {{ padding: 0.25rem 0.8rem; border-bottom: 1px solid #ddd; text-align: left; white-space: nowrap; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
#chart {{ width: 100%; height: auto; border: 1px solid #ddd; background: #fafafa; }}
.line {{ fill: none; stroke: #1f77b4; stroke-width: 2; }}
.point {{ fill: #1f77b4; }}
.point.missing {{ fill: #fff; stroke: #d62728; stroke-width: 2; }}
.grid {{ stroke: #e4e4e4; }}
.axis {{ font-size: 11px; fill: #666; }}
.mark-leader line {{ stroke: #9467bd; stroke-dasharray: 4 3; }}
.mark-leader text {{ fill: #9467bd; }}
.mark-rollout line {{ stroke: #2ca02c; stroke-dasharray: 2 2; }}
.mark-rollout text {{ fill: #2ca02c; }}
.shadow {{ fill: #fff; stroke: #ff7f0e; stroke-width: 2; }}
.legend {{ font-size: 0.85rem; color: #555; }}
.legend span {{ display: inline-block; width: 1.2rem; height: 0.6rem; margin: 0 0.3rem 0 0.8rem; vertical-align: middle; }}
.key-line {{ border-top: 2px solid #1f77b4; }}
.key-missing {{ border: 2px solid #d62728; border-radius: 50%; width: 0.5rem !important; height: 0.5rem !important; }}
.key-leader {{ border-left: 2px dashed #9467bd; width: 0 !important; height: 0.9rem !important; }}
.key-rollout {{ border-left: 2px dotted #2ca02c; width: 0 !important; height: 0.9rem !important; }}
.key-shadow {{ border: 2px solid #ff7f0e; border-radius: 50%; width: 0.5rem !important; height: 0.5rem !important; }}
#devices {{ display: flex; flex-wrap: wrap; gap: 0.6rem; }}
.device {{ border: 1px solid #ddd; border-radius: 6px; padding: 0.5rem 0.7rem; min-width: 9rem; background: #fff; }}
.device.stale {{ border-color: #d62728; background: #fff5f5; }}
.device .id {{ font-weight: 600; }}
.device .value {{ font-size: 1.2rem; font-variant-numeric: tabular-nums; }}
.device .missed {{ font-size: 0.8rem; color: #666; }}
.device.stale .missed {{ color: #d62728; }}
tr.gap td {{ color: #8a5a00; background: #fff8e6; font-style: italic; }}
.spark {{ width: 120px; height: 28px; display: block; }}
.spark polyline {{ fill: none; stroke: #1f77b4; stroke-width: 1.5; }}
.quantity-chart {{ width: 100%; height: auto; border: 1px solid #ddd; background: #fafafa; margin-bottom: 0.6rem; }}
h3.quantity {{ font-size: 1rem; margin: 0.8rem 0 0.2rem; }}
.device .quantities {{ font-size: 0.85rem; color: #333; font-variant-numeric: tabular-nums; }}
@media (max-width: 600px) {{
  /* The chart scales to the screen: its labels (in chart units) grow to stay readable. */
  .axis {{ font-size: 20px; }}
  body {{ padding: 0 0.5rem; }}
}}
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
        quantities::charts(&mut html, rounds);
        devices_panel(&mut html, rounds);
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

/// The chart's size in SVG units (it scales to the page's width).
const W: f64 = 800.0;
const H: f64 = 260.0;
/// Room for the value labels on the left, the time labels below, the marks' labels above.
const LEFT: f64 = 84.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 34.0;

/// One point per round, placed by its commit time (oldest on the left), with a time axis;
/// a dashed line where the leader changed; a hollow red point where a device was missing
/// (one that another shown round has).
fn chart(html: &mut String, rounds: &[Round]) {
    let points: Vec<&Round> = rounds.iter().rev().collect();
    let all = devices_of(rounds);
    let scale = Scale::of(points.iter().map(|r| (r.ts, r.value)));
    let (lo, hi) = (scale.lo, scale.hi);
    let (x, y) = (|ts| scale.x(ts), |v| scale.y(v));
    let _ = writeln!(
        html,
        r#"<svg id="chart" viewBox="0 0 {W} {H}" preserveAspectRatio="xMidYMid meet" role="img" aria-label="Published value per round, over time (UTC)">"#
    );
    let unit = points[points.len() - 1].unit.as_deref().unwrap_or("");
    axes(html, &scale, unit);
    // Leader changes.
    for pair in points.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        if before.leader != after.leader {
            let at = x(after.ts);
            let _ = writeln!(
                html,
                r#"<g class="mark-leader" data-round="{}"><line x1="{at:.1}" x2="{at:.1}" y1="{TOP}" y2="{:.1}"/><text class="axis" x="{at:.1}" y="{:.1}" text-anchor="middle">leader {} → {}</text><title>round {}: the leader changed from {} to {}</title></g>"#,
                after.round,
                H - BOTTOM,
                TOP - 8.0,
                escape(&short(&before.leader)),
                escape(&short(&after.leader)),
                after.round,
                escape(&before.leader),
                escape(&after.leader)
            );
        }
    }
    // Plugin rollouts: where the rollout in effect (or its state) changed.
    for pair in points.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        let state = |r: &Round| r.rollout.as_ref().map(|m| (m.id, m.state.clone()));
        if let Some(mark) = &after.rollout
            && state(before) != state(after)
        {
            let at = x(after.ts);
            let label = format!("rollout {} {}", mark.id, mark.state);
            let _ = writeln!(
                html,
                r#"<g class="mark-rollout" data-round="{}"><line x1="{at:.1}" x2="{at:.1}" y1="{TOP}" y2="{:.1}"/><text class="axis" x="{at:.1}" y="{:.1}" text-anchor="middle">{}</text><title>round {}: {} rollout {} of {} is {}</title></g>"#,
                after.round,
                H - BOTTOM,
                TOP - 8.0,
                escape(&short(&label)),
                after.round,
                escape(&mark.kind),
                mark.id,
                escape(&mark.plugin),
                escape(&mark.state)
            );
        }
    }
    // A new aggregator in shadow: its value beside the published one.
    for r in &points {
        if let Some(shadow) = &r.shadow
            && let Some(v) = shadow.value
            && v.is_finite()
        {
            let _ = writeln!(
                html,
                r#"<circle class="shadow" data-round="{}" cx="{:.1}" cy="{:.1}" r="3"><title>round {}: {} in shadow: {} (published: {})</title></circle>"#,
                r.round,
                x(r.ts),
                y(v.clamp(lo, hi)),
                r.round,
                escape(&shadow.aggregator),
                Shown(v),
                Shown(r.value)
            );
        }
    }
    let polyline: Vec<String> = points
        .iter()
        .map(|r| format!("{:.1},{:.1}", x(r.ts), y(r.value)))
        .collect();
    let _ = writeln!(
        html,
        r#"<polyline class="line" points="{}"/>"#,
        polyline.join(" ")
    );
    for r in &points {
        let present: HashSet<&str> = r.devices.iter().map(String::as_str).collect();
        let missing: Vec<&str> = all
            .iter()
            .copied()
            .filter(|d| !present.contains(d))
            .collect();
        let (class, note) = if missing.is_empty() {
            ("point", String::new())
        } else {
            let named: Vec<&str> = missing.iter().copied().take(10).collect();
            let more = missing.len() - named.len();
            (
                "point missing",
                format!(
                    " — {} of {} devices; missing: {}{}",
                    r.devices.len(),
                    all.len(),
                    named.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ),
            )
        };
        let _ = writeln!(
            html,
            r#"<circle class="{class}" data-round="{}" cx="{:.1}" cy="{:.1}" r="3.5"><title>round {}: {}{}</title></circle>"#,
            r.round,
            x(r.ts),
            y(r.value),
            r.round,
            escape(&format!(
                "{} {}",
                Shown(r.value),
                r.unit.as_deref().unwrap_or("")
            )),
            escape(&note)
        );
    }
    html.push_str("</svg>\n");
    html.push_str(
        "<p class=\"legend\"><span class=\"key-line\"></span> value per round \
         <span class=\"key-missing\"></span> a device missing \
         <span class=\"key-leader\"></span> leader changed \
         <span class=\"key-rollout\"></span> plugin rollout \
         <span class=\"key-shadow\"></span> aggregator in shadow</p>\n",
    );
}

/// Where a chart puts a time and a value, in SVG units: the values' range (±1 around a flat
/// series) and the times' (one time in the middle).
#[derive(Clone, Copy, Debug)]
struct Scale {
    lo: f64,
    hi: f64,
    t0: u64,
    t1: u64,
}

impl Scale {
    /// The scale of `points`, (time, value), oldest first; at least one.
    fn of(points: impl Iterator<Item = (u64, f64)>) -> Self {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut t0, mut t1) = (u64::MAX, 0);
        for (t, v) in points {
            (lo, hi) = (lo.min(v), hi.max(v));
            (t0, t1) = (t0.min(t), t1.max(t));
        }
        if hi <= lo {
            (lo, hi) = (lo - 1.0, hi + 1.0);
        }
        Self { lo, hi, t0, t1 }
    }

    fn x(&self, ts: u64) -> f64 {
        if self.t1 > self.t0 {
            LEFT + (W - LEFT - RIGHT) * ts.saturating_sub(self.t0) as f64
                / (self.t1 - self.t0) as f64
        } else {
            (LEFT + W - RIGHT) / 2.0
        }
    }

    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - (H - TOP - BOTTOM) * (v - self.lo) / (self.hi - self.lo)
    }
}

/// The value axis (the highest and lowest value shown, and the middle, with the unit) and the
/// time axis of a chart.
fn axes(html: &mut String, scale: &Scale, unit: &str) {
    let (lo, hi, t0, t1) = (scale.lo, scale.hi, scale.t0, scale.t1);
    let (x, y) = (|ts| scale.x(ts), |v| scale.y(v));
    let unit = if unit.is_empty() {
        String::new()
    } else {
        format!(" {}", escape(unit))
    };
    for v in [hi, (hi + lo) / 2.0, lo] {
        let _ = writeln!(
            html,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}"/><text class="axis value" x="{}" y="{:.1}" text-anchor="end">{}{unit}</text>"#,
            W - RIGHT,
            y(v),
            y(v),
            LEFT - 6.0,
            y(v) + 4.0,
            Shown(v)
        );
    }
    // Time axis: up to five evenly spaced times, HH:MM:SS UTC (the date is in the table).
    let ticks = if t1 > t0 { 5 } else { 1 };
    for i in 0..ticks {
        let ts = if ticks == 1 {
            t0
        } else {
            t0 + (t1 - t0) * i / (ticks - 1)
        };
        // The first and last labels stay inside the chart.
        let anchor = match i {
            _ if ticks == 1 => "middle",
            0 => "start",
            i if i == ticks - 1 => "end",
            _ => "middle",
        };
        let _ = writeln!(
            html,
            r#"<text class="axis time" x="{:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
            x(ts),
            H - BOTTOM + 18.0,
            &format_ts(ts)[11..]
        );
    }
}

/// Every device named by the shown rounds, sorted.
fn devices_of(rounds: &[Round]) -> Vec<&str> {
    let mut all: Vec<&str> = rounds
        .iter()
        .flat_map(|r| r.devices.iter().map(String::as_str))
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// An id cut to 12 characters for a label (the full id is in the title).
fn short(id: &str) -> String {
    if id.chars().count() > 12 {
        format!("{}…", id.chars().take(11).collect::<String>())
    } else {
        id.to_owned()
    }
}

/// Device cards shown at most; the rest are counted (all of them: `GET /api/v1/devices`).
pub const PANEL_DEVICES: usize = 48;

/// One card per device: its latest value, a sparkline of its readings in the shown rounds
/// (version 2 rounds carry them), and the shown rounds it missed. A device absent from the
/// latest round comes first and is marked: a dead sensor shows at a glance, a drifting one in
/// its line. At most [`PANEL_DEVICES`] cards, those that missed most first.
fn devices_panel(html: &mut String, rounds: &[Round]) {
    let latest = &rounds[0];
    let unit = latest.unit.as_deref().unwrap_or("");
    // Each round's readings by device, once (a round may have 10,000 devices).
    let by_round: Vec<HashMap<&str, Option<f64>>> = rounds
        .iter()
        .map(|r| {
            let mut map: HashMap<&str, Option<f64>> =
                r.devices.iter().map(|d| (d.as_str(), None)).collect();
            map.extend(r.readings().map(|(d, v)| (d, Some(v))));
            map
        })
        .collect();
    let mut cards: Vec<(bool, usize, &str)> = devices_of(rounds)
        .into_iter()
        .map(|device| {
            let missed = by_round.iter().filter(|m| !m.contains_key(device)).count();
            (by_round[0].contains_key(device), missed, device)
        })
        .collect();
    // Absent from the latest round first, then most missed, then by id.
    cards.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(b.2)));
    let more = cards.len().saturating_sub(PANEL_DEVICES);
    html.push_str("<h2>Devices</h2>\n<div id=\"devices\">\n");
    for &(in_latest, missed, device) in cards.iter().take(PANEL_DEVICES) {
        // Oldest first.
        let readings: Vec<(u64, f64)> = rounds
            .iter()
            .zip(&by_round)
            .rev()
            .filter_map(|(r, m)| m.get(device).copied().flatten().map(|v| (r.ts, v)))
            .collect();
        let class = if in_latest { "device" } else { "device stale" };
        let value = match readings.last() {
            Some((_, v)) => format!("{} {}", Shown(*v), escape(unit)),
            None => "no per-device readings".to_owned(),
        };
        let _ = write!(
            html,
            r#"<div class="{class}" data-device="{id}"><div class="id">{id}</div><div class="value">{value}</div>"#,
            id = escape(device)
        );
        if let Some(line) = quantities::device_line(latest, device) {
            html.push_str(&line);
        }
        sparkline(html, &readings, (rounds[rounds.len() - 1].ts, latest.ts));
        let status = if in_latest {
            format!("missed {missed} of {} rounds", rounds.len())
        } else {
            format!(
                "not in the latest round · missed {missed} of {} rounds",
                rounds.len()
            )
        };
        let _ = writeln!(html, r#"<div class="missed">{status}</div></div>"#);
    }
    html.push_str("</div>\n");
    if more > 0 {
        let _ = writeln!(
            html,
            r#"<p class="more">and {more} more devices (all of them: <code>GET /api/v1/devices</code>)</p>"#
        );
    }
}

/// A small line of `readings` (time, value) over the shown rounds' time span `(t0, t1)` (so a
/// device that stopped reporting has a line that stops early), scaled to its own values.
fn sparkline(html: &mut String, readings: &[(u64, f64)], (t0, t1): (u64, u64)) {
    const SW: f64 = 120.0;
    const SH: f64 = 28.0;
    if readings.len() < 2 {
        return;
    }
    let (lo, hi) = readings
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| {
            (lo.min(*v), hi.max(*v))
        });
    let points: Vec<String> = readings
        .iter()
        .map(|(t, v)| {
            let x = if t1 > t0 {
                SW * (t.saturating_sub(t0)) as f64 / (t1 - t0) as f64
            } else {
                SW / 2.0
            };
            let y = if hi > lo {
                SH - 2.0 - (SH - 4.0) * (v - lo) / (hi - lo)
            } else {
                SH / 2.0
            };
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let _ = write!(
        html,
        r#"<svg class="spark" viewBox="0 0 {SW} {SH}" role="img" aria-label="readings from {} to {}"><polyline points="{}"/></svg>"#,
        Shown(lo),
        Shown(hi),
        points.join(" ")
    );
}

fn table(html: &mut String, rounds: &[Round]) {
    html.push_str(
        "<div class=\"scroll\"><table id=\"rounds\">\n<thead><tr><th>time (UTC)</th><th>round</th><th>value</th>\
         <th>devices</th><th>leader</th><th>aggregator</th></tr></thead>\n<tbody>\n",
    );
    for (i, r) in rounds.iter().enumerate() {
        // Newest first: the next row is the round stored before this one.
        if i > 0 {
            gap_row(html, rounds[i].round, rounds[i - 1].round);
        }
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
    html.push_str("</tbody>\n</table></div>\n");
}

/// Rounds numbered after this one jump further than a commit-per-period fleet numbers them
/// only when its state was started again (numbers then continue from the clock).
const RESTART_JUMP: u64 = 1_000;

/// A row between two stored rounds whose numbers are not consecutive: the rounds between
/// published nothing (no readings, a result dropped, or given up by a new leader: the
/// leader's log and `fleetmeter status` say which), or the fleet's state was started again.
fn gap_row(html: &mut String, older: u64, newer: u64) {
    let missing = newer.saturating_sub(older).saturating_sub(1);
    if missing == 0 {
        return;
    }
    let text = if missing >= RESTART_JUMP {
        format!("round numbers jump from {older} to {newer}: the fleet's state was started again")
    } else if missing == 1 {
        format!(
            "round {}: nothing published (no readings, a dropped result, or given up: see `fleetmeter status`)",
            older + 1
        )
    } else {
        format!(
            "rounds {} to {}: nothing published (no readings, dropped results, or given up: see `fleetmeter status`)",
            older + 1,
            newer - 1
        )
    };
    let _ = writeln!(
        html,
        "<tr class=\"gap\"><td colspan=\"6\">{}</td></tr>",
        escape(&text)
    );
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
                shadow: None,
                rollout: None,
                quantities: None,
            })
            .map(|r| r.one_quantity("random-temperature"))
            .collect();
        let html = render("host-1", &rounds, &[]);
        assert_eq!(html.matches("<circle class=\"point\"").count(), 3);
        assert!(!html.contains("<script"), "client text must be escaped");
        assert!(html.contains("host-1"));
    }

    fn round(n: u64, leader: &str, readings: &[(&str, f64)]) -> Round {
        Round {
            round: n,
            value: readings.iter().map(|(_, v)| v).sum::<f64>() / readings.len() as f64,
            count: readings.len() as u32,
            devices: readings.iter().map(|(d, _)| (*d).to_owned()).collect(),
            aggregator: "mean@0.1.0".into(),
            leader: leader.into(),
            ts: 1_766_334_379_000 + n * 1000,
            unit: Some("°C".into()),
            counter: None,
            version: fleetmeter_wire::VERSION,
            values: Some(readings.iter().map(|(_, v)| *v).collect()),
            shadow: None,
            rollout: None,
            quantities: None,
        }
        .one_quantity("random-temperature")
    }

    #[test]
    fn each_quantity_has_its_chart_with_its_unit_and_each_device_its_values() {
        use crate::round::RoundQuantity;
        let several = |n: u64, rh_unit: &str| {
            let mut r = round(n, "1", &[("1", 21.0 + n as f64), ("2", 22.0)]);
            r.unit = Some("Cel".into());
            r.quantities = Some(vec![
                RoundQuantity {
                    name: "temperature".into(),
                    unit: "Cel".into(),
                    value: Some(r.value),
                    values: vec![Some(21.0 + n as f64), Some(22.0)],
                },
                RoundQuantity {
                    name: "humidity".into(),
                    unit: rh_unit.into(),
                    value: Some(40.0 + n as f64),
                    values: vec![Some(40.0), None],
                },
            ]);
            assert_eq!(r.validate(), Ok(()));
            r
        };
        // Newest first; round 1 reported humidity in another unit.
        let rounds = vec![several(3, "%"), several(2, "%"), several(1, "1")];
        let html = render("h", &rounds, &[]);
        assert!(html.contains(r#"<svg class="quantity-chart" id="chart-temperature" data-quantity="temperature" data-unit="Cel""#), "{html}");
        assert!(html.contains(r#"id="chart-humidity" data-quantity="humidity" data-unit="%""#));
        assert!(
            html.contains("<h3 class=\"quantity\">humidity <span class=\"unit\">(%)</span></h3>")
        );
        // Units on the value axes; humidity charted in its newest unit only.
        assert!(html.contains(" %</text>") && html.contains(" Cel</text>"));
        assert!(html.contains("1 of the shown rounds report humidity in another unit"));
        let humidity = &html[html.find("id=\"chart-humidity\"").unwrap()..];
        let humidity = &humidity[..humidity.find("</svg>").unwrap()];
        assert_eq!(humidity.matches("<circle class=\"point\"").count(), 2);
        // Device 2 did not carry humidity in the latest round.
        assert!(html.contains(r#"<div class="quantities"><span data-quantity="temperature">temperature 24 Cel</span> · <span data-quantity="humidity">humidity 40 %</span></div>"#));
        assert!(html.contains(r#"<div class="quantities"><span data-quantity="temperature">temperature 22 Cel</span></div>"#));
    }

    #[test]
    fn leader_changes_missing_devices_and_a_dead_sensor_are_marked() {
        // Newest first, as the store lists them: device 3 stops after round 2, the leader
        // changes from 1 to 2 at round 3.
        let rounds = vec![
            round(4, "2", &[("1", 80.4), ("2", 79.1)]),
            round(3, "2", &[("1", 80.3), ("2", 79.2)]),
            round(2, "1", &[("1", 80.2), ("2", 79.3), ("3", 81.0)]),
            round(1, "1", &[("1", 80.1), ("2", 79.4), ("3", 81.1)]),
        ];
        let html = render("h", &rounds, &[]);
        assert_eq!(html.matches("class=\"mark-leader\"").count(), 1, "{html}");
        assert!(html.contains("<g class=\"mark-leader\" data-round=\"3\">"));
        assert!(html.contains("leader 1 → 2"));
        assert_eq!(html.matches("class=\"point missing\"").count(), 2);
        assert!(html.contains("2 of 3 devices; missing: 3"));
        // Five time labels, HH:MM:SS.
        assert_eq!(html.matches("class=\"axis time\"").count(), 5);
        assert!(
            html.contains(">16:26:20<"),
            "the first round's time: {html}"
        );
        // The dead sensor's card comes first and says so.
        let first = html.find("data-device=").unwrap();
        assert!(html[first..].starts_with("data-device=\"3\""), "{html}");
        assert!(html.contains("class=\"device stale\" data-device=\"3\""));
        assert!(html.contains("not in the latest round · missed 2 of 4 rounds"));
        assert!(
            html.contains("<div class=\"value\">81 °C</div>"),
            "its last value"
        );
        assert_eq!(html.matches("<svg class=\"spark\"").count(), 3);
        assert!(!html.contains("0000000"), "no float noise: {html}");
    }

    #[test]
    fn rollout_transitions_and_shadow_values_are_marked() {
        use fleetmeter_wire::{RolloutMark, Shadow};
        let mark = |state: &str| RolloutMark {
            id: 2,
            kind: "aggregator".into(),
            plugin: "median@0.1.0".into(),
            state: state.into(),
        };
        let mut rounds = vec![
            round(4, "1", &[("1", 80.4), ("2", 79.1)]),
            round(3, "1", &[("1", 80.3), ("2", 79.2)]),
            round(2, "1", &[("1", 80.2), ("2", 79.3)]),
            round(1, "1", &[("1", 80.1), ("2", 79.4)]),
        ];
        rounds[2].rollout = Some(mark("canary"));
        rounds[2].shadow = Some(Shadow {
            aggregator: "median<b>@0.1.0".into(),
            value: Some(79.75),
            error: None,
        });
        rounds[1].rollout = Some(mark("canary"));
        rounds[0].rollout = Some(mark("promoted"));
        let html = render("h", &rounds, &[]);
        assert_eq!(html.matches("class=\"mark-rollout\"").count(), 2, "{html}");
        assert!(html.contains("<g class=\"mark-rollout\" data-round=\"2\">"));
        assert!(
            html.contains("aggregator rollout 2 of median@0.1.0 is promoted"),
            "{html}"
        );
        assert_eq!(html.matches("<circle class=\"shadow\"").count(), 1);
        assert!(
            html.contains("median&lt;b&gt;@0.1.0 in shadow: 79.75"),
            "{html}"
        );
    }

    #[test]
    fn a_huge_fleet_shows_the_devices_that_missed_most_and_counts_the_rest() {
        let readings: Vec<(String, f64)> = (0..1000).map(|i| (format!("d{i:04}"), 80.0)).collect();
        let all: Vec<(&str, f64)> = readings.iter().map(|(d, v)| (d.as_str(), *v)).collect();
        let rounds = vec![round(2, "d0000", &all[1..]), round(1, "d0000", &all)];
        let html = render("h", &rounds, &[]);
        assert_eq!(html.matches("class=\"device").count(), PANEL_DEVICES);
        assert!(html.contains("class=\"device stale\" data-device=\"d0000\""));
        assert!(html.contains(&format!("and {} more devices", 1000 - PANEL_DEVICES)));
        assert!(html.contains("missing: d0000"));
    }

    #[test]
    fn rounds_that_published_nothing_and_a_restarted_state_are_marked_in_the_table() {
        let r = |n| round(n, "1", &[("1", 20.0)]);
        let rounds = vec![r(17_650_000_000), r(9), r(7), r(4), r(3)];
        let html = render("h", &rounds, &[]);
        assert!(html.contains("rounds 5 to 6: nothing published"), "{html}");
        assert!(html.contains("round 8: nothing published"));
        assert!(html.contains("round numbers jump from 9 to 17650000000"));
        assert_eq!(html.matches("class=\"gap\"").count(), 3);
    }
}
