//! `fleetmeter plugin inspect|run|aggregate`: the plugin author's tools (and, in `ship`,
//! shipping a plugin to the fleet).

use std::{
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use clap::{Args, Subcommand};

pub use super::engine_args::EngineArgs;
use super::engine_args::{engine, locate, parse_key_value};
use crate::plugin::{
    self, AggregatorPlugin, CallError, DirGrant, Grants, Limits, PluginSettings, Quantity, Reading,
    SensorPlugin,
    network::{Endpoint, Origin},
};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    #[command(flatten)]
    Ship(super::ship::ShipCommand),
    /// Show what a plugin file is: world, contract version, metadata, exports, imports,
    /// size and sha256. Exits 1 if the agent would refuse to load it, saying why.
    Inspect {
        /// A .wasm file, or the name of a plugin in --plugin-dir.
        file: String,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Load a sensor and take samples, one value per line on stdout. Exits 1 if any sample
    /// failed (each failure is reported on stderr; the run goes on).
    Run {
        /// A .wasm file, or the name of a plugin in --plugin-dir.
        file: String,
        /// How many samples to take.
        #[arg(long, short = 'n', default_value_t = 5)]
        samples: u32,
        /// Pause between samples, in milliseconds.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// Plugin configuration, as in agent.toml (repeatable): `--config min=70`.
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
        /// Grant a host directory read-only (repeatable): `--dir /sys/class/thermal`, or
        /// `--dir HOST:GUEST` to show it at another path inside the sandbox.
        #[arg(long = "dir", value_name = "HOST[:GUEST]", value_parser = DirGrant::parse)]
        dirs: Vec<DirGrant>,
        /// Set an environment variable inside the sandbox (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        env: Vec<(String, String)>,
        /// Let the sensor open TCP connections to HOST:PORT (repeatable): `--connect
        /// 10.0.0.5:502`. A name is resolved once, when the sensor loads, and only the
        /// addresses it resolved to are allowed.
        #[arg(long = "connect", value_name = "HOST:PORT", value_parser = Endpoint::parse)]
        connect: Vec<Endpoint>,
        /// Let the sensor send HTTP requests to an origin (repeatable): `--http
        /// http://10.0.0.7:8080`. Redirects to other origins are refused like any other.
        #[arg(long = "http", value_name = "ORIGIN", value_parser = Origin::parse)]
        http: Vec<Origin>,
        /// Open every address (TCP, UDP, any host) to the sensor: for experiments on your
        /// own machine only (`fleetmeter run` refuses it unless allow_any_network = true).
        #[arg(long)]
        network: bool,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Load an aggregator and aggregate the given values; prints the result (`NAME=VALUE` per
    /// quantity when the samples carry several), or `none`.
    Aggregate {
        /// A .wasm file, or the name of a plugin in --plugin-dir.
        file: String,
        /// Plugin configuration (repeatable): `--config fraction=0.2`.
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
        /// The readings: `VALUE` (device ids 1, 2, ... are given in order), `DEVICE=VALUE`, or
        /// a sample of several quantities, `DEVICE=NAME:VALUE[:UNIT],NAME:VALUE[:UNIT]…`
        /// (`1=t:21.5:Cel,rh:40:%`).
        #[arg(required = true, allow_negative_numbers = true, value_name = "VALUE")]
        values: Vec<String>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

/// Sandbox limits for one call.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Time limit of one call, in milliseconds.
    #[arg(long, default_value_t = Limits::default().timeout_ms)]
    pub timeout_ms: u64,
    /// Fuel budget of one call (roughly, WebAssembly instructions); off by default.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Memory cap, in MiB.
    #[arg(long, default_value_t = Limits::default().max_memory_mib)]
    pub max_memory_mib: u64,
}

impl LimitArgs {
    pub(super) fn limits(&self) -> Limits {
        Limits {
            timeout_ms: self.timeout_ms,
            fuel: self.fuel,
            max_memory_mib: self.max_memory_mib,
            ..Limits::default()
        }
    }
}

/// Plugin calls are futures under a deadline: they run on a small runtime of their own.
pub(super) fn run(command: PluginCommand) -> Result<ExitCode> {
    super::block_on(run_async(command))
}

async fn run_async(command: PluginCommand) -> Result<ExitCode> {
    match command {
        PluginCommand::Ship(command) => super::ship::run(command).await,
        PluginCommand::Inspect { file, engine: args } => {
            let path = locate(&file, &args)?;
            let inspection = plugin::inspect(&engine(&args, false)?, &path).await?;
            print_inspection(&inspection)?;
            Ok(match inspection.problem {
                Some(_) => ExitCode::FAILURE,
                None => ExitCode::SUCCESS,
            })
        }
        PluginCommand::Run {
            file,
            samples,
            interval_ms,
            config,
            dirs,
            env,
            connect,
            http,
            network,
            limits,
            engine: args,
        } => {
            let path = locate(&file, &args)?;
            let settings = PluginSettings {
                config,
                limits: limits.limits(),
                grants: Grants {
                    dirs,
                    env,
                    connect,
                    http,
                    network,
                },
            };
            let engine = engine(&args, settings.limits.fuel.is_some())?;
            let mut sensor = SensorPlugin::load(&engine, &path, settings).await?;
            run_samples(&mut sensor, samples, Duration::from_millis(interval_ms)).await
        }
        PluginCommand::Aggregate {
            file,
            config,
            values,
            limits,
            engine: args,
        } => {
            let path = locate(&file, &args)?;
            let readings = parse_readings(&values)?;
            let settings = PluginSettings {
                config,
                limits: limits.limits(),
                grants: Grants::default(),
            };
            let engine = engine(&args, settings.limits.fuel.is_some())?;
            let mut aggregator = AggregatorPlugin::load(&engine, &path, settings).await?;
            let published = aggregator.aggregate(&readings).await?;
            let several = crate::plugin::quantity_order(&readings).len() > 1;
            match published.as_slice() {
                [] => println!("none"),
                [(_, value)] if !several => println!("{value}"),
                published => {
                    for (name, value) in published {
                        println!("{name}={value}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_readings(values: &[String]) -> Result<Vec<Reading>> {
    values
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let (device, sample) = match raw.split_once('=') {
                Some((device, sample)) => (device.to_owned(), sample),
                None => ((i + 1).to_string(), raw.as_str()),
            };
            let number = |value: &str| -> Result<f64> {
                let value: f64 = value
                    .trim()
                    .parse()
                    .with_context(|| format!("reading `{raw}`: `{value}` is not a number"))?;
                ensure!(
                    value.is_finite(),
                    "reading `{raw}`: the value must be finite"
                );
                Ok(value)
            };
            let quantities = if sample.contains(':') {
                sample
                    .split(',')
                    .map(|part| {
                        let mut fields = part.splitn(3, ':');
                        let name = fields.next().unwrap_or_default().trim();
                        let value = number(fields.next().with_context(|| {
                            format!("reading `{raw}`: `{part}` is not NAME:VALUE[:UNIT]")
                        })?)?;
                        Ok(Quantity::new(
                            name,
                            value,
                            fields.next().unwrap_or_default(),
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?
            } else {
                vec![Quantity::new("value", number(sample)?, "")]
            };
            crate::wire::check_sample(&quantities).with_context(|| format!("reading `{raw}`"))?;
            Ok(Reading { device, quantities })
        })
        .collect()
}

async fn run_samples(
    sensor: &mut SensorPlugin,
    samples: u32,
    interval: Duration,
) -> Result<ExitCode> {
    let meta = sensor.metadata().clone();
    eprintln!(
        "{} {} (contract {}) — {} sample(s){}",
        meta.name,
        meta.version,
        sensor.contract().version(),
        samples,
        if meta.unit.is_empty() {
            String::new()
        } else {
            format!(", unit {}", meta.unit)
        }
    );
    let mut stdout = std::io::stdout().lock();
    // Each quantity's values, in the order they first appear.
    let mut values: Vec<(String, String, Vec<f64>)> = Vec::new();
    let mut ok = 0_usize;
    let mut failed = 0_u32;
    for n in 1..=samples {
        if n > 1 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        let started = Instant::now();
        match sensor.sample().await {
            Ok(sample) => {
                ok += 1;
                // One quantity: the bare value (as before quantities); several: NAME=VALUE.
                if let [one] = sample.as_slice() {
                    writeln!(stdout, "{}", one.value)?;
                } else {
                    let line: Vec<String> = sample
                        .iter()
                        .map(|q| format!("{}={}", q.name, q.value))
                        .collect();
                    writeln!(stdout, "{}", line.join(" "))?;
                }
                for q in sample {
                    match values.iter_mut().find(|(name, _, _)| *name == q.name) {
                        Some((_, _, seen)) => seen.push(q.value),
                        None => values.push((q.name, q.unit, vec![q.value])),
                    }
                }
            }
            Err(err) => {
                failed += 1;
                eprintln!("sample {n}: {err}");
                if let CallError::BackingOff { remaining, .. } = err {
                    // Wait the back-off out, as the agent would at its next round.
                    tokio::time::sleep(remaining.saturating_sub(started.elapsed())).await;
                }
            }
        }
    }
    stdout.flush()?;
    let stats = sensor.stats();
    let several = values.len() > 1;
    for (name, unit, seen) in &values {
        let min = seen.iter().copied().fold(f64::INFINITY, f64::min);
        let max = seen.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = seen.iter().sum::<f64>() / seen.len() as f64;
        let unit = if unit.is_empty() {
            String::new()
        } else {
            format!(" {unit}")
        };
        if several {
            eprintln!("{name}{unit}: min {min}, max {max}, mean {mean:.3}");
        } else {
            eprintln!("min {min}, max {max}, mean {mean:.3}");
        }
    }
    eprintln!(
        "{} ok, {} failed; {} instance(s), {:.1?} inside the plugin",
        ok, failed, stats.instantiations, stats.busy
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_inspection(i: &plugin::Inspection) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "file:      {}", i.path.display())?;
    writeln!(out, "size:      {} bytes", i.size)?;
    writeln!(out, "sha256:    {}", i.sha256)?;
    match (&i.kind, &i.contract) {
        (Some(kind), Some(version)) => writeln!(
            out,
            "world:     {kind} ({}@{version})",
            plugin::CONTRACT_PACKAGE
        )?,
        _ => writeln!(out, "world:     none")?,
    }
    if let Some(meta) = &i.metadata {
        writeln!(out, "plugin:    {} {}", meta.name, meta.version)?;
        if !meta.unit.is_empty() {
            writeln!(out, "unit:      {}", meta.unit)?;
        }
        if !meta.description.is_empty() {
            writeln!(out, "about:     {}", meta.description)?;
        }
    }
    write_list(&mut out, "exports:", &i.exports)?;
    write_list(&mut out, "imports:", &i.imports)?;
    if i.kind == Some(plugin::PluginKind::Sensor) {
        write_list(&mut out, "may use:", &plugin::network::uses(&i.imports))?;
    }
    if let Some(problem) = &i.problem {
        writeln!(out, "problem:   {problem}")?;
    }
    Ok(())
}

fn write_list(out: &mut impl Write, label: &str, items: &[String]) -> Result<()> {
    if items.is_empty() {
        writeln!(out, "{label:<10} none")?;
    }
    for (n, item) in items.iter().enumerate() {
        let label = if n == 0 { label } else { "" };
        writeln!(out, "{label:<10} {item}")?;
    }
    Ok(())
}
