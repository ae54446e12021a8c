//! What an operator does to the outbox (`fleetmeter outbox list|resend|discard`): list
//! every entry, put a refused round back for the leader to send, or delete it for good.

use serde::Serialize;
use zookeeper_client::Error as ZkError;

use super::{
    codec::{self, Rejected},
    ledger,
    mark::MarkKey,
    names::{children, parse_name, rejected_path, result_path},
    store::{self, LoadError},
};
use crate::{
    coord::{
        CoordError, FleetClient,
        paths::{REJECTED, RESULTS},
        txn::{Label, Txn},
    },
    wire::Round,
};

/// One entry as `fleetmeter outbox list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listed {
    pub round: u64,
    /// `waiting` (for the API) or `rejected`.
    pub state: &'static str,
    pub value: Option<f64>,
    pub count: Option<u32>,
    pub bytes: u64,
    /// For a rejected round: the status (absent when the entry was unreadable), the answer
    /// and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

/// Every entry, waiting ones first, each in round order. Every entry is read (a large round
/// with its parts): at most the outbox's bound.
pub async fn list(client: &FleetClient, mark: Option<&MarkKey>) -> Result<Vec<Listed>, CoordError> {
    let mut out = Vec::new();
    for name in children(client, RESULTS).await? {
        let Some(round) = parse_name(&name) else {
            continue;
        };
        let path = format!("{RESULTS}/{name}");
        let mut state = "waiting";
        let (value, count, bytes) = match store::load(client, &path, mark).await {
            Ok(loaded) => (
                Some(loaded.round.value),
                Some(loaded.round.count),
                loaded.bytes,
            ),
            Err(LoadError::Gone) => continue,
            Err(LoadError::Corrupt { data, .. }) => (None, None, data.len() as u64),
            Err(LoadError::Newer { .. }) => {
                state = "newer";
                (None, None, 0)
            }
            Err(LoadError::Coord(e)) => return Err(e),
        };
        out.push(Listed {
            round,
            state,
            value,
            count,
            bytes,
            status: None,
            answer: None,
            at: None,
        });
    }
    for name in children(client, REJECTED).await? {
        let Some(round) = parse_name(&name) else {
            continue;
        };
        let path = format!("{REJECTED}/{name}");
        let Ok((data, _)) = client.get_data(&path).await else {
            continue;
        };
        let rejected: Option<Rejected> = serde_json::from_slice(&data).ok();
        let inline: Option<Round> = rejected.as_ref().and_then(|r| {
            serde_json::from_value(r.entry.clone()).ok().or_else(|| {
                let marked = r.entry.get("round")?;
                serde_json::from_value(marked.clone()).ok()
            })
        });
        out.push(Listed {
            round,
            state: "rejected",
            value: inline.as_ref().map(|r| r.value),
            count: inline.as_ref().map(|r| r.count),
            bytes: rejected.as_ref().map_or(data.len() as u64, |r| r.bytes),
            status: rejected.as_ref().and_then(|r| r.status),
            answer: rejected.as_ref().map(|r| r.answer.clone()),
            at: rejected.as_ref().map(|r| r.at),
        });
    }
    Ok(out)
}

/// What an operator's command did to one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    Done,
    /// No such rejected round.
    NotFound,
    /// A round with this number waits in `/results` already.
    AlreadyWaiting,
}

/// Why a rejected round cannot be sent again.
#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    #[error("its entry cannot be read ({0}); discard it")]
    Unreadable(String),
    #[error(transparent)]
    Coord(#[from] CoordError),
}

/// Puts a rejected round back in the outbox, where the leader sends it again. The operator
/// vouches for the round: with `mark` (a fleet with a secret) it gets a fresh mark (it may
/// have been set aside for lacking one).
pub async fn resend(
    client: &FleetClient,
    mark: Option<&MarkKey>,
    round: u64,
) -> Result<Handled, ResendError> {
    let from = rejected_path(round);
    let to = result_path(round);
    let (data, stat) = match client.get_data(&from).await {
        Ok(found) => found,
        Err(ZkError::NoNode) => return Ok(Handled::NotFound),
        Err(e) => return Err(CoordError::zk("read", &from, e).into()),
    };
    let rejected: Rejected = serde_json::from_slice(&data)
        .map_err(|e| ResendError::Unreadable(format!("not a rejection record: {e}")))?;
    let entry = serde_json::to_vec(&rejected.entry).expect("a JSON value serializes");
    let (loaded, _) = store::load_unchecked(client, entry)
        .await
        .map_err(|e| match e {
            LoadError::Coord(e) => ResendError::Coord(e),
            other => ResendError::Unreadable(other.to_string()),
        })?;
    let entry = match mark {
        Some(key) => codec::remark(&loaded.data, &loaded.round, &loaded.digest, key),
        None => loaded.data.clone(),
    };
    let mut txn = Txn::new("move (multi)", &from);
    txn.create(Label::Entry, &to, &entry, client.acl()).delete(
        Label::Rejected,
        &from,
        Some(stat.version),
    );
    match txn.commit(client).await {
        Ok(()) => Ok(Handled::Done),
        Err(err) if err.is_at(Label::Entry, &ZkError::NodeExists) => Ok(Handled::AlreadyWaiting),
        Err(err) if err.is(Label::Rejected) => Ok(Handled::NotFound),
        Err(err) => Err(err.into_coord().into()),
    }
}

/// Deletes a rejected round for good.
pub async fn discard(client: &FleetClient, round: u64) -> Result<Handled, CoordError> {
    let path = rejected_path(round);
    loop {
        let (data, stat) = match client.get_data(&path).await {
            Ok(found) => found,
            Err(ZkError::NoNode) => return Ok(Handled::NotFound),
            Err(e) => return Err(CoordError::zk("read", &path, e)),
        };
        let state = ledger::read(client).await?;
        let bytes = codec::entry_bytes(REJECTED, &data);
        let mut txn = Txn::new("delete (multi)", &path);
        txn.delete(Label::Rejected, &path, Some(stat.version))
            .push(ledger::update(state, state.ledger.minus(bytes)));
        match txn.commit(client).await {
            Ok(()) => {}
            Err(err) if err.is_at(Label::Rejected, &ZkError::NoNode) => {
                return Ok(Handled::NotFound);
            }
            // The rejection or the ledger moved since read.
            Err(err)
                if err.is_at(Label::Rejected, &ZkError::BadVersion)
                    || err.is_at(Label::Ledger, &ZkError::BadVersion) =>
            {
                continue;
            }
            Err(err) => return Err(err.into_coord()),
        }
        if let Ok(rejected) = serde_json::from_slice::<Rejected>(&data)
            && let Some(dir) = codec::parts_dir(&rejected.entry)
        {
            store::delete_parts(client, &dir).await;
        }
        return Ok(Handled::Done);
    }
}
