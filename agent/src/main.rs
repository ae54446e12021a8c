//! The `fleetmeter` binary: parses the command line, sets up logging and hands over to
//! [`fleetmeter::cli::run`]; the error, if any, is printed on one line.

use std::process::ExitCode;

use clap::Parser;
use fleetmeter::cli::{self, Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cli.command.default_log_filter()));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: log files and `docker logs` stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `outer: cause: cause`, skipping a cause whose text
/// the message before it already ends with (many errors quote their source).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
