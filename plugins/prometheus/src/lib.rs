//! Sensor: the value of a series on a Prometheus endpoint (the text exposition format every
//! exporter serves: node_exporter, an instrument's own `/metrics`).
//!
//! The sandbox sends no request unless the agent grants the endpoint's origin:
//! `[plugins.grants] http = ["http://10.0.0.8:9100"]` (or `--http http://10.0.0.8:9100`).
//!
//! Config:
//! - `url`: the endpoint, e.g. `http://10.0.0.8:9100/metrics` (required);
//! - `metric`: the metric name, e.g. `node_hwmon_temp_celsius` (required);
//! - `labels`: `k=v,k2=v2`, every one must match (default: none);
//! - `reduce`: what to do with the matching series: `only` (default: exactly one must
//!   match, else an error listing them), `sum` or `avg`;
//! - `by`: a label whose values name quantities: each value of it among the matching series
//!   is one quantity of the sample (`by = "sensor"` turns `temp{sensor="cpu"}` and
//!   `temp{sensor="board"}` into quantities `cpu` and `board`), its series reduced as
//!   `reduce` says; at most 16, each value a quantity name (letters, digits, `-`, `_`, `.`).
//!   Without it the sample is one value, named `prometheus`;
//! - `unit`: the values' unit, e.g. `Cel` (default: none);
//! - `max_body_kib`: the largest page read, 1 to 4096 (default 1024);
//! - `scale` (1) and `offset` (0): the value is `raw * scale + offset`.

use fleetmeter_sdk::{http, prelude::*};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Reduce {
    Only,
    Sum,
    Avg,
}

pub struct Prometheus {
    page: http::Page,
    query: Query,
    /// The label whose values name the quantities.
    by: Option<String>,
    unit: String,
    calibration: Calibration,
}

/// Which series, and how they become one value.
#[derive(Clone, Debug, PartialEq)]
struct Query {
    metric: String,
    labels: Vec<(String, String)>,
    reduce: Reduce,
}

impl MultiSensor for Prometheus {
    fn new(config: &Config) -> Result<Self> {
        let mut known = vec!["metric", "labels", "reduce", "by", "unit"];
        known.extend(http::PAGE_KEYS);
        known.extend(fleetmeter_sdk::calibration::KEYS);
        config.allow_only(&known)?;
        let page = http::Page::from_config(config, "http://10.0.0.8:9100/metrics", 1024)?;
        let metric = config
            .get("metric")
            .ok_or_else(|| Error::new("config `metric` is required, e.g. node_hwmon_temp_celsius"))?
            .to_owned();
        if metric.is_empty()
            || !metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            bail!("config `metric`: `{metric}` is not a metric name");
        }
        let labels = match config.get("labels") {
            None | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|pair| {
                    pair.split_once('=')
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
                        .filter(|(k, _)| !k.is_empty())
                        .ok_or_else(|| Error::new(format!("config `labels`: `{pair}` is not k=v")))
                })
                .collect::<Result<_>>()?,
        };
        let reduce = match config.get("reduce").unwrap_or("only") {
            "only" => Reduce::Only,
            "sum" => Reduce::Sum,
            "avg" => Reduce::Avg,
            other => bail!("config `reduce`: `{other}` is not only, sum or avg"),
        };
        let by = config.get("by").map(str::to_owned);
        if let Some(by) = &by
            && (by.is_empty() || !by.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            bail!("config `by`: `{by}` is not a label name");
        }
        let unit = config.get("unit").unwrap_or_default().to_owned();
        if unit.chars().count() > 16 || unit.chars().any(char::is_control) {
            bail!("config `unit`: at most 16 printable characters, e.g. Cel");
        }
        Ok(Self {
            page,
            query: Query {
                metric,
                labels,
                reduce,
            },
            by,
            unit,
            calibration: Calibration::from_config(config)?,
        })
    }

    fn sample(&mut self) -> Result<Vec<Quantity>> {
        let page = http::get(
            &self.page.url,
            &[("Accept".to_owned(), "text/plain".to_owned())],
            self.page.max_body,
        )?;
        if !(200..300).contains(&page.status) {
            bail!("{}: HTTP {}", self.page.url, page.status);
        }
        let text = String::from_utf8_lossy(&page.body);
        let at = |e: Error| Error::new(format!("{}: {e}", self.page.url));
        let values = match &self.by {
            None => vec![(
                env!("CARGO_PKG_NAME").to_owned(),
                self.query.evaluate(&text, None).map_err(at)?,
            )],
            Some(by) => self.query.evaluate_by(&text, by).map_err(at)?,
        };
        values
            .into_iter()
            .map(|(name, raw)| {
                Ok(Quantity::new(
                    name,
                    self.calibration.apply(raw)?,
                    &self.unit,
                ))
            })
            .collect()
    }
}

impl Query {
    /// Each value of label `by` among the matching series, in page order, with its series
    /// reduced to one value.
    fn evaluate_by(&self, text: &str, by: &str) -> Result<Vec<(String, f64)>> {
        let mut names: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some((name, labels, _)) = parse_sample(line)
                && name == self.metric
                && let Some((_, value)) = labels.iter().find(|(k, _)| k == by)
                && !names.contains(value)
            {
                names.push(value.clone());
            }
        }
        if names.len() > fleetmeter_sdk::MAX_QUANTITIES {
            bail!(
                "{} values of label `{by}` on {}: at most {} quantities per sample (narrow `labels`)",
                names.len(),
                self.metric,
                fleetmeter_sdk::MAX_QUANTITIES
            );
        }
        names
            .into_iter()
            .map(|name| {
                fleetmeter_sdk::check_quantity_name("by", &name)?;
                let value = self.evaluate(text, Some((by, &name)))?;
                Ok((name, value))
            })
            .collect()
    }

    /// The matching series (also matching `extra`, a label and its value), reduced.
    fn evaluate(&self, text: &str, extra: Option<(&str, &str)>) -> Result<f64> {
        let mut matched: Vec<(String, f64)> = Vec::new();
        for line in text.lines() {
            let Some((name, labels, value)) = parse_sample(line) else {
                continue;
            };
            if name != self.metric {
                continue;
            }
            if self
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .chain(extra)
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            {
                let shown = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect::<Vec<_>>()
                    .join(",");
                matched.push((shown, value));
            }
        }
        let wanted = || {
            let labels = self
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .chain(extra)
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect::<Vec<_>>()
                .join(",");
            format!("{}{{{labels}}}", self.metric)
        };
        match (self.reduce, matched.len()) {
            (_, 0) => bail!("no series {} on the page", wanted()),
            (Reduce::Only, 1) => Ok(matched[0].1),
            (Reduce::Only, n) => {
                let some: Vec<String> = matched
                    .iter()
                    .take(5)
                    .map(|(l, _)| format!("{{{l}}}"))
                    .collect();
                bail!(
                    "{n} series match {} (e.g. {}): narrow `labels`, or set `reduce` to sum or avg",
                    wanted(),
                    some.join(" ")
                )
            }
            (Reduce::Sum, _) => Ok(matched.iter().map(|(_, v)| v).sum()),
            (Reduce::Avg, n) => Ok(matched.iter().map(|(_, v)| v).sum::<f64>() / n as f64),
        }
    }
}

/// A series' labels, in the order of the page.
type Labels = Vec<(String, String)>;

/// One sample line: `name{k="v",...} value [timestamp]`; comments and malformed lines are
/// `None`.
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        let end;
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    end = i;
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        rest = &inner[end + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    value.is_finite().then_some((name, labels, value))
}

export_multi_sensor!(Prometheus);

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP node_hwmon_temp_celsius Hardware monitor for temperature (input)
# TYPE node_hwmon_temp_celsius gauge
node_hwmon_temp_celsius{chip="platform_coretemp_0",sensor="temp1"} 45
node_hwmon_temp_celsius{chip="platform_coretemp_0",sensor="temp2"} 47.5
node_load1 0.25
weird{path="a \"q\" , b"} 3 1700000000000
"#;

    fn query(metric: &str, labels: &[(&str, &str)], reduce: Reduce) -> Query {
        Query {
            metric: metric.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            reduce,
        }
    }

    #[test]
    fn evaluates_series() {
        assert_eq!(
            query("node_load1", &[], Reduce::Only)
                .evaluate(PAGE, None)
                .unwrap(),
            0.25
        );
        assert_eq!(
            query(
                "node_hwmon_temp_celsius",
                &[("sensor", "temp2")],
                Reduce::Only
            )
            .evaluate(PAGE, None)
            .unwrap(),
            47.5
        );
        assert_eq!(
            query("node_hwmon_temp_celsius", &[], Reduce::Sum)
                .evaluate(PAGE, None)
                .unwrap(),
            92.5
        );
        assert_eq!(
            query("node_hwmon_temp_celsius", &[], Reduce::Avg)
                .evaluate(PAGE, None)
                .unwrap(),
            46.25
        );
        assert_eq!(
            query("weird", &[("path", "a \"q\" , b")], Reduce::Only)
                .evaluate(PAGE, None)
                .unwrap(),
            3.0
        );
        let err = query("node_hwmon_temp_celsius", &[], Reduce::Only)
            .evaluate(PAGE, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2 series match") && err.contains("temp2"),
            "{err}"
        );
        let err = query("node_nope", &[], Reduce::Only)
            .evaluate(PAGE, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no series node_nope"), "{err}");
    }

    #[test]
    fn each_value_of_the_by_label_is_a_quantity() {
        let q = query("node_hwmon_temp_celsius", &[], Reduce::Only);
        assert_eq!(
            q.evaluate_by(PAGE, "sensor").unwrap(),
            [("temp1".to_owned(), 45.0), ("temp2".to_owned(), 47.5)]
        );
        // A label value that is not a quantity name is refused, named.
        let err = query("weird", &[], Reduce::Only)
            .evaluate_by(PAGE, "path")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a quantity name"), "{err}");
        let many: String = (0..17).map(|i| format!("m{{s=\"q{i}\"}} {i}\n")).collect();
        let err = query("m", &[], Reduce::Only)
            .evaluate_by(&many, "s")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 16"), "{err}");
    }

    #[test]
    fn config_is_checked() {
        for (pairs, needle) in [
            (vec![("metric", "m")], "url"),
            (vec![("url", "http://h/metrics")], "metric"),
            (
                vec![("url", "http://h/metrics"), ("metric", "a b")],
                "metric",
            ),
            (
                vec![
                    ("url", "http://h/metrics"),
                    ("metric", "m"),
                    ("labels", "nope"),
                ],
                "labels",
            ),
            (
                vec![
                    ("url", "http://h/metrics"),
                    ("metric", "m"),
                    ("reduce", "max"),
                ],
                "reduce",
            ),
        ] {
            let err = Prometheus::new(&Config::new(pairs))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
