//! Entries in ZooKeeper: writing a round's parts, reading an entry back (checking its
//! mark), removing a delivered one, and setting a refused or unreadable one aside in
//! `/rejected`.

use sha2::{Digest, Sha256};
use zookeeper_client::Error as ZkError;

use super::{
    codec::{self, Encoded, Parsed, PartsRef, Rejected},
    ledger::{self, Ledger, LedgerState},
    mark::MarkKey,
    names::{children, mkdir, parse_name, rejected_path, result_path},
};
use crate::{
    coord::{
        CoordError, FleetClient, NodeAcl,
        paths::{PARTS, REJECTED, RESULTS},
        txn::{Label, Op, Txn},
    },
    wire::{Round, VERSION},
};

/// Writes an encoded round's parts (overwriting what an earlier try of the same commit
/// wrote).
pub async fn write_parts(client: &FleetClient, encoded: &Encoded) -> Result<(), CoordError> {
    let Some((first, _)) = encoded.parts.first() else {
        return Ok(());
    };
    let dir = first.rsplit_once('/').map_or(PARTS, |(dir, _)| dir);
    mkdir(client, dir).await?;
    for (path, data) in &encoded.parts {
        match client.create(path, data, &client.persistent()).await {
            Ok(_) => {}
            Err(ZkError::NodeExists) => {
                client
                    .set_data(path, data, None)
                    .await
                    .map_err(|e| CoordError::zk("set", path, e))?;
            }
            Err(e) => return Err(CoordError::zk("create", path, e)),
        }
    }
    Ok(())
}

/// The creation of round `round`'s entry and the ledger's update, for the commit
/// transaction; and the ledger after it.
pub fn entry_ops(
    acl: &NodeAcl,
    round: u64,
    encoded: &Encoded,
    state: LedgerState,
) -> ([Op; 2], Ledger) {
    let after = state.ledger.plus(encoded.bytes);
    let create = Op::create(Label::Entry, &result_path(round), &encoded.entry, acl);
    ([create, ledger::update(state, after)], after)
}

/// An entry, read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub round: Round,
    /// The entry as stored (the round's JSON, or the reference to its parts).
    pub data: Vec<u8>,
    /// The round's JSON size.
    pub bytes: u64,
    /// SHA-256 of the round's JSON (what a commit mark covers).
    pub digest: [u8; 32],
    /// Its parts' directory, for a large round.
    pub parts: Option<String>,
}

/// Why an entry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Taken care of meanwhile (published, moved or discarded by another process).
    #[error("gone")]
    Gone,
    /// It will never read: it goes to `/rejected` with the reason.
    #[error("{reason}")]
    Corrupt {
        reason: String,
        data: Vec<u8>,
        parts: Option<String>,
    },
    /// A round in a newer wire contract version than this agent reads: set aside, unchanged,
    /// for a leader that reads it.
    #[error(
        "round {round:?} is in wire contract version {version}; this agent reads up to {VERSION}: a newer fleetmeter publishes it"
    )]
    Newer { version: u32, round: Option<u64> },
    #[error(transparent)]
    Coord(#[from] CoordError),
}

/// Reads the entry at `path` (in `/results`). With `mark` (a fleet with a secret), an entry
/// without a valid commit mark is [`LoadError::Corrupt`].
pub async fn load(
    client: &FleetClient,
    path: &str,
    mark: Option<&MarkKey>,
) -> Result<Loaded, LoadError> {
    let data = match client.get_data(path).await {
        Ok((data, _)) => data,
        Err(ZkError::NoNode) => return Err(LoadError::Gone),
        Err(e) => return Err(CoordError::zk("read", path, e).into()),
    };
    let (loaded, found) = load_unchecked(client, data).await?;
    let Some(key) = mark else {
        return Ok(loaded);
    };
    if !found.is_some_and(|found| key.verify(&loaded.digest, &found)) {
        return Err(LoadError::Corrupt {
            reason: "it has no valid commit mark: not written by this fleet's leader (or written before the fleet had credentials; `fleetmeter outbox resend` vouches for it)".into(),
            parts: loaded.parts,
            data: loaded.data,
        });
    }
    Ok(loaded)
}

/// Reads an entry of any form, with its mark (if any) unchecked.
pub(super) async fn load_unchecked(
    client: &FleetClient,
    data: Vec<u8>,
) -> Result<(Loaded, Option<String>), LoadError> {
    let corrupt = |reason: String, parts: Option<String>, data: Vec<u8>| LoadError::Corrupt {
        reason,
        data,
        parts,
    };
    let parsed = codec::parse(&data);
    if !matches!(parsed, Parsed::Parts { .. })
        && let Some((version, round)) = codec::declared_entry_version(&data)
        && version > VERSION
    {
        return Err(LoadError::Newer { version, round });
    }
    match parsed {
        Parsed::Parts { parts, mark } => {
            let json = match read_parts(client, &parts).await {
                Ok(json) => json,
                Err(reason) => return Err(corrupt(reason, Some(parts.dir), data)),
            };
            if let Some(version) = codec::declared_version(&json)
                && version > VERSION
            {
                let name = &parts.dir[PARTS.len() + 1..];
                let round = parse_name(name.split('-').next().unwrap_or(name));
                return Err(LoadError::Newer { version, round });
            }
            match codec::checked_round(&json) {
                Ok(round) => Ok((
                    Loaded {
                        round,
                        bytes: parts.bytes,
                        digest: Sha256::digest(&json).into(),
                        parts: Some(parts.dir),
                        data,
                    },
                    mark,
                )),
                Err(reason) => Err(corrupt(
                    format!("its parts do not hold {reason}"),
                    Some(parts.dir),
                    data,
                )),
            }
        }
        Parsed::Marked { mark, round } => {
            let json = serde_json::to_vec(&round).expect("a round serializes");
            match codec::checked_round(&json) {
                Ok(round) => Ok((
                    Loaded {
                        round,
                        bytes: json.len() as u64,
                        digest: Sha256::digest(&json).into(),
                        parts: None,
                        data,
                    },
                    Some(mark),
                )),
                Err(reason) => Err(corrupt(format!("not {reason}"), None, data)),
            }
        }
        Parsed::Plain => match codec::checked_round(&data) {
            Ok(round) => Ok((
                Loaded {
                    // What a mark would cover: the round as it serializes (a record kept in
                    // `/rejected` holds it re-serialized, with its keys in another order).
                    digest: codec::digest_of(&round),
                    round,
                    bytes: data.len() as u64,
                    parts: None,
                    data,
                },
                None,
            )),
            Err(reason) => Err(corrupt(format!("not {reason}"), None, data)),
        },
    }
}

/// The round's JSON from its parts, checked against the digest; `Err` says what is wrong.
async fn read_parts(client: &FleetClient, parts: &PartsRef) -> Result<Vec<u8>, String> {
    if !parts.dir.starts_with(&format!("{PARTS}/")) || parts.dir[PARTS.len() + 1..].contains('/') {
        return Err(format!(
            "its parts directory {:?} is not under {PARTS}",
            parts.dir
        ));
    }
    if parts.bytes > fleetmeter_wire::MAX_ROUND_JSON as u64 {
        return Err(format!(
            "it claims {} bytes, more than any round",
            parts.bytes
        ));
    }
    let mut json = Vec::with_capacity(parts.bytes as usize);
    for k in 0..parts.count {
        let path = format!("{}/{k:04}", parts.dir);
        match client.get_data(&path).await {
            Ok((data, _)) => json.extend_from_slice(&data),
            Err(e) => return Err(format!("part {path} cannot be read: {e}")),
        }
        if json.len() as u64 > parts.bytes {
            break;
        }
    }
    if json.len() as u64 != parts.bytes || hex::encode(Sha256::digest(&json)) != parts.sha256 {
        return Err(format!(
            "its parts in {} do not match its size and digest",
            parts.dir
        ));
    }
    Ok(json)
}

/// Deletes a parts directory (best effort: what is left is collected later).
pub async fn delete_parts(client: &FleetClient, dir: &str) {
    if let Ok(children) = client.list_children(dir).await {
        for child in children {
            let _ = client.delete(&format!("{dir}/{child}"), None).await;
        }
    }
    let _ = client.delete(dir, None).await;
}

/// Removes a delivered entry, and its parts. `Ok` also when another process removed it.
pub async fn remove_delivered(
    client: &FleetClient,
    path: &str,
    loaded: &Loaded,
) -> Result<(), CoordError> {
    loop {
        let state = ledger::read(client).await?;
        let mut txn = Txn::new("delete (multi)", path);
        txn.delete(Label::Entry, path, None)
            .push(ledger::update(state, state.ledger.minus(loaded.bytes)));
        match txn.commit(client).await {
            Ok(()) => break,
            Err(err) if err.is_at(Label::Entry, &ZkError::NoNode) => break,
            Err(err) if err.is_at(Label::Ledger, &ZkError::BadVersion) => continue,
            Err(err) => return Err(err.into_coord()),
        }
    }
    if let Some(dir) = &loaded.parts {
        delete_parts(client, dir).await;
    }
    Ok(())
}

/// Moves the entry `name` from `/results` to `/rejected` (replacing an older rejection of
/// the same round). `Ok` also when another process moved or removed it first.
pub async fn reject(
    client: &FleetClient,
    name: &str,
    rejected: &Rejected,
) -> Result<(), CoordError> {
    let from = format!("{RESULTS}/{name}");
    let to = format!("{REJECTED}/{name}");
    let data = serde_json::to_vec(rejected).expect("a rejection serializes");
    loop {
        let existing = client
            .check_stat(&to)
            .await
            .map_err(|e| CoordError::zk("stat", &to, e))?;
        let mut txn = Txn::new("move (multi)", &from);
        if existing.is_some() {
            // The older rejection leaves the ledger.
            let old = client
                .get_data(&to)
                .await
                .ok()
                .map(|(d, _)| codec::entry_bytes(REJECTED, &d));
            txn.set(Label::Rejected, &to, &data, None);
            txn.delete(Label::Entry, &from, None);
            if let Some(old) = old {
                let state = ledger::read(client).await?;
                txn.push(ledger::update(state, state.ledger.minus(old)));
            }
        } else {
            txn.create(Label::Rejected, &to, &data, client.acl());
            txn.delete(Label::Entry, &from, None);
        }
        return match txn.commit(client).await {
            Ok(()) => Ok(()),
            Err(err) if err.is_at(Label::Rejected, &ZkError::NoNode) => {
                // /rejected does not exist yet (or the older rejection went meanwhile).
                mkdir(client, REJECTED).await?;
                continue;
            }
            Err(err) if err.is_at(Label::Rejected, &ZkError::NodeExists) => continue,
            Err(err) if err.is_at(Label::Entry, &ZkError::NoNode) => Ok(()),
            // The ledger moved since read.
            Err(err) if err.is_at(Label::Ledger, &ZkError::BadVersion) => continue,
            Err(err) => Err(err.into_coord()),
        };
    }
}

/// Rejected rounds' numbers.
pub async fn rejected_rounds(client: &FleetClient) -> Result<Vec<u64>, CoordError> {
    Ok(children(client, REJECTED)
        .await?
        .iter()
        .filter_map(|n| parse_name(n))
        .collect())
}

/// The highest round number in `/results` or `/rejected`, if any.
pub async fn highest_round(
    client: &FleetClient,
    mark: Option<&MarkKey>,
) -> Result<Option<u64>, CoordError> {
    // Waiting entries: the highest that reads as the fleet's (a forged one, not yet set
    // aside, does not count).
    let mut waiting: Vec<u64> = children(client, RESULTS)
        .await?
        .iter()
        .filter_map(|n| parse_name(n))
        .collect();
    waiting.sort_unstable_by(|a, b| b.cmp(a));
    let mut highest = None;
    for round in waiting {
        match load(client, &result_path(round), mark).await {
            // A newer agent's round is the fleet's too: numbers continue above it.
            Ok(_) | Err(LoadError::Newer { .. }) => {
                highest = Some(round);
                break;
            }
            Err(LoadError::Gone | LoadError::Corrupt { .. }) => {}
            Err(LoadError::Coord(e)) => return Err(e),
        }
    }
    // Refused entries: only those the API refused (it saw them: the fleet's); entries set
    // aside unread (`status` none: unreadable, invalid, no valid mark) do not count.
    let mut refused: Vec<u64> = children(client, REJECTED)
        .await?
        .iter()
        .filter_map(|n| parse_name(n))
        .collect();
    refused.sort_unstable_by(|a, b| b.cmp(a));
    for round in refused {
        let path = rejected_path(round);
        let Ok((data, _)) = client.get_data(&path).await else {
            continue;
        };
        if serde_json::from_slice::<Rejected>(&data).is_ok_and(|r| r.status.is_some()) {
            highest = highest.max(Some(round));
            break;
        }
    }
    Ok(highest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_and_its_ledger_update_are_labelled() {
        let encoded = Encoded {
            entry: b"{}".to_vec(),
            parts: Vec::new(),
            bytes: 2,
        };
        let state = LedgerState {
            ledger: Ledger::default(),
            version: 4,
        };
        let (ops, after) = entry_ops(&NodeAcl::open(), 7, &encoded, state);
        assert_eq!(ops[0].label, Label::Entry);
        assert_eq!(ops[0].path, result_path(7));
        assert_eq!(ops[1].label, Label::Ledger);
        assert_eq!(
            after,
            Ledger {
                rounds: 1,
                bytes: 2
            }
        );
    }
}
