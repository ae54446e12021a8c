//! The `fleetmeter` command line. `main.rs` parses [`Cli`], sets up logging and calls
//! [`run`]; each command's handler lives in its own module.
//!
//! # Layout
//! - `run`: `fleetmeter run`, wiring a device and the round loop.
//! - `status`: `fleetmeter status`.
//! - `config`: `fleetmeter config get|set`.
//! - `health`: `fleetmeter health`.
//! - `outbox`: `fleetmeter outbox list|resend|discard`.
//! - `secure`: `fleetmeter secure-root`.
//! - `plugin`: `fleetmeter plugin inspect|run|aggregate`.
//! - `ship`: `fleetmeter plugin keygen|sign|publish|list|gc`.
//! - `rollout`: `fleetmeter plugin rollout …`.
//!
//! Flag and variable names come from the configuration key table ([`crate::config::keys`]).

mod config;
mod engine_args;
mod health;
mod outbox;
mod plugin;
mod replay;
mod rollout;
mod run;
mod secure;
mod ship;
mod status;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

pub use engine_args::EngineArgs;
pub use plugin::{LimitArgs, PluginCommand};
pub use run::RunArgs;

use crate::config::keys;

/// A fleet of measuring devices coordinated through ZooKeeper, with sensors and aggregation
/// policies as sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "fleetmeter", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr. Set RUST_LOG (e.g. `debug`, `plugin=trace`) for more detail.
    #[arg(long = keys::LOG_FORMAT.long(), global = true, value_enum, default_value_t = LogFormat::Text, env = keys::LOG_FORMAT.var())]
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
    Run(Box<RunArgs>),
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
            env = keys::METRICS_LISTEN.var(),
            default_value = keys::METRICS_LISTEN.default.trim_matches('"'),
            value_name = keys::METRICS_LISTEN.value()
        )]
        address: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
        /// Ask over HTTPS, trusting this PEM CA (for fleetmeter-api serving TLS itself,
        /// whose /healthz answers the same way).
        #[arg(long, value_name = "PATH")]
        tls_ca: Option<PathBuf>,
    },
    /// Read or change the fleet's dynamic configuration (sampling_period, api_url,
    /// aggregator). Values are validated as the agents do; every agent applies a change at
    /// its next round (the API URL at the next publish).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// See and act on the outbox: rounds waiting for the API, and rounds it refused (a 4xx
    /// such as 409 or 422, kept in {root}/rejected with its answer, never dropped).
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Secure a fleet whose root was created open (before credentials were configured): give
    /// every node under the root the fleet's ACL (these credentials may do everything,
    /// everyone else nothing). Needs the credentials (FLEETMETER_ZK_AUTH or --zk-auth-file).
    /// Stop agents that have no credentials first: afterwards they are refused.
    SecureRoot {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Let anyone read (not change) the fleet's nodes: dashboards, kazoo without
        /// credentials.
        #[arg(long)]
        public_read: bool,
    },
    /// Work with plugin files: inspect them, try a sensor, try an aggregator.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Recompute stored rounds from the per-device readings stored with them (contract
    /// version 2), with any aggregator plugin, in the same sandbox as the agents; prints the
    /// stored and the recomputed value side by side. Reads the API only (no token).
    Replay(Box<replay::ReplayArgs>),
}

/// Which fleet.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// ZooKeeper hosts, host:port[,host:port...].
    #[arg(
        long = keys::ZK_HOSTS.long(),
        env = keys::ZK_HOSTS.var(),
        default_value = keys::ZK_HOSTS.default.trim_matches('"'),
        value_name = keys::ZK_HOSTS.value()
    )]
    pub zk: String,
    /// Root node of the fleet.
    #[arg(
        long = keys::ZK_ROOT.long(),
        env = keys::ZK_ROOT.var(),
        default_value = keys::ZK_ROOT.default.trim_matches('"'),
        value_name = keys::ZK_ROOT.value()
    )]
    pub root: String,
    /// A file holding the fleet's ZooKeeper credentials, `digest:USER:PASSWORD` (or set
    /// FLEETMETER_ZK_AUTH to that value). Never the password itself on the command line.
    #[arg(
        long = keys::ZK_AUTH_FILE.long(),
        env = keys::ZK_AUTH_FILE.var(),
        value_name = keys::ZK_AUTH_FILE.value()
    )]
    pub zk_auth_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: crate::config::ZkTlsArgs,
}

impl FleetArgs {
    /// TLS to ZooKeeper, when --zk-tls-ca is given.
    pub fn tls(&self) -> Result<Option<crate::coord::access::ZkTls>> {
        let crate::config::ZkTlsArgs {
            zk_tls_ca,
            zk_tls_cert,
            zk_tls_key,
        } = &self.tls;
        match zk_tls_ca {
            Some(ca) => Ok(Some(crate::coord::access::ZkTls::read(
                ca,
                zk_tls_cert.as_deref(),
                zk_tls_key.as_deref(),
            )?)),
            None if zk_tls_cert.is_some() || zk_tls_key.is_some() => {
                anyhow::bail!(
                    "--zk-tls-cert/--zk-tls-key without --zk-tls-ca: set the CA to turn TLS on"
                )
            }
            None => Ok(None),
        }
    }

    /// The credentials: FLEETMETER_ZK_AUTH, else the --zk-auth-file file.
    pub fn auth(&self) -> Result<Option<crate::coord::ZkAuth>> {
        if let Some(raw) = std::env::var_os(keys::ZK_AUTH.var()) {
            let raw = raw.to_string_lossy();
            return raw
                .parse()
                .map(Some)
                .with_context(|| format!("{} (environment)", keys::ZK_AUTH.var()));
        }
        let Some(path) = &self.zk_auth_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the credentials file {}", path.display()))?;
        text.parse()
            .map(Some)
            .with_context(|| format!("the credentials in {}", path.display()))
    }

    /// The key of the fleet's commit marks, so that `outbox list` checks entries as the
    /// leader does and `outbox resend` vouches for what it puts back: from the credentials,
    /// else the API token in the environment.
    pub fn mark_key(&self) -> Result<Option<crate::publish::outbox::MarkKey>> {
        let auth = self.auth()?;
        let token = crate::status::env_token();
        Ok(crate::publish::outbox::MarkKey::for_fleet(
            auth.as_ref(),
            token.as_deref(),
        ))
    }

    /// Runs `f` on a short session on the fleet, closed afterwards.
    pub async fn with_client<F, Fut>(&self, f: F) -> Result<ExitCode>
    where
        F: FnOnce(crate::coord::FleetClient) -> Fut,
        Fut: Future<Output = Result<ExitCode>>,
    {
        let session = self.connect().await?;
        let done = match session.client() {
            Ok(client) => f(client).await,
            Err(e) => Err(e.into()),
        };
        session.close().await;
        done
    }

    /// A short session on the fleet, with the credentials.
    pub async fn connect(&self) -> Result<crate::coord::Session> {
        Ok(crate::status::connect(&self.zk, &self.root, self.auth()?, self.tls()?).await?)
    }
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
        #[arg(
            long = keys::PLUGIN_DIR.long(),
            env = keys::PLUGIN_DIR.var(),
            default_value = keys::PLUGIN_DIR.default.trim_matches('"')
        )]
        plugin_dir: PathBuf,
        #[command(flatten)]
        fleet: FleetArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List the rounds waiting for the API and those it refused, with its status and answer.
    List {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put refused rounds back in the outbox, once the cause is fixed (the API's limits, a
    /// conflicting round removed from it): the leader sends them again at its next attempt.
    /// A round refused again goes back to the refused ones.
    Resend {
        /// Round numbers, from `fleetmeter outbox list`.
        rounds: Vec<u64>,
        /// Every refused round.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Delete refused rounds for good (they are not published).
    Discard {
        /// Round numbers, from `fleetmeter outbox list`.
        rounds: Vec<u64>,
        /// Every refused round.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
}

impl Command {
    /// The log filter used when RUST_LOG is not set.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Run(_) => "info",
            Command::Status { .. }
            | Command::Config(_)
            | Command::Outbox(_)
            | Command::SecureRoot { .. }
            | Command::Health { .. } => "warn",
            // Plugin authors want their plugin's own log lines, not the agent's chatter.
            Command::Plugin(_) | Command::Replay(_) => "warn,plugin=info",
        }
    }
}

/// Runs a parsed command line. Errors are returned for `main` to print on one line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Status { fleet, json } => block_on(status::run(fleet, json)),
        Command::Config(command) => block_on(config::run(command)),
        Command::Outbox(command) => block_on(outbox::run(command)),
        Command::SecureRoot { fleet, public_read } => block_on(secure::run(fleet, public_read)),
        Command::Health {
            address,
            timeout,
            tls_ca,
        } => block_on(health::run(address, timeout, tls_ca.as_deref())),
        Command::Plugin(command) => plugin::run(command),
        Command::Replay(args) => block_on(replay::run(*args)),
    }
}

/// A small runtime for the one-shot commands. It does not wait for blocking threads at the
/// end: a plugin's host call abandoned at its deadline (a read of a FIFO nobody writes, say)
/// may still hold one, and the command's answer must not wait for it.
fn block_on(future: impl std::future::Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(future);
    runtime.shutdown_background();
    outcome
}
