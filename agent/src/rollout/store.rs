//! Reading and writing `{root}/rollout` and `{root}/plugins/{kind}`. Every write is a
//! compare-and-set on the node's version; the leader's writes are also fenced by its
//! election node, so a deposed leader cannot move a rollout.

use zookeeper_client::Error as ZkError;

use super::record::{Assignment, Kind, Rollout};
use crate::coord::{
    CoordError, FleetClient,
    paths::{PLUGINS, ROLLOUT},
    txn::{Label, Txn, TxnError},
};

pub fn assignment_path(kind: Kind) -> String {
    format!("{PLUGINS}/{}", kind.name())
}

/// A node as read: its data parsed (or why not) and its version.
#[derive(Debug)]
pub struct Read<T> {
    pub value: Result<T, String>,
    pub version: i32,
}

/// The rollout record (`None`: there never was one).
pub async fn read_rollout(client: &FleetClient) -> Result<Option<Read<Rollout>>, CoordError> {
    match client.get_data(ROLLOUT).await {
        Ok((data, stat)) => Ok(Some(Read {
            value: Rollout::parse(&data),
            version: stat.version,
        })),
        Err(ZkError::NoNode) => Ok(None),
        Err(e) => Err(CoordError::zk("get", ROLLOUT, e)),
    }
}

pub fn parse_assignment(data: &[u8]) -> Result<Assignment, String> {
    if data.len() > 64 * 1024 {
        return Err(format!("{} bytes", data.len()));
    }
    let a: Assignment = serde_json::from_slice(data)
        .map_err(|e| crate::text::one_line_bounded(&e.to_string(), 200))?;
    a.check()?;
    Ok(a)
}

pub async fn read_assignment(
    client: &FleetClient,
    kind: Kind,
) -> Result<Option<Read<Assignment>>, CoordError> {
    let path = assignment_path(kind);
    match client.get_data(&path).await {
        Ok((data, stat)) => Ok(Some(Read {
            value: parse_assignment(&data),
            version: stat.version,
        })),
        Err(ZkError::NoNode) => Ok(None),
        Err(e) => Err(CoordError::zk("get", &path, e)),
    }
}

/// Why a write did not apply.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the rollout record changed meanwhile (another writer); read it again")]
    Moved,
    #[error("our election node is gone: this agent no longer leads")]
    Fenced,
    #[error(transparent)]
    Coord(#[from] CoordError),
}

/// Writes `rollout` over the version read (`None`: creates it), with the assignment a
/// promotion sets, fenced by `fence` (the leader's election node) when given.
pub async fn write(
    client: &FleetClient,
    rollout: &Rollout,
    version: Option<i32>,
    assignment: Option<(&Assignment, Option<i32>)>,
    fence: Option<&str>,
) -> Result<(), WriteError> {
    let acl = client.acl().clone();
    let mut txn = Txn::new("write the rollout (multi)", ROLLOUT);
    if let Some(node) = fence {
        txn.check(Label::Fence, node, 0);
    }
    let data = rollout.to_json();
    match version {
        Some(v) => txn.set(Label::Rollout, ROLLOUT, &data, Some(v)),
        None => txn.create(Label::Rollout, ROLLOUT, &data, &acl),
    };
    if let Some((a, v)) = assignment {
        let path = assignment_path(a_kind(rollout));
        let data = serde_json::to_vec(a).expect("an assignment serializes");
        match v {
            Some(v) => txn.set(Label::Assignment, &path, &data, Some(v)),
            None => txn.create(Label::Assignment, &path, &data, &acl),
        };
        client
            .mkdir(PLUGINS, &client.persistent())
            .await
            .map_err(|e| CoordError::zk("create", PLUGINS, e))?;
    }
    match txn.commit(client).await {
        Ok(()) => Ok(()),
        Err(err) if err.is(Label::Fence) => Err(WriteError::Fenced),
        Err(err)
            if err.is_at(Label::Rollout, &ZkError::BadVersion)
                || err.is_at(Label::Rollout, &ZkError::NodeExists)
                || err.is_at(Label::Assignment, &ZkError::BadVersion)
                || err.is_at(Label::Assignment, &ZkError::NodeExists) =>
        {
            Err(WriteError::Moved)
        }
        Err(err) => Err(TxnError::into_coord(err).into()),
    }
}

fn a_kind(rollout: &Rollout) -> Kind {
    rollout.kind
}

/// The round `{root}/round` holds now (`None`: the fleet has not started).
pub async fn current_round(client: &FleetClient) -> Result<Option<u64>, CoordError> {
    match crate::coord::barrier::current_released(client).await {
        Ok(found) => Ok(found.map(|(state, _)| state.round)),
        Err(err) => Err(err),
    }
}
