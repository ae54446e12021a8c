//! The round barrier. `{root}/round` holds the number of the round devices should sample
//! now (ASCII). The leader releases the next round by advancing it in its commit multi;
//! devices wait on a data watch until it passes the last round they sampled, so a device
//! never samples a round twice and never misses the latest one (it may skip rounds it
//! slept through, which is what "at most one reading per round" wants).
//!
//! Only the leader creates `{root}/round`, in the fenced multi that starts a fleet's state
//! (`round::leader`, after asking the API where round numbers continue). A device that
//! finds it absent waits for it. A device compares rounds only within one incarnation of the
//! node (its creation zxid and time): when ZooKeeper lost its data or the root was deleted,
//! the leader's new `{root}/round` is followed whatever its number, so no stale high-water
//! mark can block a device.
//!
//! For kazoo users, the same multi removes and re-creates `{root}/barrier`: a kazoo
//! `Barrier(client, path).wait()` returns at every release.

use zookeeper_client::{Error, OneshotWatcher, Stat};

use super::{
    CoordError, FleetClient, NodeAcl, Session, SessionStatus,
    paths::{BARRIER, ROUND},
    txn::{Label, Op},
    wait_for_change,
};

/// The current round, the version of `{root}/round` it was read at, and which incarnation
/// of the node it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundState {
    pub round: u64,
    pub version: i32,
    /// The node's creation zxid and time (ms): a new fleet state has a new pair.
    pub created: (i64, i64),
}

impl RoundState {
    fn read(data: &[u8], stat: &Stat) -> Result<Self, CoordError> {
        Ok(Self {
            round: decode(data)?,
            version: stat.version,
            created: (stat.czxid, stat.ctime),
        })
    }

    /// Whether this is a later write of the round than `before` saw: a newer version of the
    /// same node, or any round of a node created since (the fleet's state was started
    /// again). Versions, not round numbers: when the leader writes back a round someone
    /// else moved ahead, devices follow it instead of waiting for the forged number.
    pub fn is_after(&self, before: &RoundState) -> bool {
        self.created != before.created || self.version > before.version
    }
}

/// ASCII digits within 64 bits, nothing else (no sign, no spaces inside): strict, so that a
/// value written by hand cannot wrap or be read as something it is not.
fn decode(data: &[u8]) -> Result<u64, CoordError> {
    let text = String::from_utf8_lossy(data);
    let text = text.trim();
    let parsed = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    };
    parsed.ok_or_else(|| CoordError::BadData {
        path: ROUND.into(),
        found: crate::text::one_line_bounded(text, 64),
        expected: "a round number (decimal digits, within 64 bits)",
    })
}

/// Writing `{root}/round` back to `round` (the leader refusing a value it did not write),
/// only if unchanged since `current` was read.
pub fn restore(current: RoundState, round: u64) -> Op {
    let data = round.to_string();
    Op::set(Label::Round, ROUND, data.as_bytes(), Some(current.version))
}

/// The current round; `None` while the fleet has no state (a new fleet, or ZooKeeper lost
/// its data): the leader starts it.
pub async fn current(client: &FleetClient) -> Result<Option<RoundState>, CoordError> {
    Ok(current_released(client).await?.map(|(state, _)| state))
}

/// The current round and when it was released: the node's last write, in milliseconds since
/// the Unix epoch by the ZooKeeper server's clock. A new leader finishes the round its
/// predecessor released on the predecessor's schedule (`round::handover`).
pub async fn current_released(
    client: &FleetClient,
) -> Result<Option<(RoundState, i64)>, CoordError> {
    match client.get_data(ROUND).await {
        Ok((data, stat)) => RoundState::read(&data, &stat).map(|state| Some((state, stat.mtime))),
        Err(Error::NoNode) => Ok(None),
        Err(e) => Err(CoordError::zk("read", ROUND, e)),
    }
}

/// The node's state when its data is not a round number (written by hand): round 0, which
/// the leader refuses and writes back. `None` when absent.
pub async fn current_unreadable(client: &FleetClient) -> Result<Option<RoundState>, CoordError> {
    match client.check_stat(ROUND).await {
        Ok(Some(stat)) => Ok(Some(RoundState {
            round: 0,
            version: stat.version,
            created: (stat.czxid, stat.ctime),
        })),
        Ok(None) => Ok(None),
        Err(e) => Err(CoordError::zk("stat", ROUND, e)),
    }
}

/// Waits until the round is after `after` (see [`RoundState::is_after`]; any round when
/// `None`) and returns it. Waits for `{root}/round` to exist when it does not. Survives
/// disconnections and session rebuilds; `Err(Closed)` when the session closes.
pub async fn wait_for_round(
    session: &Session,
    after: Option<RoundState>,
) -> Result<RoundState, CoordError> {
    RoundWatch::new(session, after).next().await
}

/// A device's view of `{root}/round`, round after round. It keeps the watch set by its last
/// read, so that waiting for the next round reads the node once, when it changed — not once
/// to find it unchanged and set a watch, then again when the watch fires.
pub struct RoundWatch {
    session: Session,
    last: Option<RoundState>,
    /// The watch set by the last read, and the session generation it belongs to.
    pending: Option<(OneshotWatcher, u64)>,
}

impl std::fmt::Debug for RoundWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundWatch")
            .field("last", &self.last)
            .field("watching", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

impl RoundWatch {
    /// Rounds after `after` (any round when `None`).
    pub fn new(session: &Session, after: Option<RoundState>) -> Self {
        Self {
            session: session.clone(),
            last: after,
            pending: None,
        }
    }

    /// The next round after the last one returned (see [`RoundState::is_after`]). Waits for
    /// `{root}/round` to exist when it does not. Survives disconnections and session
    /// rebuilds; `Err(Closed)` when the session closes.
    pub async fn next(&mut self) -> Result<RoundState, CoordError> {
        let mut status = self.session.status();
        let closing = self.session.closing();
        loop {
            if let Some((watcher, generation)) = self.pending.take() {
                // A watch from an older session never fires: read again instead.
                if self.session.current_status() == (SessionStatus::Connected { generation })
                    && !wait_for_change(Some(watcher), &mut status, &closing).await
                {
                    return Err(CoordError::Closed);
                }
            }
            let generation = self.session.connected().await?;
            let client = self.session.client()?;
            let watched = match client.get_and_watch_data(ROUND).await {
                Ok((data, stat, watcher)) => {
                    let state = RoundState::read(&data, &stat)?;
                    self.pending = Some((watcher, generation));
                    if self.last.is_none_or(|a| state.is_after(&a)) {
                        self.last = Some(state);
                        return Ok(state);
                    }
                    continue;
                }
                Err(Error::NoNode) => match client.check_and_watch_stat(ROUND).await {
                    Ok((Some(_), _)) => continue,
                    Ok((None, watcher)) => Some(watcher),
                    Err(Error::ConnectionLoss | Error::SessionExpired | Error::ClientClosed) => {
                        None
                    }
                    Err(e) => return Err(CoordError::zk("watch", ROUND, e)),
                },
                Err(Error::ConnectionLoss | Error::SessionExpired | Error::ClientClosed) => None,
                Err(e) => return Err(CoordError::zk("watch", ROUND, e)),
            };
            drop(client);
            if !wait_for_change(watched, &mut status, &closing).await {
                return Err(CoordError::Closed);
            }
        }
    }
}

/// The start of a fleet's state: `{root}/round` at `round`, and `{root}/barrier` unless it
/// `barrier_exists` already.
pub fn start(acl: &NodeAcl, round: u64, barrier_exists: bool) -> Vec<Op> {
    let mut ops = vec![Op::create(
        Label::Round,
        ROUND,
        round.to_string().as_bytes(),
        acl,
    )];
    if !barrier_exists {
        ops.push(Op::create(Label::Barrier, BARRIER, b"", acl));
    }
    ops
}

/// Creates `{root}/round` at 1 and `{root}/barrier` when absent, unfenced. For tests and
/// tools only: a running fleet's leader starts its state itself (`round::resume`), where
/// round numbers continue.
pub async fn ensure(client: &FleetClient) -> Result<(), CoordError> {
    for (path, data) in [(ROUND, b"1".as_slice()), (BARRIER, b"".as_slice())] {
        match client.create(path, data, &client.persistent()).await {
            Ok(_) | Err(Error::NodeExists) => {}
            Err(e) => return Err(CoordError::zk("create", path, e)),
        }
    }
    Ok(())
}

/// Whether `{root}/barrier` exists.
pub async fn barrier_exists(client: &FleetClient) -> Result<bool, CoordError> {
    client
        .check_stat(BARRIER)
        .await
        .map(|stat| stat.is_some())
        .map_err(|e| CoordError::zk("stat", BARRIER, e))
}

/// The release of round `current.round + 1`: advances `{root}/round` (only if unchanged
/// since read) and removes/re-creates `{root}/barrier`.
pub fn release(acl: &NodeAcl, current: RoundState) -> Result<[Op; 3], CoordError> {
    let next = current
        .round
        .checked_add(1)
        .ok_or_else(|| CoordError::BadData {
            path: ROUND.into(),
            found: current.round.to_string(),
            expected: "a round number below the largest one",
        })?
        .to_string();
    Ok([
        Op::set(Label::Round, ROUND, next.as_bytes(), Some(current.version)),
        Op::delete(Label::Barrier, BARRIER, None),
        Op::create(Label::Barrier, BARRIER, b"", acl),
    ])
}
