//! The leader's view of the fleet: which devices are live and whose node changed since the
//! leader last read it, kept by one persistent recursive watch on `{root}/devices`.
//!
//! Only the leader keeps a roster. Followers set no watch on `{root}/devices`: with a child
//! watch on every device, each join or leave made every device list the whole fleet again
//! (N list requests of N names: a start storm of 1,000 devices is a million names sent).
//! The leader's one watch delivers an event per device write, so a round's collection reads
//! only the nodes that changed, in multi-reads of [`READ_BATCH`], instead of listing and
//! reading the fleet every few milliseconds.
//!
//! Events can be lost while the connection is down ([ZOOKEEPER-4698]): after a disconnection,
//! and whenever the watch is set again (a new session), the roster lists the devices and
//! treats every node as changed.
//!
//! [ZOOKEEPER-4698]: https://issues.apache.org/jira/browse/ZOOKEEPER-4698

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    panic::AssertUnwindSafe,
    time::Duration,
};

use futures_util::FutureExt;
use tokio::time::Instant;
use zookeeper_client::{
    AddWatchMode, EventType, MultiReadResult, PersistentWatcher, SessionState, WatchedEvent,
};

use super::{
    CoordError, Session, SessionStatus,
    paths::{self, DEVICES},
};
use crate::text;

/// Paths per multi-read: with 128-byte ids a batch's request stays near 150 KiB and its
/// answer (readings of ~60 bytes and their stats) near 150 KiB, far below ZooKeeper's 1 MB
/// packet limit (`jute.maxbuffer`) at any fleet size.
pub const READ_BATCH: usize = 1000;

/// While no watch can be set (disconnected), how often [`Roster::wait`] gives the caller a
/// chance to try again.
const RETRY: Duration = Duration::from_millis(200);

/// After the first change, how long [`Roster::wait`] lets more arrive before returning: the
/// readings of a round come within milliseconds of each other, and reading each one as it
/// comes made one request per device (measured: ~1,000 read requests a round at 1,000
/// devices; 5 ms batches them).
const GATHER: Duration = Duration::from_millis(5);

/// Joins and leaves up to this many at a time are logged one by one; more are summarised
/// (a fleet of thousands starting or reconnecting would otherwise fill the log).
const LOG_EACH: usize = 20;

/// See the module documentation. Dropping it removes the watch.
pub struct Roster {
    session: Session,
    watch: Option<Watch>,
    /// The live devices, by id.
    members: BTreeSet<String>,
    /// Devices whose node may have changed since it was last read.
    changed: HashSet<String>,
    /// What each device's node held when last read.
    data: HashMap<String, Vec<u8>>,
    /// The member list must be read again (first use, or events may have been lost).
    relist: bool,
    /// Whether the member list was read at least once (the first list's devices are not
    /// logged as joining).
    listed: bool,
    /// The member list line is due.
    announce: bool,
    /// The last refresh failed (logged once per run of failures).
    failing: bool,
    /// Joined and left since the last log line.
    joined: Vec<String>,
    left: Vec<String>,
}

struct Watch {
    watcher: PersistentWatcher,
    /// The session generation the watch was set in: a rebuilt session has none.
    generation: u64,
}

impl std::fmt::Debug for Roster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roster")
            .field("members", &self.members.len())
            .field("changed", &self.changed.len())
            .field("watching", &self.watch.is_some())
            .finish_non_exhaustive()
    }
}

impl Roster {
    /// A roster that sets its watch on first [`Roster::refresh`].
    pub fn new(session: &Session) -> Self {
        Self {
            session: session.clone(),
            watch: None,
            members: BTreeSet::new(),
            changed: HashSet::new(),
            data: HashMap::new(),
            relist: true,
            listed: false,
            announce: false,
            failing: false,
            joined: Vec::new(),
            left: Vec::new(),
        }
    }

    /// Brings the view up to date: sets the watch (again, in a rebuilt session), lists the
    /// devices when events may have been missed, and applies the events received so far.
    /// On an error the last view stands and the next call tries again; the first error of a
    /// run of them is logged, and the recovery.
    pub async fn refresh(&mut self) -> Result<(), CoordError> {
        let result = self.try_refresh().await;
        match (&result, self.failing) {
            (Err(CoordError::Closed), _) => {}
            (Err(err), false) => {
                self.failing = true;
                tracing::warn!(error = %err, "cannot follow the member list; collecting with the last one known until it works again");
            }
            (Ok(()), true) => {
                self.failing = false;
                tracing::info!(
                    members = self.members.len(),
                    "following the member list again"
                );
            }
            _ => {}
        }
        result
    }

    async fn try_refresh(&mut self) -> Result<(), CoordError> {
        let generation = match self.session.current_status() {
            SessionStatus::Connected { generation } => generation,
            SessionStatus::Closed => return Err(CoordError::Closed),
            _ => {
                self.drain();
                return Ok(());
            }
        };
        if self
            .watch
            .as_ref()
            .is_none_or(|w| w.generation != generation)
        {
            self.watch = None;
            let client = self.session.client()?;
            // The watch first, then the list: nothing that happens between is missed.
            let watcher = match client
                .watch(DEVICES, AddWatchMode::PersistentRecursive)
                .await
            {
                Ok(watcher) => watcher,
                Err(zookeeper_client::Error::Unimplemented) => {
                    return Err(CoordError::Settings(
                        "this ZooKeeper has no persistent watches: fleetmeter needs ZooKeeper 3.6 or later".into(),
                    ));
                }
                Err(e) => return Err(CoordError::zk("watch", DEVICES, e)),
            };
            self.watch = Some(Watch {
                watcher,
                generation,
            });
            self.relist = true;
        }
        self.drain();
        if self.relist {
            self.list().await?;
        }
        self.log_changes();
        Ok(())
    }

    /// The live devices, by id.
    pub fn members(&self) -> Vec<String> {
        self.members.iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The node data of each of `devices`, in order. Nodes that changed since the roster
    /// last read them are read again, in multis of [`READ_BATCH`]; the others come from
    /// what it read before. With `all`, every device's latest data is returned; without,
    /// only the data just read (`None` for the rest). `None` also for a node that is gone or
    /// was never read. A failed read marks its devices changed again.
    pub async fn read(
        &mut self,
        devices: &[&String],
        all: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, CoordError> {
        self.drain();
        let wanted: Vec<&String> = devices
            .iter()
            .filter(|d| self.changed.remove(d.as_str()))
            .copied()
            .collect();
        let client = match self.session.client() {
            Ok(client) => client,
            Err(err) => {
                self.changed.extend(wanted.iter().map(|d| (*d).clone()));
                return Err(err);
            }
        };
        for batch in wanted.chunks(READ_BATCH) {
            let mut reader = client.new_multi_reader();
            let added = batch
                .iter()
                .try_for_each(|device| reader.add_get_data(&paths::device(device)));
            let read = match added {
                Ok(()) => reader.commit().await,
                Err(e) => Err(e),
            };
            match read {
                Ok(results) => {
                    for (device, result) in batch.iter().zip(results) {
                        match result {
                            MultiReadResult::Data { data, .. } => {
                                self.data.insert((*device).clone(), data);
                            }
                            _ => {
                                self.data.remove(device.as_str());
                            }
                        }
                    }
                }
                Err(e) => {
                    // Nothing of this call is returned: every node stays to be read.
                    self.changed.extend(wanted.iter().map(|d| (*d).clone()));
                    return Err(CoordError::zk("read", DEVICES, e));
                }
            }
        }
        let fresh: HashSet<&str> = wanted.iter().map(|d| d.as_str()).collect();
        Ok(devices
            .iter()
            .map(|d| {
                (all || fresh.contains(d.as_str()))
                    .then(|| self.data.get(d.as_str()).cloned())
                    .flatten()
            })
            .collect())
    }

    /// Waits for the next change (a device joined, left or wrote its node) or until `until`,
    /// whichever comes first, then a few milliseconds more for the changes that follow it,
    /// and applies every event received.
    pub async fn wait(&mut self, until: Instant) {
        let closing = self.session.closing();
        let usable = self.watch.as_ref().is_some_and(|w| {
            self.session.current_status().generation() == Some(w.generation)
                && !closing.is_cancelled()
        });
        match (&mut self.watch, usable) {
            (Some(watch), true) => {
                let event = tokio::select! {
                    biased;
                    () = closing.cancelled() => None,
                    // The client panics when asked for an event after the session ended; a
                    // watch is dropped on the terminal event, this only guards the rest.
                    event = AssertUnwindSafe(watch.watcher.changed()).catch_unwind() => Some(event),
                    () = tokio::time::sleep_until(until) => return,
                };
                match event {
                    Some(Ok(event)) => self.apply(event),
                    _ => self.watch = None,
                }
                tokio::time::sleep_until(until.min(Instant::now() + GATHER)).await;
                self.drain();
            }
            _ => {
                self.watch = None;
                tokio::time::sleep_until(until.min(Instant::now() + RETRY)).await;
            }
        }
    }

    /// Applies the events already received, without waiting.
    fn drain(&mut self) {
        while let Some(watch) = &mut self.watch {
            match AssertUnwindSafe(watch.watcher.changed())
                .catch_unwind()
                .now_or_never()
            {
                Some(Ok(event)) => self.apply(event),
                Some(Err(_)) => self.watch = None,
                None => return,
            }
        }
    }

    fn apply(&mut self, event: WatchedEvent) {
        let child = event
            .path
            .strip_prefix(DEVICES)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|id| !id.is_empty() && !id.contains('/'));
        match (event.event_type, child) {
            (EventType::Session, _) => {
                if event.session_state.is_terminated() {
                    // No event comes after this one; the next refresh sets a new watch.
                    self.watch = None;
                }
                if event.session_state != SessionState::SyncConnected {
                    self.relist = true;
                }
            }
            (EventType::NodeCreated | EventType::NodeDataChanged, Some(id)) => {
                if self.members.insert(id.to_owned()) {
                    self.joined.push(id.to_owned());
                }
                self.changed.insert(id.to_owned());
            }
            (EventType::NodeDeleted, Some(id)) => {
                if self.members.remove(id) {
                    self.left.push(id.to_owned());
                }
                self.changed.remove(id);
                self.data.remove(id);
            }
            // `{root}/devices` itself deleted or created (a root deleted by hand).
            (EventType::NodeDeleted | EventType::NodeCreated, None) => self.relist = true,
            _ => {}
        }
    }

    /// Reads the member list; every member's node counts as changed.
    async fn list(&mut self) -> Result<(), CoordError> {
        let client = self.session.client()?;
        let children = match client.list_children(DEVICES).await {
            Ok(children) => children,
            Err(zookeeper_client::Error::NoNode) => Vec::new(),
            Err(e) => return Err(CoordError::zk("list", DEVICES, e)),
        };
        let now: BTreeSet<String> = children.into_iter().collect();
        if self.listed {
            self.joined
                .extend(now.difference(&self.members).cloned().collect::<Vec<_>>());
            self.left
                .extend(self.members.difference(&now).cloned().collect::<Vec<_>>());
        }
        self.listed = true;
        self.announce = true;
        self.changed = now.iter().cloned().collect();
        self.data.retain(|id, _| now.contains(id));
        self.members = now;
        self.relist = false;
        Ok(())
    }

    /// One line per join and leave (a summary when many), and the member list.
    fn log_changes(&mut self) {
        let (joined, left) = (
            std::mem::take(&mut self.joined),
            std::mem::take(&mut self.left),
        );
        if joined.is_empty() && left.is_empty() && !self.announce {
            return;
        }
        self.announce = false;
        log_each("joined", &joined);
        log_each("left", &left);
        let count = self.members.len();
        if count <= LOG_EACH {
            let members: Vec<&str> = self.members.iter().map(String::as_str).collect();
            tracing::info!(members = %text::one_line(&members.join(", ")), count, "devices connected");
        } else {
            tracing::info!(count, "devices connected");
        }
    }
}

fn log_each(what: &str, devices: &[String]) {
    if devices.len() <= LOG_EACH {
        for device in devices {
            tracing::info!(device = %text::one_line(device), "device {what}");
        }
    } else {
        tracing::info!(count = devices.len(), "{} devices {what}", devices.len());
    }
}
