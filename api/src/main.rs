//! The `fleetmeter-api` binary: flags and environment, logging, Redis, then
//! [`fleetmeter_api::run`] until SIGTERM or ctrl-c.

#![forbid(unsafe_code)]

use std::{net::SocketAddr, process::ExitCode, sync::Arc};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use fleetmeter_api::{AppState, run_tls, run_with, store::Store};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// The fleetmeter measurements API: stores the rounds the fleet's leader publishes (in Redis)
/// and shows them on a page, as JSON, and as Prometheus metrics.
#[derive(Debug, Parser)]
#[command(name = "fleetmeter-api", version)]
struct Args {
    /// Address to listen on (every interface by default: the API is what agents reach over
    /// the network; compose publishes it on the host's loopback only).
    #[arg(long, env = "API_LISTEN", default_value = "0.0.0.0:4000")]
    listen: SocketAddr,
    /// Redis to store rounds in.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Prefix of every Redis key, so several fleets can share one Redis.
    #[arg(long, env = "API_REDIS_PREFIX", default_value = "fleetmeter")]
    redis_prefix: String,
    /// Writes (POST /api/v1/rounds, GET /nuevo) need `Authorization: Bearer TOKEN`. Required
    /// unless --allow-anonymous-writes. Prefer the environment or --token-file: a command
    /// line is visible to every user of the host.
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the token (its first line), e.g. a secret shared with the agents.
    #[arg(
        long,
        env = "API_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "token"
    )]
    token_file: Option<std::path::PathBuf>,
    /// Accept writes without a token from anyone who can reach the port (a lab, a demo on
    /// loopback). Without it and without a token the API does not start.
    #[arg(long, env = "API_ALLOW_ANONYMOUS_WRITES")]
    allow_anonymous_writes: bool,
    /// Serve the original API's write, GET /nuevo?dato=V (for agents with
    /// format = "query"). Off by default.
    #[arg(long, env = "API_LEGACY_QUERY")]
    legacy_query: bool,
    /// Most connections served at once; more wait for a free slot.
    #[arg(long, env = "API_MAX_CONNECTIONS", default_value_t = fleetmeter_serve::Limits::API.max_connections)]
    max_connections: usize,
    /// Serve HTTPS with this PEM certificate chain (leaf first) and --tls-key, for a
    /// deployment without a reverse proxy. Without it the API serves plain HTTP (behind one).
    #[arg(long, env = "API_TLS_CERT", value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert (keep it 0600).
    #[arg(long, env = "API_TLS_KEY", value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Serve only clients that present a certificate this PEM CA signed (mutual TLS); needs
    /// --tls-cert.
    #[arg(
        long,
        env = "API_TLS_CLIENT_CA",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<std::path::PathBuf>,
    /// Log format on stderr (RUST_LOG sets the level; default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "API_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: log files and `docker logs` stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The write token: --token / API_TOKEN, or the first line of --token-file / API_TOKEN_FILE.
fn token(args: &Args) -> Result<Option<String>> {
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the token file {} (--token-file / API_TOKEN_FILE)",
                path.display()
            )
        })?;
        let token = text.lines().next().unwrap_or_default().trim().to_owned();
        if token.is_empty() {
            anyhow::bail!(
                "the token file {} is empty (--token-file / API_TOKEN_FILE)",
                path.display()
            );
        }
        return Ok(Some(token));
    }
    Ok(args.token.clone().filter(|t| !t.is_empty()))
}

async fn serve(args: Args) -> Result<()> {
    let redis = fleetmeter_serve::redact_url(&args.redis);
    let store = Store::new(&args.redis, &args.redis_prefix)
        .with_context(|| format!("invalid Redis URL {redis:?} (--redis / REDIS_URL)"))?;
    let token = token(&args)?;
    if token.is_none() && !args.allow_anonymous_writes {
        anyhow::bail!(
            "no write token: set API_TOKEN or API_TOKEN_FILE (the agents send it as FLEETMETER_API_TOKEN), or API_ALLOW_ANONYMOUS_WRITES=true to let anyone who reaches this port write rounds"
        );
    }
    let state = Arc::new(AppState::new(store, token).with_legacy_query(args.legacy_query));
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            fleetmeter_serve::tls::server_config(cert, key, args.tls_client_ca.as_deref())
                .context("cannot serve TLS (--tls-cert, --tls-key, --tls-client-ca / API_TLS_CERT, API_TLS_KEY, API_TLS_CLIENT_CA)")?,
        ),
        _ => None,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen / API_LISTEN)", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        redis = %redis,
        auth = state.token.is_some(),
        legacy_query = state.legacy_query,
        tls = tls.is_some(),
        client_certificates = args.tls_client_ca.is_some(),
        "fleetmeter-api serving"
    );
    if let Err(err) = state.store.ping().await {
        tracing::warn!(error = %err, "Redis is not answering yet; requests get 503 until it does");
    }
    let limits = fleetmeter_serve::Limits {
        max_connections: args.max_connections.max(1),
        ..fleetmeter_serve::Limits::API
    };
    match tls {
        Some(tls) => run_tls(listener, state, limits, tls, shutdown_signal()).await?,
        None => run_with(listener, state, limits, shutdown_signal()).await?,
    }
    tracing::info!("fleetmeter-api stopped");
    Ok(())
}

/// SIGTERM (docker stop) or ctrl-c.
async fn shutdown_signal() {
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
    tracing::info!("shutting down: finishing requests in flight");
}
