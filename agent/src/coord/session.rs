//! The ZooKeeper session, as the rest of the agent sees it.
//!
//! [`SessionStatus`] is a `watch` channel: `Connected` (with a generation that increases each
//! time the session is rebuilt), `Suspended` (disconnected: the session may still be alive
//! and nodes kept, but a leader must stop leading until it has checked), `Lost` (expired:
//! ephemeral nodes and watches are gone; a new session is being built), `Closed`.
//!
//! The client crate's `Client` is dead after expiry, so a supervisor task builds a new one,
//! with back-off, and publishes `Connected` with the next generation: recipes then re-create
//! their ephemeral nodes and watches. [`Session::close`] ends the session at once, so that
//! a leader's successor takes over without waiting for a session timeout.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use zookeeper_client::{Client, SessionState, StateWatcher};

use super::{
    CoordError, FleetClient,
    access::{self, ZkAuth},
};
use crate::backoff::Backoff;

/// How long `close` waits for the client to confirm it sent CloseSession.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Where and how to connect.
#[derive(Clone, Debug, PartialEq)]
pub struct ZkSettings {
    /// `host:port[,host:port...]`.
    pub hosts: String,
    /// The fleet's root node; created if absent.
    pub root: String,
    pub session_timeout: Duration,
    /// How long the first connection may take before `connect` gives up.
    pub connect_timeout: Duration,
    /// The fleet's credentials; `None`: an open fleet.
    pub auth: Option<ZkAuth>,
    /// With credentials, whether a root this agent creates may be read by anyone
    /// (dashboards, kazoo without credentials).
    pub public_read: bool,
    /// TLS to every server (`None`: plaintext).
    pub tls: Option<access::ZkTls>,
}

impl ZkSettings {
    /// An open fleet at `hosts` and `root` with the default timeouts (4 s session, 60 s to
    /// connect): no credentials, no TLS. Set the rest by struct update.
    pub fn new(hosts: impl Into<String>, root: impl Into<String>) -> Self {
        Self {
            hosts: hosts.into(),
            root: root.into(),
            session_timeout: Duration::from_secs(4),
            connect_timeout: Duration::from_secs(60),
            auth: None,
            public_read: false,
            tls: None,
        }
    }

    pub fn validate(&self) -> Result<(), CoordError> {
        Self::validate_hosts(&self.hosts)?;
        Self::validate_root(&self.root)?;
        if self.session_timeout < Duration::from_millis(500) {
            return Err(CoordError::Settings(format!(
                "session timeout must be at least 500 ms, got {:?}",
                self.session_timeout
            )));
        }
        Ok(())
    }

    /// `host:port[,host:port...]`, without a chroot path.
    pub fn validate_hosts(hosts: &str) -> Result<(), CoordError> {
        if hosts.trim().is_empty() || hosts.contains('/') {
            return Err(CoordError::Settings(format!(
                "hosts must be host:port[,host:port...] without a path, got {hosts:?} (set the root separately)"
            )));
        }
        Ok(())
    }

    /// An absolute ZooKeeper path without a trailing slash.
    pub fn validate_root(root: &str) -> Result<(), CoordError> {
        if !root.starts_with('/') || (root.len() > 1 && root.ends_with('/')) {
            return Err(CoordError::Settings(format!(
                "root must be an absolute ZooKeeper path like /fleetmeter, got {root:?}"
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionStatus {
    Connected { generation: u64 },
    Suspended { generation: u64 },
    Lost { generation: u64 },
    Closed,
}

impl SessionStatus {
    pub fn is_connected(self) -> bool {
        matches!(self, SessionStatus::Connected { .. })
    }

    pub fn generation(self) -> Option<u64> {
        match self {
            SessionStatus::Connected { generation }
            | SessionStatus::Suspended { generation }
            | SessionStatus::Lost { generation } => Some(generation),
            SessionStatus::Closed => None,
        }
    }
}

struct Shared {
    settings: ZkSettings,
    /// `None` once closed: the session ends when the last clone of its client is dropped
    /// (zookeeper-client has no explicit close).
    client: RwLock<Option<FleetClient>>,
    status: watch::Sender<SessionStatus>,
    cancel: CancellationToken,
    /// The closing client's state, kept so that a `close` whose future was dropped (its
    /// caller's `select!` finished first) is finished by the next call.
    closing: std::sync::Mutex<Option<StateWatcher>>,
}

/// Cheap to clone; every clone sees the same session.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
    supervisor: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("hosts", &self.shared.settings.hosts)
            .field("root", &self.shared.settings.root)
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects (retrying until `connect_timeout`), creates the root, and starts following
    /// the session's state.
    pub async fn connect(settings: ZkSettings) -> Result<Self, CoordError> {
        settings.validate()?;
        let started = Instant::now();
        let mut backoff = reconnect_backoff();
        let client = loop {
            let delay = backoff.next_delay();
            match open(&settings).await {
                Ok(client) => break client,
                // Access refused, or an open root with credentials: retrying changes nothing.
                Err(
                    err @ (CoordError::NoAccess { .. }
                    | CoordError::OpenRoot { .. }
                    | CoordError::Settings(_)),
                ) => {
                    return Err(err);
                }
                Err(err) if started.elapsed() + delay < settings.connect_timeout => {
                    tracing::warn!(hosts = %settings.hosts, error = %err, retry_in = ?delay, "ZooKeeper not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(err) => {
                    return Err(CoordError::Unreachable {
                        hosts: settings.hosts.clone(),
                        waited: started.elapsed(),
                        reason: err.to_string(),
                    });
                }
            }
        };
        tracing::info!(
            hosts = %settings.hosts,
            root = %settings.root,
            session = %format!("{:#x}", client.session_id().0),
            "ZooKeeper session established"
        );
        let (status, _) = watch::channel(SessionStatus::Connected { generation: 1 });
        let shared = Arc::new(Shared {
            settings,
            client: RwLock::new(Some(client)),
            status,
            cancel: CancellationToken::new(),
            closing: std::sync::Mutex::new(None),
        });
        let supervisor = tokio::spawn(supervise(shared.clone()));
        Ok(Self {
            shared,
            supervisor: Arc::new(std::sync::Mutex::new(Some(supervisor))),
        })
    }

    /// The current client, chrooted at the fleet's root. After an expiry this returns the
    /// rebuilt one: take a fresh client for each operation rather than keeping one.
    pub fn client(&self) -> Result<FleetClient, CoordError> {
        self.shared
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(CoordError::Closed)
    }

    pub fn status(&self) -> watch::Receiver<SessionStatus> {
        self.shared.status.subscribe()
    }

    pub fn current_status(&self) -> SessionStatus {
        *self.shared.status.borrow()
    }

    /// The current session's id (the `ephemeralOwner` of the nodes it creates).
    pub fn session_id(&self) -> Option<i64> {
        self.shared
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.session_id().0)
    }

    /// Creates the fleet's root if it is gone (deleted by hand while the session lived).
    pub async fn ensure_root(&self) -> Result<(), CoordError> {
        let root = &self.shared.settings.root;
        if root == "/" {
            return Ok(());
        }
        let client = self.client()?;
        let Ok(base) = client.raw().clone().chroot("/") else {
            return Err(CoordError::Settings(format!("invalid root path {root:?}")));
        };
        base.mkdir(root, &client.persistent())
            .await
            .map_err(|e| CoordError::zk("create", root, e))
    }

    /// `mkdir -p` of `path` under the root, making the root again first if it was deleted.
    pub async fn mkdir(&self, path: &str) -> Result<(), CoordError> {
        let client = self.client()?;
        match client.mkdir(path, &client.persistent()).await {
            Ok(()) => Ok(()),
            Err(zookeeper_client::Error::NoNode) => {
                tracing::warn!(root = %self.shared.settings.root, "the fleet's root node is gone (deleted by hand?); creating it again");
                self.ensure_root().await?;
                client
                    .mkdir(path, &client.persistent())
                    .await
                    .map_err(|e| CoordError::zk("create", path, e))
            }
            Err(e) => Err(CoordError::zk("create", path, e)),
        }
    }

    pub fn settings(&self) -> &ZkSettings {
        &self.shared.settings
    }

    /// Cancelled when the session is closed: recipes stop on it.
    pub fn closing(&self) -> CancellationToken {
        self.shared.cancel.clone()
    }

    /// Waits until the session is connected (any generation); `Err(Closed)` once closed.
    pub async fn connected(&self) -> Result<u64, CoordError> {
        let mut status = self.status();
        loop {
            match *status.borrow_and_update() {
                SessionStatus::Connected { generation } => return Ok(generation),
                SessionStatus::Closed => return Err(CoordError::Closed),
                _ => {}
            }
            if status.changed().await.is_err() {
                return Err(CoordError::Closed);
            }
        }
    }

    /// Ends the session now: recipes stop, and the ephemeral nodes (device, election) vanish
    /// at once instead of a session timeout later. Calling it again once it has finished does
    /// nothing; a call interrupted (its future dropped) is finished by the next one.
    pub async fn close(&self) {
        if *self.shared.status.borrow() == SessionStatus::Closed {
            return;
        }
        self.shared.cancel.cancel();
        let supervisor = self
            .supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
        // Recipes stop on the cancelled token and drop their clones; when the last clone is
        // dropped the client sends CloseSession and reports `Closed`. Wait for that (bounded):
        // a process that exits first leaves its session to time out, and the fleet waits.
        let client = self
            .shared
            .client
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(client) = client {
            *self
                .shared
                .closing
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(client.state_watcher());
            drop(client);
        }
        let closing = self
            .shared
            .closing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(mut states) = closing {
            let closed = tokio::time::timeout(CLOSE_WAIT, async {
                if states.peek_state().is_terminated() {
                    return;
                }
                loop {
                    if states.changed().await.is_terminated() {
                        return;
                    }
                }
            })
            .await;
            if closed.is_err() {
                tracing::warn!(
                    "ZooKeeper did not confirm the session close in time; the fleet may wait for the session timeout"
                );
            }
        }
        self.shared.status.send_replace(SessionStatus::Closed);
        tracing::info!("ZooKeeper session closed");
    }
}

/// Connects to the hosts (with the credentials), creates the root or checks that this
/// session may use it, and returns a client chrooted at it with the root's ACL.
async fn open(settings: &ZkSettings) -> Result<FleetClient, CoordError> {
    let mut connector = Client::connector()
        .with_session_timeout(settings.session_timeout)
        // zookeeper-client checks its connection every `connection_timeout / 8` when that is
        // at most 3/5 of the session timeout (else every session_timeout / 20), pings after
        // three quiet checks and gives up on a silent server after eight. At 3/5: a 4 s
        // session is checked every 300 ms (not 200: fewer wakeups on an idle device) and
        // given 2.4 s to answer (not 1.6 s: a server busy with a start storm is not
        // abandoned so soon).
        .with_connection_timeout(settings.session_timeout * 3 / 5)
        .with_fail_eagerly();
    if let Some(auth) = &settings.auth {
        connector = auth.apply(connector);
    }
    let base = match &settings.tls {
        Some(tls) => {
            connector
                .with_tls(tls.options()?)
                .secure_connect(&settings.hosts)
                .await
        }
        None => connector.connect(&settings.hosts).await,
    }
    .map_err(|e| CoordError::zk("connect", &settings.hosts, e))?;
    let acl = access::adopt_root(
        &base,
        &settings.root,
        settings.auth.as_ref(),
        settings.public_read,
    )
    .await?;
    let client = base
        .chroot(settings.root.clone())
        .map_err(|_| CoordError::Settings(format!("invalid root path {:?}", settings.root)))?;
    Ok(FleetClient::new(client, acl))
}

/// Follows the client's state; rebuilds the session after expiry.
async fn supervise(shared: Arc<Shared>) {
    let mut generation = 1;
    loop {
        let Some(mut states) = shared
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|client| client.state_watcher())
        else {
            return;
        };
        let state = tokio::select! {
            () = shared.cancel.cancelled() => return,
            state = states.changed() => state,
        };
        match state {
            SessionState::Disconnected => {
                tracing::warn!(
                    generation,
                    "ZooKeeper connection lost; session suspended until it reconnects"
                );
                shared
                    .status
                    .send_replace(SessionStatus::Suspended { generation });
            }
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                tracing::info!(generation, "ZooKeeper reconnected; session kept");
                shared
                    .status
                    .send_replace(SessionStatus::Connected { generation });
            }
            SessionState::Expired | SessionState::Closed | SessionState::AuthFailed => {
                if shared.cancel.is_cancelled() {
                    return;
                }
                tracing::warn!(
                    generation,
                    ?state,
                    "ZooKeeper session lost; building a new session"
                );
                shared
                    .status
                    .send_replace(SessionStatus::Lost { generation });
                let Some(client) = rebuild(&shared).await else {
                    return;
                };
                generation += 1;
                tracing::info!(
                    generation,
                    session = %format!("{:#x}", client.session_id().0),
                    "new ZooKeeper session established"
                );
                *shared.client.write().unwrap_or_else(|e| e.into_inner()) = Some(client);
                shared
                    .status
                    .send_replace(SessionStatus::Connected { generation });
            }
        }
    }
}

/// A new session, retried with back-off until it works or the session is closed.
async fn rebuild(shared: &Shared) -> Option<FleetClient> {
    let mut backoff = reconnect_backoff();
    loop {
        let delay = backoff.next_delay();
        tokio::select! {
            () = shared.cancel.cancelled() => return None,
            result = open(&shared.settings) => match result {
                Ok(client) => return Some(client),
                Err(err) => tracing::warn!(error = %err, retry_in = ?delay, "cannot build a new ZooKeeper session yet"),
            },
        }
        tokio::select! {
            () = shared.cancel.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// From 100 ms up to 2 s, jittered: a fleet that lost ZooKeeper together does not come back
/// in one burst.
fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
}
