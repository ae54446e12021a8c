//! `fleetmeter status`: the fleet as ZooKeeper holds it, as text or JSON.

use std::process::ExitCode;

use anyhow::Result;

use super::FleetArgs;

pub(super) async fn run(fleet: FleetArgs, json: bool) -> Result<ExitCode> {
    let session = fleet.connect().await?;
    let status = crate::status::read(&session).await;
    session.close().await;
    let status = status?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", crate::status::render(&status));
    }
    Ok(ExitCode::SUCCESS)
}
