//! The round barrier. `{root}/round` holds the number of the round devices should sample
//! now (ASCII). The leader releases the next round by advancing it in its commit multi;
//! devices wait on a data watch until it passes the last round they sampled, so a device
//! never samples a round twice and never misses the latest one (it may skip rounds it
//! slept through, which is what "at most one reading per round" wants).
//!
//! For kazoo users, the same multi removes and re-creates `{root}/barrier`: a kazoo
//! `Barrier(client, path).wait()` returns at every release.

use zookeeper_client::{Client, Error, MultiWriter};

use super::{
    CoordError, Session,
    paths::{BARRIER, ROUND},
    persistent, wait_for_change,
};

/// The current round and the version of `{root}/round` it was read at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundState {
    pub round: u64,
    pub version: i32,
}

fn decode(data: &[u8]) -> Result<u64, CoordError> {
    let text = String::from_utf8_lossy(data);
    text.trim().parse().map_err(|_| CoordError::BadData {
        path: ROUND.into(),
        found: text.trim().into(),
        expected: "a round number",
    })
}

/// Creates `{root}/round` (at 1) and `{root}/barrier` if absent.
pub async fn ensure(client: &Client) -> Result<(), CoordError> {
    for (path, data) in [(ROUND, b"1".as_slice()), (BARRIER, b"".as_slice())] {
        match client.create(path, data, &persistent()).await {
            Ok(_) | Err(Error::NodeExists) => {}
            Err(e) => return Err(CoordError::zk("create", path, e)),
        }
    }
    Ok(())
}

pub async fn current(client: &Client) -> Result<RoundState, CoordError> {
    loop {
        match client.get_data(ROUND).await {
            Ok((data, stat)) => {
                return Ok(RoundState {
                    round: decode(&data)?,
                    version: stat.version,
                });
            }
            Err(Error::NoNode) => ensure(client).await?,
            Err(e) => return Err(CoordError::zk("read", ROUND, e)),
        }
    }
}

/// Waits until the round is greater than `after` (any round when `None`) and returns it.
/// Survives disconnections and session rebuilds; `Err(Closed)` when the session closes.
pub async fn wait_for_round(session: &Session, after: Option<u64>) -> Result<u64, CoordError> {
    let mut status = session.status();
    let closing = session.closing();
    loop {
        session.connected().await?;
        let client = session.client()?;
        let watched = match client.get_and_watch_data(ROUND).await {
            Ok((data, _, watcher)) => {
                let round = decode(&data)?;
                if after.is_none_or(|a| round > a) {
                    return Ok(round);
                }
                Some(watcher)
            }
            Err(Error::NoNode) => {
                ensure(&client).await?;
                continue;
            }
            Err(Error::ConnectionLoss | Error::SessionExpired | Error::ClientClosed) => None,
            Err(e) => return Err(CoordError::zk("watch", ROUND, e)),
        };
        drop(client);
        if !wait_for_change(watched, &mut status, &closing).await {
            return Err(CoordError::Closed);
        }
    }
}

/// Adds the release of round `current.round + 1` to a multi: advances `{root}/round`
/// (only if unchanged since read) and removes/re-creates `{root}/barrier`.
pub fn add_release(writer: &mut MultiWriter<'_>, current: RoundState) -> Result<(), CoordError> {
    let next = (current.round + 1).to_string();
    writer
        .add_set_data(ROUND, next.as_bytes(), Some(current.version))
        .map_err(|e| CoordError::zk("set (in multi)", ROUND, e))?;
    writer
        .add_delete(BARRIER, None)
        .map_err(|e| CoordError::zk("delete (in multi)", BARRIER, e))?;
    writer
        .add_create(BARRIER, b"", &persistent())
        .map_err(|e| CoordError::zk("create (in multi)", BARRIER, e))?;
    Ok(())
}
