//! Coordination through ZooKeeper: what makes a set of devices a fleet.
//!
//! # Layout
//! - [`access`]: credentials, TLS, the nodes' ACL and the root's policy.
//! - [`client`](FleetClient): what the agent may do to ZooKeeper: reads, watches, plain
//!   writes, and labelled transactions.
//! - [`session`]: the connection, its state as the rest of the agent sees it
//!   (connected / suspended / lost), rebuilt by itself after expiry.
//! - [`election`]: kazoo-compatible leader election with fencing.
//! - [`membership`]: the device's ephemeral node.
//! - [`roster`]: the leader's view of the fleet: live devices, changed readings.
//! - [`barrier`]: the round number and the kazoo-compatible barrier node.
//! - [`counter`]: the kazoo-compatible global counter.
//! - [`dynconfig`]: watched, validated configuration nodes.
//! - [`txn`]: labelled transactions: a failed multi names what failed, not an index.
//!
//! Every recipe works on a client chrooted at the fleet's root (default `/fleetmeter`), so
//! paths here are relative to it; see [`paths`].

pub mod access;
pub mod barrier;
mod client;
pub mod counter;
pub mod dynconfig;
pub mod election;
pub mod membership;
pub mod roster;
pub mod session;
pub mod txn;

pub use access::{NodeAcl, ZkAuth};
pub use client::FleetClient;
pub use session::{Session, SessionStatus, ZkSettings};
pub use zookeeper_client as zk;

/// The ZooKeeper layout under the fleet's root (docs/coordination.md).
pub mod paths {
    pub const DEVICES: &str = "/devices";
    pub const ELECTION: &str = "/election";
    pub const ROUND: &str = "/round";
    pub const BARRIER: &str = "/barrier";
    pub const COUNTER: &str = "/counter";
    pub const RESULTS: &str = "/results";
    pub const REJECTED: &str = "/rejected";
    pub const PARTS: &str = "/parts";
    pub const OUTBOX: &str = "/outbox";
    pub const CONFIG: &str = "/config";
    pub const GIVEN_UP: &str = "/given-up";
    pub const COUNTER_BASE: &str = "/counter-base";
    pub const ARTIFACTS: &str = "/artifacts";
    pub const ROLLOUT: &str = "/rollout";
    pub const PLUGINS: &str = "/plugins";

    pub fn device(id: &str) -> String {
        format!("{DEVICES}/{id}")
    }
}

/// A coordination failure, naming the operation and the node.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("ZooKeeper {op} on {path} failed: {source}")]
    Zk {
        op: &'static str,
        path: String,
        source: zk::Error,
    },
    #[error("cannot reach ZooKeeper at {hosts} within {waited:?}: {reason}")]
    Unreachable {
        hosts: String,
        waited: std::time::Duration,
        reason: String,
    },
    #[error("{path} holds {found:?}, which is not {expected}")]
    BadData {
        path: String,
        found: String,
        expected: &'static str,
    },
    #[error("invalid ZooKeeper settings: {0}")]
    Settings(String),
    #[error("the coordination session was closed")]
    Closed,
    #[error(
        "{what} is open to anyone (ACL {acl}) while this agent has credentials (user {user:?}): \
         secure the fleet's nodes first with `{cmd}` (same credentials and --root {root}); \
         an agent with credentials does not run on an open root",
        cmd = access::SECURE_COMMAND
    )]
    OpenRoot {
        root: String,
        what: String,
        acl: String,
        user: String,
    },
    #[error("ZooKeeper refused to {op} the fleet's root {root} (no access): {hint}")]
    NoAccess {
        root: String,
        op: &'static str,
        hint: String,
    },
    #[error(
        "the fleet already has {members} devices, the most fleetmeter supports ({supported}: one round publishes every device's id); run this device in another fleet (another root)"
    )]
    FleetFull { members: usize, supported: usize },
}

impl CoordError {
    pub(crate) fn zk(op: &'static str, path: &str, source: zk::Error) -> Self {
        CoordError::Zk {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// Whether trying again later may succeed: the connection or the session failed, or the
    /// server is overloaded — never a refusal (ACL, bad data, settings) or a closed session.
    pub fn is_transient(&self) -> bool {
        matches!(self, CoordError::Zk { source, .. } if transient(source))
    }
}

/// Whether a ZooKeeper error says "not now" rather than "no": a lost or slow connection
/// (the client reports a server that does not answer in time as a custom error), an
/// expiring session, or a server shedding load.
pub(crate) fn transient(error: &zk::Error) -> bool {
    matches!(
        error,
        zk::Error::ConnectionLoss
            | zk::Error::Timeout
            | zk::Error::Throttled
            | zk::Error::SessionExpired
            | zk::Error::SessionMoved
            | zk::Error::ClientClosed
            | zk::Error::NoHosts
            | zk::Error::Custom(_)
            | zk::Error::UnexpectedError(_)
    )
}

/// Waits for the node watch to fire (when there is one) or the session status to change.
/// Returns `false` when the session is closing: the caller stops.
pub(crate) async fn wait_for_change(
    watcher: Option<zk::OneshotWatcher>,
    status: &mut tokio::sync::watch::Receiver<SessionStatus>,
    closing: &tokio_util::sync::CancellationToken,
) -> bool {
    let fired = async {
        match watcher {
            Some(watcher) => {
                watcher.changed().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = closing.cancelled() => false,
        () = fired => true,
        _ = status.changed() => true,
    }
}
