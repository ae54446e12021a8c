//! The `fleetmeter-api` binary: flags and environment, logging, Redis, then
//! [`fleetmeter_api::run`] until SIGTERM or ctrl-c.

use std::{net::SocketAddr, process::ExitCode, sync::Arc};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use fleetmeter_api::{AppState, run, store::Store};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// The fleetmeter measurements API: stores the rounds the fleet's leader publishes (in Redis)
/// and shows them on a page, as JSON, and as Prometheus metrics.
#[derive(Debug, Parser)]
#[command(name = "fleetmeter-api", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "API_LISTEN", default_value = "0.0.0.0:4000")]
    listen: SocketAddr,
    /// Redis to store rounds in.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Prefix of every Redis key, so several fleets can share one Redis.
    #[arg(long, env = "API_REDIS_PREFIX", default_value = "fleetmeter")]
    redis_prefix: String,
    /// When set, writes (POST /api/v1/rounds, GET /nuevo) need `Authorization: Bearer TOKEN`.
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    token: Option<String>,
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

async fn serve(args: Args) -> Result<()> {
    let store = Store::new(&args.redis, &args.redis_prefix)
        .with_context(|| format!("invalid Redis URL {:?} (--redis / REDIS_URL)", args.redis))?;
    let state = Arc::new(AppState::new(store, args.token));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen / API_LISTEN)", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        redis = %args.redis,
        auth = state.token.is_some(),
        "fleetmeter-api serving"
    );
    if let Err(err) = state.store.ping().await {
        tracing::warn!(error = %err, "Redis is not answering yet; requests get 503 until it does");
    }
    run(listener, state, shutdown_signal()).await?;
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
