//! The ledger at `/outbox`, `{"rounds": R, "bytes": B}`: the entries in `/results` and
//! `/rejected` together and the size of their rounds' JSON. Every transaction that adds or
//! removes an entry carries its update ([`update`]), version-checked, so it is exact; a
//! missing or unreadable ledger is recounted from the entries ([`recount`]).

use serde::{Deserialize, Serialize};
use zookeeper_client::Error as ZkError;

use super::{codec::entry_bytes, names::children};
use crate::coord::{
    CoordError, FleetClient,
    paths::{OUTBOX, REJECTED, RESULTS},
    txn::{Label, Op},
};

/// How many rounds the outbox holds and the size of their JSON; also its bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub rounds: u64,
    pub bytes: u64,
}

impl Ledger {
    /// Whether one more round of `bytes` fits within `max`.
    pub fn fits(&self, bytes: u64, max: &Ledger) -> bool {
        self.rounds < max.rounds && self.bytes.saturating_add(bytes) <= max.bytes
    }

    /// With one more round of `bytes`.
    pub fn plus(self, bytes: u64) -> Ledger {
        Ledger {
            rounds: self.rounds + 1,
            bytes: self.bytes.saturating_add(bytes),
        }
    }

    /// With one round of `bytes` less (never below zero).
    pub fn minus(self, bytes: u64) -> Ledger {
        Ledger {
            rounds: self.rounds.saturating_sub(1),
            bytes: self.bytes.saturating_sub(bytes),
        }
    }
}

/// The ledger and the version of `/outbox` it was read at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerState {
    pub ledger: Ledger,
    pub version: i32,
}

/// The ledger, recounted from the entries when it is absent or unreadable.
pub async fn read(client: &FleetClient) -> Result<LedgerState, CoordError> {
    match client.get_data(OUTBOX).await {
        Ok((data, stat)) => match serde_json::from_slice::<Ledger>(&data) {
            Ok(ledger) => Ok(LedgerState {
                ledger,
                version: stat.version,
            }),
            Err(_) => recount(client).await,
        },
        Err(ZkError::NoNode) => recount(client).await,
        Err(e) => Err(CoordError::zk("read", OUTBOX, e)),
    }
}

/// The ledger as it is stored, without recounting: `None` when there is none.
pub async fn peek(client: &FleetClient) -> Result<Option<Ledger>, CoordError> {
    match client.get_data(OUTBOX).await {
        Ok((data, _)) => Ok(serde_json::from_slice(&data).ok()),
        Err(ZkError::NoNode) => Ok(None),
        Err(e) => Err(CoordError::zk("read", OUTBOX, e)),
    }
}

/// Counts the entries in `/results` and `/rejected` and writes the ledger.
pub async fn recount(client: &FleetClient) -> Result<LedgerState, CoordError> {
    loop {
        let version = match client.check_stat(OUTBOX).await {
            Ok(stat) => stat.map(|s| s.version),
            Err(e) => return Err(CoordError::zk("stat", OUTBOX, e)),
        };
        let mut ledger = Ledger::default();
        for dir in [RESULTS, REJECTED] {
            for name in children(client, dir).await? {
                let path = format!("{dir}/{name}");
                let Ok((data, _)) = client.get_data(&path).await else {
                    continue;
                };
                ledger = ledger.plus(entry_bytes(dir, &data));
            }
        }
        let data = serde_json::to_vec(&ledger).expect("a ledger serializes");
        let written = match version {
            Some(version) => client
                .set_data(OUTBOX, &data, Some(version))
                .await
                .map(|stat| stat.version),
            None => client
                .create(OUTBOX, &data, &client.persistent())
                .await
                .map(|(stat, _)| stat.version),
        };
        match written {
            Ok(version) => {
                tracing::info!(
                    rounds = ledger.rounds,
                    bytes = ledger.bytes,
                    "outbox ledger recounted"
                );
                return Ok(LedgerState { ledger, version });
            }
            Err(ZkError::BadVersion | ZkError::NodeExists) => continue,
            Err(e) => return Err(CoordError::zk("write", OUTBOX, e)),
        }
    }
}

/// The ledger's update to `new`, applied only if nobody changed it since `state` was read
/// (the transaction fails on [`Label::Ledger`] with BadVersion otherwise).
pub fn update(state: LedgerState, new: Ledger) -> Op {
    let data = serde_json::to_vec(&new).expect("a ledger serializes");
    Op::set(Label::Ledger, OUTBOX, &data, Some(state.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_bounds_rounds_and_bytes() {
        let max = Ledger {
            rounds: 2,
            bytes: 100,
        };
        assert!(Ledger::default().fits(100, &max));
        assert!(!Ledger::default().fits(101, &max));
        assert!(
            !Ledger {
                rounds: 2,
                bytes: 0
            }
            .fits(1, &max)
        );
        assert_eq!(Ledger::default().plus(10).minus(10), Ledger::default());
        assert_eq!(
            Ledger::default().minus(10),
            Ledger::default(),
            "never below zero"
        );
    }
}
