//! `fleetmeter replay`: recompute stored rounds from the readings stored with them, with any
//! aggregator plugin, in the same sandbox as the agents, and show stored and recomputed values
//! side by side. "What would the median have said about yesterday?"

use std::{ops::RangeInclusive, process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use super::{
    engine_args::{EngineArgs, engine, locate, parse_key_value},
    plugin::LimitArgs,
};
use crate::{
    plugin::{AggregatorPlugin, Grants, PluginSettings, Reading},
    publish::read_bounded,
    text::one_line_bounded,
    wire::{MAX_ROUND_JSON, Round, Shown},
};

/// The most rounds one replay reads (one request each).
pub const MAX_ROUNDS: u64 = 10_000;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The measurements API, e.g. http://127.0.0.1:4000/ (reads need no token).
    #[arg(long, env = "API_URL", value_name = "URL")]
    api: reqwest::Url,
    /// The rounds: `A..B` (both included) or one round `N`; at most 10,000.
    #[arg(long, value_name = "A..B", value_parser = parse_rounds)]
    rounds: RangeInclusive<u64>,
    /// The aggregator to recompute with: a name in --plugin-dir (`median`) or a .wasm file.
    #[arg(long, value_name = "NAME")]
    aggregator: String,
    /// Its configuration (repeatable): `--config fraction=0.2`.
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    config: Vec<(String, String)>,
    /// Print JSON (every value at full precision) instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    api_tls: crate::config::ApiTlsArgs,
}

fn parse_rounds(raw: &str) -> Result<RangeInclusive<u64>, String> {
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("`{raw}`: `{s}` is not a round number (A..B, or N)"))
    };
    let (first, last) = match raw.split_once("..") {
        Some((a, b)) => (number(a)?, number(b.trim_start_matches('='))?),
        None => {
            let n = number(raw)?;
            (n, n)
        }
    };
    if first > last {
        return Err(format!("`{raw}`: the first round is after the last"));
    }
    if last - first >= MAX_ROUNDS {
        return Err(format!(
            "`{raw}`: {} rounds; at most {MAX_ROUNDS} at a time",
            last - first + 1
        ));
    }
    Ok(first..=last)
}

/// One round, as replay found it.
enum Stored {
    Round(Box<Round>),
    Missing,
}

pub(super) async fn run(args: ReplayArgs) -> Result<ExitCode> {
    let path = locate(&args.aggregator, &args.engine)?;
    let settings = PluginSettings {
        config: args.config.clone(),
        limits: args.limits.limits(),
        grants: Grants::default(),
    };
    let engine = engine(&args.engine, settings.limits.fuel.is_some())?;
    let mut aggregator = AggregatorPlugin::load(&engine, &path, settings).await?;
    let label = format!(
        "{}@{}",
        aggregator.metadata().name,
        aggregator.metadata().version
    );
    let tls = args
        .api_tls
        .read()
        .context("TLS to the API (--api-tls-*)")?;
    let http = tls.client(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
    })?;
    if !args.json {
        println!(
            "replaying rounds {}..{} from {} with {label}",
            args.rounds.start(),
            args.rounds.end(),
            args.api
        );
        println!(
            "{:>10}  {:>7}  {:>24}  {:>24}  {:>11}",
            "round",
            "devices",
            "stored",
            format!("recomputed ({})", aggregator.metadata().name),
            "difference"
        );
    }
    let (mut recomputed, mut old, mut missing) = (0, 0, 0);
    let mut out = Vec::new();
    for n in args.rounds.clone() {
        let round = match fetch(&http, &args.api, n).await? {
            Stored::Missing => {
                missing += 1;
                if args.json {
                    out.push(json!({ "round": n, "stored": null }));
                } else {
                    println!("{n:>10}  not stored");
                }
                continue;
            }
            Stored::Round(round) => round,
        };
        // Version 2 and 3 rounds carry one value per device: one quantity, `value`.
        let primary = round.primary().map_or("value", |q| q.name.as_str());
        let readings: Vec<Reading> = (0..round.devices.len())
            .map(|i| Reading {
                device: round.devices[i].clone(),
                quantities: round.device_quantities(i, primary),
            })
            .filter(|r| !r.quantities.is_empty())
            .collect();
        if readings.is_empty() {
            old += 1;
            if args.json {
                out.push(json!({
                    "round": n, "stored": round.value, "stored_aggregator": round.aggregator,
                    "recomputed": null, "why": "version 1 round: no per-device readings",
                }));
            } else {
                println!(
                    "{n:>10}  {:>7}  {:>24}  version 1 round: no per-device readings",
                    round.count,
                    stored_cell(&round)
                );
            }
            continue;
        }
        let published = aggregator
            .aggregate(&readings)
            .await
            .with_context(|| format!("{label} on round {n}"))?;
        let of = |name: &str| published.iter().find(|(q, _)| q == name).map(|(_, v)| *v);
        let value = of(primary);
        // Each quantity of a round of several: stored and recomputed.
        let several: Vec<(&str, Option<f64>, Option<f64>)> = match &round.quantities {
            Some(quantities) if quantities.len() > 1 => quantities
                .iter()
                .map(|q| (q.name.as_str(), q.value, of(&q.name)))
                .collect(),
            _ => Vec::new(),
        };
        recomputed += 1;
        if args.json {
            let quantities: Vec<_> = several
                .iter()
                .map(|(name, stored, again)| {
                    json!({ "quantity": name, "stored": stored, "recomputed": again })
                })
                .collect();
            out.push(json!({
                "round": n, "devices": round.devices, "values": round.values,
                "stored": round.value, "stored_aggregator": round.aggregator,
                "recomputed": value, "aggregator": label, "quantities": quantities,
            }));
        } else {
            println!(
                "{n:>10}  {:>7}  {:>24}  {}",
                round.count,
                stored_cell(&round),
                compared(value, Some(round.value))
            );
            for (name, stored, again) in several {
                let shown = stored.map_or_else(|| "none".to_owned(), |v| Shown(v).to_string());
                println!(
                    "{:>10}  {:>7}  {:>24}  {}",
                    "",
                    "",
                    one_line_bounded(&format!("{shown} ({name})"), 64),
                    compared(again, stored)
                );
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{recomputed} round(s) recomputed, {old} without per-device readings (version 1), \
             {missing} not stored"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The recomputed value and its difference from the stored one.
fn compared(again: Option<f64>, stored: Option<f64>) -> String {
    match (again, stored) {
        (Some(v), Some(stored)) => {
            let difference = v - stored;
            let sign = if difference > 0.0 { "+" } else { "" };
            format!(
                "{:>24}  {:>11}",
                Shown(v),
                format!("{sign}{}", Shown(difference))
            )
        }
        (Some(v), None) => format!("{:>24}", Shown(v)),
        (None, _) => format!("{:>24}", "none"),
    }
}

fn stored_cell(round: &Round) -> String {
    let name = round.aggregator.split('@').next().unwrap_or_default();
    one_line_bounded(&format!("{} ({name})", Shown(round.value)), 64)
}

/// `GET {api}/api/v1/rounds/{n}`. The answer is checked as the API checks a round: an API (or
/// whatever answers at that URL) is outside this process.
async fn fetch(http: &reqwest::Client, api: &reqwest::Url, n: u64) -> Result<Stored> {
    let url = api
        .join(&format!("api/v1/rounds/{n}"))
        .with_context(|| format!("{api} is not a base URL"))?;
    let response = http
        .get(url.clone())
        .send()
        .await
        .with_context(|| format!("GET {url}: the API did not answer"))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(Stored::Missing);
    }
    let body = read_bounded(response, MAX_ROUND_JSON + 1).await;
    if !status.is_success() {
        bail!(
            "GET {url}: {status}: {}",
            one_line_bounded(body.trim(), 512)
        );
    }
    if body.len() > MAX_ROUND_JSON {
        bail!("GET {url}: the answer is larger than any valid round ({MAX_ROUND_JSON} bytes)");
    }
    let round: Round = serde_json::from_str(&body)
        .with_context(|| format!("GET {url}: the answer is not a round"))?;
    round
        .validate()
        .with_context(|| format!("GET {url}: the answer is not a valid round"))?;
    if round.round != n {
        bail!("GET {url}: the answer is round {}, not {n}", round.round);
    }
    Ok(Stored::Round(Box::new(round)))
}

#[cfg(test)]
mod tests {
    use super::parse_rounds;

    #[test]
    fn rounds_are_a_range_or_one() {
        assert_eq!(parse_rounds("3..7"), Ok(3..=7));
        assert_eq!(parse_rounds("3..=7"), Ok(3..=7));
        assert_eq!(parse_rounds("12"), Ok(12..=12));
        assert!(parse_rounds("7..3").unwrap_err().contains("after the last"));
        assert!(parse_rounds("a..3").unwrap_err().contains("`a`"));
        assert!(parse_rounds("1..10000").is_ok());
        assert!(
            parse_rounds("1..10001")
                .unwrap_err()
                .contains("at most 10000")
        );
    }
}
