//! Rounds of several quantities (version 4): one chart per quantity, its unit on the value
//! axis, and each device's quantities on its card. A quantity whose unit changed within the
//! shown rounds is charted in its newest unit only (never two units on one axis), the other
//! rounds counted under the chart.

use std::fmt::Write;

use fleetmeter_wire::Shown;

use super::{H, Scale, W, axes, escape};
use crate::round::Round;

/// The quantities to chart: those of the shown rounds that carry several, the newest round's
/// order first.
fn names(rounds: &[Round]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for r in rounds {
        let Some(quantities) = r.quantities.as_ref().filter(|q| q.len() > 1) else {
            continue;
        };
        for q in quantities {
            if !names.contains(&q.name.as_str()) {
                names.push(&q.name);
            }
        }
    }
    names
}

/// One chart per quantity, when the shown rounds carry several (`rounds`: newest first).
pub(super) fn charts(html: &mut String, rounds: &[Round]) {
    let names = names(rounds);
    if names.is_empty() {
        return;
    }
    html.push_str("<h2>Quantities</h2>\n<div id=\"quantities\">\n");
    for name in names {
        chart(html, rounds, name);
    }
    html.push_str("</div>\n");
}

/// `round`'s quantity `name`.
fn found<'a>(round: &'a Round, name: &str) -> Option<&'a crate::round::RoundQuantity> {
    round.quantities.iter().flatten().find(|q| q.name == name)
}

fn chart(html: &mut String, rounds: &[Round], name: &str) {
    let found = |r| found(r, name);
    let unit = rounds
        .iter()
        .find_map(found)
        .map_or("", |q| q.unit.as_str());
    // Oldest first: (round, ts, value) in the newest unit.
    let mut other_unit = 0;
    let mut points: Vec<(u64, u64, f64)> = Vec::new();
    for r in rounds.iter().rev() {
        match found(r) {
            Some(q) if q.unit != unit => other_unit += 1,
            Some(q) => points.extend(q.value.map(|v| (r.round, r.ts, v))),
            None => {}
        }
    }
    let heading = if unit.is_empty() {
        escape(name)
    } else {
        format!(
            "{} <span class=\"unit\">({})</span>",
            escape(name),
            escape(unit)
        )
    };
    let _ = writeln!(html, "<h3 class=\"quantity\">{heading}</h3>");
    if points.is_empty() {
        html.push_str("<p class=\"legend\">no value published in the shown rounds</p>\n");
        return;
    }
    let scale = Scale::of(points.iter().map(|&(_, ts, v)| (ts, v)));
    let (x, y) = (|ts| scale.x(ts), |v| scale.y(v));
    let label = if unit.is_empty() {
        format!("{name} per round, over time (UTC)")
    } else {
        format!("{name} in {unit} per round, over time (UTC)")
    };
    let _ = writeln!(
        html,
        r#"<svg class="quantity-chart" id="chart-{id}" data-quantity="{id}" data-unit="{u}" viewBox="0 0 {W} {H}" preserveAspectRatio="xMidYMid meet" role="img" aria-label="{l}">"#,
        id = escape(name),
        u = escape(unit),
        l = escape(&label)
    );
    axes(html, &scale, unit);
    let line: Vec<String> = points
        .iter()
        .map(|(_, ts, v)| format!("{:.1},{:.1}", x(*ts), y(*v)))
        .collect();
    let _ = writeln!(
        html,
        r#"<polyline class="line" points="{}"/>"#,
        line.join(" ")
    );
    for (round, ts, v) in &points {
        let _ = writeln!(
            html,
            r#"<circle class="point" data-round="{round}" cx="{:.1}" cy="{:.1}" r="3"><title>round {round}: {}</title></circle>"#,
            x(*ts),
            y(*v),
            escape(&format!("{name} {} {unit}", Shown(*v)))
        );
    }
    html.push_str("</svg>\n");
    if other_unit > 0 {
        let _ = writeln!(
            html,
            "<p class=\"legend\">{other_unit} of the shown rounds report {} in another unit: not charted here</p>",
            escape(name)
        );
    }
}

/// Device `device`'s quantities in `round`, for its card, when the round carries several.
pub(super) fn device_line(round: &Round, device: &str) -> Option<String> {
    round.quantities.as_ref().filter(|q| q.len() > 1)?;
    let index = round.devices.iter().position(|d| d == device)?;
    let parts: Vec<String> = round
        .device_quantities(index, "")
        .iter()
        .map(|q| {
            let unit = if q.unit.is_empty() {
                String::new()
            } else {
                format!(" {}", escape(&q.unit))
            };
            format!(
                r#"<span data-quantity="{}">{} {}{unit}</span>"#,
                escape(&q.name),
                escape(&q.name),
                Shown(q.value)
            )
        })
        .collect();
    Some(format!(
        "<div class=\"quantities\">{}</div>",
        parts.join(" · ")
    ))
}
