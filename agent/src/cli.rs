//! The `fleetmeter` command line. `main.rs` parses [`Cli`], sets up logging and calls
//! [`run`]; everything else lives here so that it can be tested.

use std::{
    io::Write,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::plugin::{
    self, AggregatorPlugin, CallError, DirGrant, EngineOptions, Grants, Limits, PluginEngine,
    PluginSettings, Reading, SensorPlugin,
};

/// A fleet of measuring devices coordinated through ZooKeeper, with sensors and aggregation
/// policies as sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "fleetmeter", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr. Set RUST_LOG (e.g. `debug`, `plugin=trace`) for more detail.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FLEETMETER_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a measuring device: sample every round, and lead the fleet when elected.
    ///
    /// Configuration: built-in defaults < agent.toml (./agent.toml, or --config) <
    /// environment < flags. SIGTERM or ctrl-c closes the ZooKeeper session (the next leader
    /// takes over at once) and exits 0.
    Run(RunArgs),
    /// Show the fleet: leader, members with their latest reading, round, counter, outbox
    /// backlog and dynamic configuration.
    Status {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running agent whether it is healthy (GET /healthz): prints its answer and exits
    /// 0 when healthy, 1 when not, 2 when it does not answer. For container healthchecks.
    Health {
        /// The agent's metrics address (its [telemetry] listen; 0.0.0.0 means this host).
        #[arg(
            long,
            env = "FLEETMETER_METRICS_LISTEN",
            default_value = crate::config::DEFAULT_METRICS_LISTEN,
            value_name = "ADDR"
        )]
        address: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
    /// Read or change the fleet's dynamic configuration (sampling_period, api_url,
    /// aggregator). Values are validated as the agents do; every agent applies a change at
    /// its next round (the API URL at the next publish).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Work with plugin files: inspect them, try a sensor, try an aggregator.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

/// Which fleet.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// ZooKeeper hosts, host:port[,host:port...].
    #[arg(
        long = "zk",
        env = "ZK_HOST",
        default_value = "127.0.0.1:2181",
        value_name = "HOSTS"
    )]
    pub zk: String,
    /// Root node of the fleet.
    #[arg(
        long,
        env = "FLEETMETER_ROOT",
        default_value = "/fleetmeter",
        value_name = "PATH"
    )]
    pub root: String,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print one key's value, or every key's.
    Get {
        /// sampling_period, api_url or aggregator.
        key: Option<String>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Validate and write one key.
    Set {
        /// sampling_period (seconds), api_url (http(s) URL) or aggregator (plugin name).
        key: String,
        value: String,
        /// Where aggregator names are checked, when the directory exists here.
        #[arg(long, env = "FLEETMETER_PLUGIN_DIR", default_value = "plugins/dist")]
        plugin_dir: PathBuf,
        #[command(flatten)]
        fleet: FleetArgs,
    },
}

impl Command {
    /// The log filter used when RUST_LOG is not set.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Run(_) => "info",
            Command::Status { .. } | Command::Config(_) | Command::Health { .. } => "warn",
            // Plugin authors want their plugin's own log lines, not the agent's chatter.
            Command::Plugin(_) => "warn,plugin=info",
        }
    }
}

/// `fleetmeter run`. Every value is optional here: what is missing comes from agent.toml or
/// the defaults (see agent.toml for all keys).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// This device's id (also --id, or DEVICE_ID).
    #[arg(value_name = "ID", env = "DEVICE_ID")]
    pub id: Option<String>,
    /// This device's id, as a flag.
    #[arg(long = "id", value_name = "ID", conflicts_with = "id")]
    pub id_flag: Option<String>,
    /// Configuration file [default: ./agent.toml when it exists].
    #[arg(long, env = "FLEETMETER_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// ZooKeeper hosts, host:port[,host:port...].
    #[arg(long = "zk", env = "ZK_HOST", value_name = "HOSTS")]
    pub zk: Option<String>,
    /// The measurements API's base URL.
    #[arg(long, env = "API_URL", value_name = "URL")]
    pub api_url: Option<String>,
    /// Seconds between rounds.
    #[arg(long, env = "SAMPLING_PERIOD", value_name = "SECONDS")]
    pub period: Option<String>,
    /// Root node of this fleet in ZooKeeper.
    #[arg(long, env = "FLEETMETER_ROOT", value_name = "PATH")]
    pub root: Option<String>,
    /// Sensor plugin (a name in the plugin directory, or a path).
    #[arg(long, env = "FLEETMETER_SENSOR", value_name = "PLUGIN")]
    pub sensor: Option<String>,
    /// Aggregator plugin name.
    #[arg(long, env = "FLEETMETER_AGGREGATOR", value_name = "NAME")]
    pub aggregator: Option<String>,
    /// Directory of plugins.
    #[arg(long, env = "FLEETMETER_PLUGIN_DIR", value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Bearer token for the API's writes.
    #[arg(
        long,
        env = "FLEETMETER_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub api_token: Option<String>,
    /// `json` (idempotent POST) or `query` (the original GET /nuevo?dato=).
    #[arg(long, env = "FLEETMETER_PUBLISH_FORMAT", value_name = "FORMAT")]
    pub publish_format: Option<String>,
    /// Where to serve /metrics and /healthz: IP:PORT, :PORT, or `off`
    /// [default: 0.0.0.0:9464].
    #[arg(long, env = "FLEETMETER_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Only check the configuration (file, environment and flags, as `run` would read
    /// them), print what the agent would run with, and exit: 0 when valid, 1 when not.
    /// Nothing is connected to.
    #[arg(long)]
    pub check: bool,
}

impl RunArgs {
    pub fn overrides(&self) -> crate::config::Overrides {
        crate::config::Overrides {
            id: self.id_flag.clone().or_else(|| self.id.clone()),
            zk_hosts: self.zk.clone(),
            root: self.root.clone(),
            api_url: self.api_url.clone(),
            period: self.period.clone(),
            sensor: self.sensor.clone(),
            aggregator: self.aggregator.clone(),
            plugin_dir: self.plugin_dir.clone(),
            token: self.api_token.clone(),
            format: self.publish_format.clone(),
            metrics_listen: self.metrics_listen.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
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
        /// Allow outgoing network connections and name lookups.
        #[arg(long)]
        network: bool,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Load an aggregator and aggregate the given values; prints the result, or `none`.
    Aggregate {
        /// A .wasm file, or the name of a plugin in --plugin-dir.
        file: String,
        /// Plugin configuration (repeatable): `--config fraction=0.2`.
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
        /// The readings: `VALUE` (device ids 1, 2, ... are given in order) or `DEVICE=VALUE`.
        #[arg(required = true, allow_negative_numbers = true, value_name = "VALUE")]
        values: Vec<String>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

/// Where plugins and compiled code live.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Directory where plugin names are looked up (`mean` means DIR/mean.wasm).
    #[arg(long, env = "FLEETMETER_PLUGIN_DIR", default_value = "plugins/dist")]
    pub plugin_dir: PathBuf,
    /// Directory for compiled plugins [default: $XDG_CACHE_HOME/fleetmeter/plugins or
    /// ~/.cache/fleetmeter/plugins].
    #[arg(long, env = "FLEETMETER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile plugins on every start instead of using the cache.
    #[arg(long)]
    pub no_cache: bool,
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
    fn limits(&self) -> Limits {
        Limits {
            timeout_ms: self.timeout_ms,
            fuel: self.fuel,
            max_memory_mib: self.max_memory_mib,
            ..Limits::default()
        }
    }
}

fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("`{raw}` is not KEY=VALUE")),
    }
}

/// Runs a parsed command line. Errors are returned for `main` to print on one line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_device(args),
        Command::Status { fleet, json } => block_on(async move {
            let session = crate::status::connect(&fleet.zk, &fleet.root).await?;
            let status = crate::status::read(&session).await;
            session.close().await;
            let status = status?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", crate::status::render(&status));
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Config(command) => block_on(run_config(command)),
        Command::Health { address, timeout } => block_on(health(address, timeout)),
        Command::Plugin(command) => run_plugin(command),
    }
}

/// A small runtime for the one-shot ZooKeeper commands.
fn block_on(future: impl std::future::Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(future)
}

async fn health(address: String, timeout: f64) -> Result<ExitCode> {
    let addr = crate::config::parse_listen(&address)
        .map_err(|e| anyhow::anyhow!("--address / FLEETMETER_METRICS_LISTEN {e}"))?
        .context("the agent's telemetry is off (\"off\"): nothing to ask")?;
    // An agent listening on every interface answers on loopback.
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let url = format!("http://{host}:{}/healthz", addr.port());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(timeout.clamp(0.1, 300.0)))
        .build()?;
    let response = match http.get(&url).send().await {
        Ok(response) => response,
        Err(err) => {
            eprintln!("error: no answer from {url}: {err}");
            return Ok(ExitCode::from(2));
        }
    };
    let healthy = response.status().is_success();
    println!("{}", response.text().await.unwrap_or_default().trim_end());
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_config(command: ConfigCommand) -> Result<ExitCode> {
    use crate::coord::dynconfig::Key;
    match command {
        ConfigCommand::Get { key, fleet } => {
            let keys = match key {
                Some(name) => vec![Key::parse(&name).with_context(|| {
                    format!("unknown key {name:?}: use sampling_period, api_url or aggregator")
                })?],
                None => Key::ALL.to_vec(),
            };
            let session = crate::status::connect(&fleet.zk, &fleet.root).await?;
            let mut values = Vec::new();
            for key in &keys {
                values.push((key.name(), crate::status::get(&session, *key).await));
            }
            session.close().await;
            for (name, value) in values {
                let value = value?.unwrap_or_else(|| "(not set)".into());
                if keys.len() == 1 {
                    println!("{value}");
                } else {
                    println!("{name} = {value}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Set {
            key,
            value,
            plugin_dir,
            fleet,
        } => {
            // Validate before connecting: a refused value needs no ZooKeeper.
            let (parsed, value) = crate::status::validate(&key, &value, &plugin_dir)?;
            let session = crate::status::connect(&fleet.zk, &fleet.root).await?;
            let written = crate::status::set(&session, parsed, &value).await;
            session.close().await;
            written?;
            println!("{key} = {value}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_device(args: RunArgs) -> Result<ExitCode> {
    let config = crate::config::load(args.config.as_deref(), args.overrides())?;
    if args.check {
        print!("{}", crate::config::describe(&config));
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fleetmeter")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                wait_for_signal().await;
                shutdown.cancel();
            }
        });
        crate::round::run(config, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM (docker stop, systemd) or ctrl-c.
async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; ctrl-c still stops");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn engine(args: &EngineArgs, fuel: bool) -> Result<PluginEngine> {
    let cache_dir = if args.no_cache {
        None
    } else {
        args.cache_dir.clone().or_else(plugin::default_cache_dir)
    };
    Ok(PluginEngine::new(EngineOptions {
        cache_dir,
        fuel,
        ..EngineOptions::default()
    })?)
}

fn locate(file: &str, args: &EngineArgs) -> Result<PathBuf> {
    let path = plugin::resolve(file, &args.plugin_dir);
    if !path.exists() {
        if path.starts_with(&args.plugin_dir) {
            bail!(
                "no plugin `{file}`: {} does not exist (build the bundled plugins with \
                 scripts/build-plugins, or pass a path to a .wasm file)",
                path.display()
            );
        }
        bail!("plugin file {} does not exist", path.display());
    }
    Ok(path)
}

fn run_plugin(command: PluginCommand) -> Result<ExitCode> {
    match command {
        PluginCommand::Inspect { file, engine: args } => {
            let path = locate(&file, &args)?;
            let inspection = plugin::inspect(&engine(&args, false)?, &path)?;
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
            network,
            limits,
            engine: args,
        } => {
            let path = locate(&file, &args)?;
            let settings = PluginSettings {
                config,
                limits: limits.limits(),
                grants: Grants { dirs, env, network },
            };
            let engine = engine(&args, settings.limits.fuel.is_some())?;
            let mut sensor = SensorPlugin::load(&engine, &path, settings)?;
            run_samples(&mut sensor, samples, Duration::from_millis(interval_ms))
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
            let mut aggregator = AggregatorPlugin::load(&engine, &path, settings)?;
            match aggregator.aggregate(&readings)? {
                Some(value) => println!("{value}"),
                None => println!("none"),
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
            let (device, value) = match raw.split_once('=') {
                Some((device, value)) => (device.to_owned(), value),
                None => ((i + 1).to_string(), raw.as_str()),
            };
            let value: f64 = value
                .trim()
                .parse()
                .with_context(|| format!("reading `{raw}`: `{value}` is not a number"))?;
            if !value.is_finite() {
                bail!("reading `{raw}`: the value must be finite");
            }
            Ok(Reading { device, value })
        })
        .collect()
}

fn run_samples(sensor: &mut SensorPlugin, samples: u32, interval: Duration) -> Result<ExitCode> {
    let meta = sensor.metadata().clone();
    eprintln!(
        "{} {} — {} sample(s){}",
        meta.name,
        meta.version,
        samples,
        if meta.unit.is_empty() {
            String::new()
        } else {
            format!(", unit {}", meta.unit)
        }
    );
    let mut stdout = std::io::stdout().lock();
    let mut values = Vec::with_capacity(samples as usize);
    let mut failed = 0_u32;
    for n in 1..=samples {
        if n > 1 && !interval.is_zero() {
            std::thread::sleep(interval);
        }
        let started = Instant::now();
        match sensor.sample() {
            Ok(value) => {
                writeln!(stdout, "{value}")?;
                values.push(value);
            }
            Err(err) => {
                failed += 1;
                eprintln!("sample {n}: {err}");
                if let CallError::BackingOff { remaining, .. } = err {
                    // Wait the back-off out, as the agent would at its next round.
                    std::thread::sleep(remaining.saturating_sub(started.elapsed()));
                }
            }
        }
    }
    stdout.flush()?;
    let stats = sensor.stats();
    if !values.is_empty() {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        eprintln!("min {min}, max {max}, mean {mean:.3}");
    }
    eprintln!(
        "{} ok, {} failed; {} instance(s), {:.1?} inside the plugin",
        values.len(),
        failed,
        stats.instantiations,
        stats.busy
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
