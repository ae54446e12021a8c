//! The device's ephemeral node `{root}/devices/{id}`, holding its latest reading, and the
//! fleet's member list.
//!
//! - A device started with the id of a live device waits, logging why, until that node is
//!   gone (the original crashed or silently shared the node).
//! - A write that finds the node gone re-creates it (the original's NoNodeError handling),
//!   and after a session is rebuilt the node is re-created with the latest data.
//! - [`watch_members`] follows the children of `{root}/devices`, logging joins and leaves.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};
use zookeeper_client::Error;

use super::{
    CoordError, Session, SessionStatus,
    paths::{self, DEVICES},
    wait_for_change,
};
use crate::text;

/// Checks a device id can name a node: 1–128 characters, no `/`, not `.` or `..`.
pub fn validate_id(id: &str) -> Result<(), CoordError> {
    crate::wire::validate_device_id(id).map_err(|e| CoordError::Settings(format!("device id {e}")))
}

/// This device's membership. Dropping it stops re-creating the node after expiry; the node
/// itself goes with the session.
#[derive(Debug)]
pub struct Membership {
    session: Session,
    path: String,
    latest: Arc<Mutex<Vec<u8>>>,
    keeper: JoinHandle<()>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl Membership {
    /// Claims `{root}/devices/{id}` with `data`, waiting while a live device holds it.
    pub async fn join(session: &Session, id: &str, data: Vec<u8>) -> Result<Self, CoordError> {
        validate_id(id)?;
        let path = paths::device(id);
        let generation = claim(session, &path, &data).await?;
        let latest = Arc::new(Mutex::new(data));
        let keeper = tokio::spawn(keep(
            session.clone(),
            path.clone(),
            latest.clone(),
            generation,
        ));
        tracing::info!(device = id, "joined the fleet");
        Ok(Self {
            session: session.clone(),
            path,
            latest,
            keeper,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Writes the device's latest reading to its node, re-creating the node if it is gone.
    pub async fn publish(&self, data: Vec<u8>) -> Result<(), CoordError> {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = data.clone();
        let client = self.session.client()?;
        match client.set_data(&self.path, &data, None).await {
            Ok(_) => Ok(()),
            Err(Error::NoNode) => {
                tracing::warn!(node = %self.path, "device node was removed (connection problem); re-creating it");
                drop(client);
                claim(&self.session, &self.path, &data).await.map(|_| ())
            }
            Err(e) => Err(CoordError::zk("set", &self.path, e)),
        }
    }
}

/// Creates the ephemeral node, or waits while another session's node holds the id.
/// Returns the session generation the node belongs to.
async fn claim(session: &Session, path: &str, data: &[u8]) -> Result<u64, CoordError> {
    let mut status = session.status();
    let closing = session.closing();
    let mut warned = false;
    loop {
        let generation = session.connected().await?;
        let client = session.client()?;
        match client.create(path, data, &client.acl().ephemeral()).await {
            Ok(_) => return Ok(generation),
            Err(Error::NoNode) => session.mkdir(DEVICES).await?,
            Err(Error::NodeExists) => match client.check_and_watch_stat(path).await {
                Ok((Some(stat), watcher)) => {
                    if stat.ephemeral_owner == client.session_id().0 {
                        // Ours: a create that was retried after a lost reply.
                        client
                            .set_data(path, data, None)
                            .await
                            .map_err(|e| CoordError::zk("set", path, e))?;
                        return Ok(generation);
                    }
                    if !warned {
                        tracing::warn!(
                            node = path,
                            owner = %format!("{:#x}", stat.ephemeral_owner),
                            "this device id is in use by another live device; waiting until its node is gone"
                        );
                        warned = true;
                    }
                    drop(client);
                    tokio::select! {
                        () = closing.cancelled() => return Err(CoordError::Closed),
                        _ = watcher.changed() => {}
                        _ = status.changed() => {}
                    }
                }
                Ok((None, _)) => {}
                Err(_) => wait_a_moment(&mut status).await,
            },
            Err(Error::ConnectionLoss | Error::SessionExpired | Error::ClientClosed) => {
                wait_a_moment(&mut status).await;
            }
            Err(e) => return Err(CoordError::zk("create", path, e)),
        }
    }
}

async fn wait_a_moment(status: &mut watch::Receiver<SessionStatus>) {
    let _ = tokio::time::timeout(Duration::from_millis(200), status.changed()).await;
}

/// Re-creates the node after each session rebuild.
async fn keep(session: Session, path: String, latest: Arc<Mutex<Vec<u8>>>, mut generation: u64) {
    let mut status = session.status();
    loop {
        if status.changed().await.is_err() {
            return;
        }
        let now = *status.borrow_and_update();
        match now {
            SessionStatus::Closed => return,
            SessionStatus::Connected { generation: g } if g != generation => {
                let data = latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
                match claim(&session, &path, &data).await {
                    Ok(g) => {
                        generation = g;
                        tracing::info!(node = %path, generation, "device node re-created in the new session");
                    }
                    Err(CoordError::Closed) => return,
                    Err(err) => {
                        tracing::error!(node = %path, error = %err, "cannot re-create the device node")
                    }
                }
            }
            _ => {}
        }
    }
}

/// Follows `{root}/devices`: the sorted member ids, updated on every join and leave (logged,
/// like the original's "Dispositivos conectados").
pub fn watch_members(session: &Session) -> (watch::Receiver<Vec<String>>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Vec::new());
    let task = tokio::spawn(follow_members(session.clone(), tx));
    (rx, task)
}

async fn follow_members(session: Session, tx: watch::Sender<Vec<String>>) {
    let mut status = session.status();
    let closing = session.closing();
    let mut known: Option<BTreeSet<String>> = None;
    loop {
        if session.connected().await.is_err() {
            return;
        }
        let Ok(client) = session.client() else { return };
        let watcher = match client.list_and_watch_children(DEVICES).await {
            Ok((children, watcher)) => {
                let now: BTreeSet<String> = children.into_iter().collect();
                if let Some(before) = &known {
                    log_changes("joined", now.difference(before).collect());
                    log_changes("left", before.difference(&now).collect());
                }
                if known.as_ref() != Some(&now) {
                    let members: Vec<String> = now.iter().cloned().collect();
                    if members.len() <= LOG_EACH {
                        tracing::info!(members = %text::one_line(&members.join(", ")), count = members.len(), "devices connected");
                    } else {
                        tracing::info!(count = members.len(), "devices connected");
                    }
                    tx.send_replace(members);
                    known = Some(now);
                }
                Some(watcher)
            }
            Err(Error::NoNode) => {
                if let Err(err) = session.mkdir(DEVICES).await {
                    tracing::warn!(error = %err, "cannot create the devices node");
                    drop(client);
                    tokio::select! {
                        () = closing.cancelled() => return,
                        () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    }
                }
                continue;
            }
            Err(_) => None,
        };
        drop(client);
        if !wait_for_change(watcher, &mut status, &closing).await {
            return;
        }
    }
}

/// Joins and leaves up to this many at a time are logged one by one; more are summarised
/// (a fleet of thousands starting or reconnecting would otherwise fill the log).
const LOG_EACH: usize = 20;

fn log_changes(what: &str, devices: Vec<&String>) {
    if devices.len() <= LOG_EACH {
        for device in devices {
            tracing::info!(device = %text::one_line(device), "device {what}");
        }
    } else {
        tracing::info!(count = devices.len(), "{} devices {what}", devices.len());
    }
}
