//! The device's ephemeral node `{root}/devices/{id}`, holding its latest reading.
//!
//! - A device started with the id of a live device waits, logging why, until that node is
//!   gone (the original crashed or silently shared the node).
//! - A write that finds the node gone re-creates it (the original's NoNodeError handling),
//!   and after a session is rebuilt the node is re-created with the latest data.
//!
//! The member list is the leader's alone (`super::roster`): followers set no watch on
//! `{root}/devices`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};
use zookeeper_client::Error;

use super::{
    CoordError, Session, SessionStatus,
    paths::{self, DEVICES},
};

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
                        match client.set_data(path, data, None).await {
                            Ok(_) => return Ok(generation),
                            Err(e) if super::transient(&e) => {
                                drop(client);
                                wait_a_moment(&mut status).await;
                                continue;
                            }
                            Err(e) => return Err(CoordError::zk("set", path, e)),
                        }
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
            // A start storm (a site powered on at once) or a server away: wait, never exit.
            Err(e) if super::transient(&e) => wait_a_moment(&mut status).await,
            Err(e) => return Err(CoordError::zk("create", path, e)),
        }
    }
}

/// Until the session changes, or 100–300 ms (jittered: devices that failed together do not
/// retry together).
async fn wait_a_moment(status: &mut watch::Receiver<SessionStatus>) {
    let pause = Duration::from_millis(rand::random_range(100..300));
    let _ = tokio::time::timeout(pause, status.changed()).await;
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
