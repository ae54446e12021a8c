//! `fleetmeter health`: asks a running agent's `/healthz`, for container healthchecks.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result};

pub(super) async fn run(
    address: String,
    timeout: f64,
    tls_ca: Option<&std::path::Path>,
) -> Result<ExitCode> {
    let addr = crate::config::parse_listen(&address)
        .map_err(|e| {
            anyhow::anyhow!(
                "--address / {} {e}",
                crate::config::keys::METRICS_LISTEN.var()
            )
        })?
        .context("the agent's telemetry is off (\"off\"): nothing to ask")?;
    // An agent listening on every interface answers on loopback.
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let scheme = if tls_ca.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{host}:{}/healthz", addr.port());
    let tls = crate::publish::tls::ApiTls::read(tls_ca, None, None).context("--tls-ca")?;
    let http = tls.client(|| {
        reqwest::Client::builder().timeout(Duration::from_secs_f64(timeout.clamp(0.1, 300.0)))
    })?;
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
