//! `fleetmeter outbox list|resend|discard`: the rounds waiting for the API and those it
//! refused (`{root}/rejected`), for an operator.

use std::process::ExitCode;

use anyhow::{Result, bail};

use super::OutboxCommand;
use crate::{
    coord::Session,
    publish::outbox::{self, Handled, Listed},
    text::one_line,
};

pub(super) async fn run(command: OutboxCommand) -> Result<ExitCode> {
    match command {
        OutboxCommand::List { fleet, json } => {
            let mark = fleet.mark_key()?;
            let session = fleet.connect().await?;
            let listed = match session.client() {
                Ok(client) => outbox::list(&client, mark.as_ref())
                    .await
                    .map_err(Into::into),
                Err(e) => Err(anyhow::Error::from(e)),
            };
            session.close().await;
            let listed = listed?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                print!("{}", render(&listed));
            }
            Ok(ExitCode::SUCCESS)
        }
        OutboxCommand::Resend { rounds, all, fleet } => {
            let mark = fleet.mark_key()?;
            let session = fleet.connect().await?;
            let done = each(&session, rounds, all, Action::Resend(mark)).await;
            session.close().await;
            done
        }
        OutboxCommand::Discard { rounds, all, fleet } => {
            let session = fleet.connect().await?;
            let done = each(&session, rounds, all, Action::Discard).await;
            session.close().await;
            done
        }
    }
}

enum Action {
    /// With the fleet's commit-mark key, if it has one.
    Resend(Option<outbox::MarkKey>),
    Discard,
}

/// Applies `action` to each of `rounds` (or every rejected round with `all`); reports each
/// and fails when any was not done.
async fn each(session: &Session, rounds: Vec<u64>, all: bool, action: Action) -> Result<ExitCode> {
    let client = session.client()?;
    let rounds = match (all, rounds.is_empty()) {
        (true, true) => outbox::rejected_rounds(&client).await?,
        (false, false) => rounds,
        (true, false) => bail!("give round numbers or --all, not both"),
        (false, true) => {
            bail!("which rounds? give their numbers (see `fleetmeter outbox list`) or --all")
        }
    };
    let mut failed = 0;
    for round in &rounds {
        let outcome = match &action {
            Action::Resend(mark) => outbox::resend(&client, mark.as_ref(), *round)
                .await
                .map_err(anyhow::Error::from),
            Action::Discard => outbox::discard(&client, *round)
                .await
                .map_err(anyhow::Error::from),
        };
        match outcome {
            Ok(Handled::Done) if matches!(action, Action::Resend(_)) => {
                println!(
                    "round {round}: back in the outbox; the leader sends it at its next attempt"
                )
            }
            Ok(Handled::Done) => println!("round {round}: discarded"),
            Ok(Handled::NotFound) => {
                eprintln!("round {round}: not among the refused rounds (fleetmeter outbox list)");
                failed += 1;
            }
            Ok(Handled::AlreadyWaiting) => {
                eprintln!(
                    "round {round}: a round with this number already waits for the API; left as it is"
                );
                failed += 1;
            }
            Err(err) => {
                eprintln!("round {round}: {err:#}");
                failed += 1;
            }
        }
    }
    if rounds.is_empty() {
        println!("no refused rounds");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One line per round; the API's answers are escaped onto one line.
fn render(listed: &[Listed]) -> String {
    if listed.is_empty() {
        return "the outbox is empty: nothing waits for the API, nothing was refused\n".into();
    }
    let mut out = String::new();
    for entry in listed {
        let value = match entry.value {
            Some(v) => format!("value={v}"),
            None if entry.state == "newer" => {
                "in a newer wire contract version: set aside for a newer leader".to_owned()
            }
            None => "unreadable".to_owned(),
        };
        let count = entry
            .count
            .map(|c| format!(" count={c}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:>8}  {:<8}  {value}{count} bytes={}",
            entry.round, entry.state, entry.bytes
        ));
        if entry.state == "rejected" {
            let status = entry
                .status
                .map_or_else(|| "unreadable entry".to_owned(), |s| format!("HTTP {s}"));
            let at = entry
                .at
                .and_then(|ms| jiff::Timestamp::from_millisecond(ms as i64).ok())
                .map(|t| format!(" at {t:.0}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {status}{at}: {}",
                one_line(entry.answer.as_deref().unwrap_or(""))
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_rounds_show_status_time_and_an_escaped_answer() {
        let listed = vec![
            Listed {
                round: 7,
                state: "waiting",
                value: Some(1.5),
                count: Some(2),
                bytes: 120,
                status: None,
                answer: None,
                at: None,
            },
            Listed {
                round: 3,
                state: "rejected",
                value: Some(2.0),
                count: Some(1),
                bytes: 100,
                status: Some(409),
                answer: Some("conflict\nforged line\x1b[31m".into()),
                at: Some(1_764_201_600_000),
            },
        ];
        let text = render(&listed);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            text.contains("       7  waiting   value=1.5 count=2 bytes=120"),
            "{text}"
        );
        assert!(
            text.contains("HTTP 409 at 2025-11-27T00:00:00Z: conflict\\nforged line\\u{1b}[31m"),
            "{text}"
        );
    }
}
