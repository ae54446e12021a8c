//! `fleetmeter secure-root`: gives every node under the fleet's root the fleet's policy (the
//! credentials' identity may do everything; everyone else nothing, or read with
//! `--public-read`). For a root created before credentials were configured: agents with
//! credentials refuse to run on an open root and name this command.

use std::{collections::VecDeque, process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use zookeeper_client::{Client, Error as ZkError};

use super::FleetArgs;
use crate::coord::{NodeAcl, ZkSettings, access};

/// Progress is printed every this many nodes.
const PROGRESS_EVERY: usize = 1000;

pub(super) async fn run(fleet: FleetArgs, public_read: bool) -> Result<ExitCode> {
    ZkSettings::validate_hosts(&fleet.zk)?;
    ZkSettings::validate_root(&fleet.root)?;
    if fleet.root == "/" {
        bail!("secure-root secures a fleet's own root node (like /fleetmeter), not /");
    }
    let Some(auth) = fleet.auth()? else {
        bail!(
            "secure-root needs the fleet's credentials, the ones its agents will use: set FLEETMETER_ZK_AUTH=digest:USER:PASSWORD or pass --zk-auth-file PATH"
        );
    };
    let tls = fleet.tls()?.map(|tls| tls.options()).transpose()?;
    let client = tokio::time::timeout(Duration::from_secs(10), async {
        let connector = auth.apply(
            Client::connector()
                .with_session_timeout(Duration::from_secs(10))
                .with_fail_eagerly(),
        );
        match tls {
            Some(options) => connector.with_tls(options).secure_connect(&fleet.zk).await,
            None => connector.connect(&fleet.zk).await,
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("cannot reach ZooKeeper at {} within 10 s", fleet.zk))?
    .with_context(|| format!("connecting to ZooKeeper at {}", fleet.zk))?;
    let policy = NodeAcl::secured(public_read);
    let mut queue = VecDeque::from([fleet.root.clone()]);
    let (mut secured, mut gone) = (0usize, 0usize);
    while let Some(path) = queue.pop_front() {
        // Children first listed, then the ACL set: a node is never closed to us before we
        // have read what is under it.
        match client.list_children(&path).await {
            Ok(children) => queue.extend(children.into_iter().map(|c| format!("{path}/{c}"))),
            Err(ZkError::NoNode) if path != fleet.root => {
                gone += 1;
                continue;
            }
            Err(ZkError::NoNode) => {
                bail!("{} does not exist: there is nothing to secure", fleet.root)
            }
            Err(ZkError::NoAuth) => bail!(
                "ZooKeeper refused to list {path}: it is protected for other credentials than user {:?}",
                auth.user()
            ),
            Err(e) => return Err(e).with_context(|| format!("listing {path}")),
        }
        match client.set_acl(&path, policy.acls(), None).await {
            Ok(_) => {
                secured += 1;
                if secured % PROGRESS_EVERY == 0 {
                    eprintln!(
                        "secure-root: {secured} nodes secured, {} to go",
                        queue.len()
                    );
                }
            }
            Err(ZkError::NoNode) => gone += 1,
            Err(ZkError::NoAuth) => bail!(
                "ZooKeeper refused to change the ACL of {path}: it is protected for other credentials than user {:?}",
                auth.user()
            ),
            Err(e) => return Err(e).with_context(|| format!("setting the ACL of {path}")),
        }
    }
    let (acls, _) = client
        .get_acl(&fleet.root)
        .await
        .with_context(|| format!("reading the ACL of {}", fleet.root))?;
    println!(
        "secured {secured} nodes under {} (ACL now: {}){}",
        fleet.root,
        access::describe(&acls),
        if gone > 0 {
            format!("; {gone} vanished while walking (ephemeral nodes of agents that left)")
        } else {
            String::new()
        }
    );
    println!(
        "agents and tools now need these credentials ([zookeeper] auth / auth_file, or FLEETMETER_ZK_AUTH); without them they are refused"
    );
    Ok(ExitCode::SUCCESS)
}
