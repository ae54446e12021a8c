//! `fleetmeter config get|set`: the fleet's dynamic configuration, validated as the agents
//! validate it.

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::ConfigCommand;

pub(super) async fn run(command: ConfigCommand) -> Result<ExitCode> {
    use crate::coord::dynconfig::Key;
    match command {
        ConfigCommand::Get { key, fleet } => {
            let keys = match key {
                Some(name) => vec![Key::parse(&name).with_context(|| {
                    format!("unknown key {name:?}: use sampling_period, api_url or aggregator")
                })?],
                None => Key::ALL.to_vec(),
            };
            let session = fleet.connect().await?;
            let mut values = Vec::new();
            for key in &keys {
                values.push((key.name(), crate::status::get(&session, *key).await));
            }
            session.close().await;
            for (name, value) in values {
                // Anyone with write access to the node could have put anything there.
                let value = value?.unwrap_or_else(|| "(not set)".into());
                let value = crate::text::one_line(&value);
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
            let session = fleet.connect().await?;
            let written = crate::status::set(&session, parsed, &value).await;
            // A promoted aggregator rollout takes precedence over this key: say so.
            let assigned = match (&written, parsed, session.client()) {
                (Ok(()), Key::Aggregator, Ok(client)) => crate::rollout::store::read_assignment(
                    &client,
                    crate::rollout::Kind::Aggregator,
                )
                .await
                .ok()
                .flatten()
                .and_then(|read| read.value.ok()),
                _ => None,
            };
            session.close().await;
            written?;
            println!("{key} = {value}");
            if let Some(a) = assigned {
                eprintln!(
                    "warning: the fleet publishes with {} (promoted by rollout {}), which takes precedence over this key; roll out another aggregator to change it",
                    crate::text::one_line_bounded(&a.artifact.label(), 100),
                    a.rollout
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
