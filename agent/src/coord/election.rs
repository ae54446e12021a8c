//! Leader election, compatible with kazoo's `Election` recipe: each contender holds an
//! ephemeral sequential node `{root}/election/<32 hex>__lock__<seq10>` whose data is its
//! device id, so kazoo's `Election(client, path).contenders()` lists our devices in order and
//! a kazoo contender queues behind ours.
//!
//! - The lowest sequence leads; every other contender watches only its predecessor (no herd).
//! - A ConnectionLoss during the create is resolved by finding our node by its unique prefix.
//! - Leadership is reported through a `watch` channel: `Leader` only while the node is ours
//!   and the session is connected. On Disconnected the leader becomes `Uncertain` at once and
//!   is `Leader` again only after checking, on reconnect, that its node still exists and is
//!   owned by its session. A deleted node or an expired session means `Follower` and a new
//!   node at the back of the queue.
//! - Fencing: [`Leadership::Leader`] carries the node's path; the leader adds
//!   `check_version(node, 0)` to every write multi, so a deposed leader's writes fail.

use tokio::{sync::watch, task::JoinHandle};
use zookeeper_client::Error;

use super::{CoordError, FleetClient, Session, SessionStatus, paths::ELECTION};

const LOCK_MARK: &str = "__lock__";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Not (yet) leading; `leader` is the current leader's device id when known.
    Follower { leader: Option<String> },
    /// Leading, with the election node to fence writes with (`check_version(node, 0)`).
    Leader { node: String },
    /// Disconnected while leading: make no change until this resolves.
    Uncertain,
    /// The session was closed.
    Stopped,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        matches!(self, Leadership::Leader { .. })
    }
}

/// A running contender. Dropping it stops contending (the node goes with the session).
#[derive(Debug)]
pub struct Election {
    rx: watch::Receiver<Leadership>,
    task: JoinHandle<()>,
}

impl Drop for Election {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Election {
    pub fn start(session: &Session, id: &str) -> Self {
        let (tx, rx) = watch::channel(Leadership::Follower { leader: None });
        let task = tokio::spawn(contend(session.clone(), id.to_owned(), tx));
        Self { rx, task }
    }

    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.rx.clone()
    }
}

/// The sequence part of a contender's node name (kazoo sorts on it).
fn sequence(name: &str) -> Option<&str> {
    name.rsplit_once(LOCK_MARK).map(|(_, seq)| seq)
}

/// Whether `name` has the recipe's exact form: 32 lowercase hex digits, `__lock__`, the
/// 10-digit sequence ZooKeeper appends. Anything else under `election/` was not made by a
/// contender and is ignored.
fn well_formed(name: &str) -> bool {
    let Some((prefix, seq)) = name.split_once(LOCK_MARK) else {
        return false;
    };
    prefix.len() == 32
        && prefix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && seq.len() == 10
        && seq.bytes().all(|b| b.is_ascii_digit())
}

/// Election node names of the recipe's form in election order (lowest sequence first),
/// kazoo's order. Other children are ignored, and logged.
pub async fn sorted_nodes(client: &FleetClient) -> Result<Vec<String>, Error> {
    let mut children = client.list_children(ELECTION).await?;
    let listed = children.len();
    let ignored = children.iter().find(|c| !well_formed(c)).cloned();
    children.retain(|c| well_formed(c));
    // One line per look, however many were planted.
    if let Some(first) = ignored {
        tracing::warn!(
            count = listed - children.len(),
            first = %crate::text::one_line_bounded(&first, 128),
            "ignoring nodes under election/ that no contender made (not <32 hex>__lock__<10 digits>)"
        );
    }
    children.sort_by(|a, b| sequence(a).cmp(&sequence(b)));
    Ok(children)
}

/// The nearest live contender before ours (`nodes` in election order, ours excluded): a
/// node that exists and is ephemeral (a session holds it). A persistent node would hold its
/// place for ever: it is skipped, and the skipped ones are logged in one line. `None`: we
/// lead.
async fn predecessor(client: &FleetClient, ahead: &[String]) -> Result<Option<String>, Error> {
    let mut planted = Vec::new();
    let mut found = None;
    for name in ahead.iter().rev() {
        match client.check_stat(&format!("{ELECTION}/{name}")).await? {
            Some(stat) if stat.ephemeral_owner != 0 => {
                found = Some(name.clone());
                break;
            }
            Some(_) => planted.push(name),
            None => {}
        }
    }
    if let Some(first) = planted.first() {
        tracing::warn!(
            count = planted.len(),
            first = %first,
            "ignoring election nodes that are not ephemeral (made by hand, not by a contender): they cannot lead and nobody waits for them"
        );
    }
    Ok(found)
}

/// The most of an election node's data kept as its device id.
const MAX_ID_BYTES: usize = 256;

/// The contenders' device ids in election order (what kazoo's `contenders()` returns).
pub async fn contenders(client: &FleetClient) -> Result<Vec<String>, CoordError> {
    let nodes = match sorted_nodes(client).await {
        Ok(nodes) => nodes,
        Err(Error::NoNode) => return Ok(Vec::new()),
        Err(e) => return Err(CoordError::zk("list", ELECTION, e)),
    };
    let mut ids = Vec::with_capacity(nodes.len());
    for node in nodes {
        let path = format!("{ELECTION}/{node}");
        match client.get_data(&path).await {
            // Not a contender: a persistent node planted by hand.
            Ok((_, stat)) if stat.ephemeral_owner == 0 => {}
            // A device id; whoever wrote the node, keep no more than an id's worth.
            Ok((data, _)) => ids
                .push(String::from_utf8_lossy(&data[..data.len().min(MAX_ID_BYTES)]).into_owned()),
            Err(Error::NoNode) => {} // left while we looked
            Err(e) => return Err(CoordError::zk("read", &path, e)),
        }
    }
    Ok(ids)
}

/// Creates our node; returns its name. After a ConnectionLoss the create may or may not
/// have happened: our node is the one with our unique prefix.
async fn create_node(session: &Session, client: &FleetClient, id: &str) -> Result<String, Error> {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("{ELECTION}/{unique}{LOCK_MARK}");
    loop {
        match client
            .create(&prefix, id.as_bytes(), &client.acl().ephemeral_sequential())
            .await
        {
            Ok((_, seq)) => return Ok(format!("{unique}{LOCK_MARK}{seq}")),
            Err(Error::NoNode) => session.mkdir(ELECTION).await.map_err(|e| match e {
                CoordError::Zk { source, .. } => source,
                _ => Error::ClientClosed,
            })?,
            Err(Error::ConnectionLoss) => {
                let children = loop {
                    match client.list_children(ELECTION).await {
                        Ok(children) => break children,
                        Err(Error::ConnectionLoss) => {
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        Err(e) => return Err(e),
                    }
                };
                if let Some(ours) = children.into_iter().find(|c| c.starts_with(&unique)) {
                    tracing::debug!(node = %ours, "found our election node after a lost reply");
                    return Ok(ours);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The device id of the first live contender among `nodes` (the leader), for status.
async fn first_contender(client: &FleetClient, nodes: &[String]) -> Option<String> {
    for node in nodes {
        match client.get_data(&format!("{ELECTION}/{node}")).await {
            Ok((data, stat)) if stat.ephemeral_owner != 0 => {
                return Some(
                    String::from_utf8_lossy(&data[..data.len().min(MAX_ID_BYTES)]).into_owned(),
                );
            }
            Ok(_) | Err(Error::NoNode) => {}
            Err(_) => return None,
        }
    }
    None
}

enum Held {
    NodeGone,
    SessionLost,
    Closed,
}

async fn contend(session: Session, id: String, tx: watch::Sender<Leadership>) {
    let closing = session.closing();
    let mut status = session.status();
    'join: loop {
        let Ok(generation) = session.connected().await else {
            tx.send_replace(Leadership::Stopped);
            return;
        };
        let Ok(client) = session.client() else {
            tx.send_replace(Leadership::Stopped);
            return;
        };
        let name = match create_node(&session, &client, &id).await {
            Ok(name) => name,
            Err(err) => {
                tracing::warn!(error = %err, "cannot join the election yet; retrying");
                drop(client);
                tokio::select! {
                    () = closing.cancelled() => { tx.send_replace(Leadership::Stopped); return; }
                    () = tokio::time::sleep(std::time::Duration::from_millis(200)) => continue 'join,
                }
            }
        };
        let node = format!("{ELECTION}/{name}");
        tracing::debug!(%node, "joined the election");
        loop {
            if session.current_status().generation() != Some(generation) {
                continue 'join;
            }
            let nodes = match sorted_nodes(&client).await {
                Ok(nodes) => nodes,
                Err(Error::SessionExpired | Error::ClientClosed) => continue 'join,
                Err(_) => {
                    tokio::select! {
                        () = closing.cancelled() => { tx.send_replace(Leadership::Stopped); return; }
                        _ = status.changed() => continue,
                    }
                }
            };
            let Some(position) = nodes.iter().position(|n| *n == name) else {
                tracing::warn!(%node, "our election node is gone; re-joining the election");
                tx.send_replace(Leadership::Follower { leader: None });
                continue 'join;
            };
            // The nearest live contender ahead of us; none: we lead.
            let predecessor = match predecessor(&client, &nodes[..position]).await {
                Ok(found) => found,
                Err(Error::SessionExpired | Error::ClientClosed) => continue 'join,
                Err(_) => {
                    tokio::select! {
                        () = closing.cancelled() => { tx.send_replace(Leadership::Stopped); return; }
                        _ = status.changed() => continue,
                    }
                }
            };
            let Some(predecessor) = predecessor else {
                match hold(&session, &client, &node, generation, &tx).await {
                    Held::NodeGone => {
                        tracing::warn!(%node, "election node deleted or taken: stepped down");
                        tx.send_replace(Leadership::Follower { leader: None });
                        continue 'join;
                    }
                    Held::SessionLost => {
                        tx.send_replace(Leadership::Follower { leader: None });
                        continue 'join;
                    }
                    Held::Closed => {
                        tx.send_replace(Leadership::Stopped);
                        return;
                    }
                }
            };
            let leader = first_contender(&client, &nodes[..position]).await;
            tx.send_if_modified(|current| {
                let next = Leadership::Follower {
                    leader: leader.clone(),
                };
                let changed = *current != next;
                *current = next;
                changed
            });
            let predecessor = format!("{ELECTION}/{predecessor}");
            match client.check_and_watch_stat(&predecessor).await {
                Ok((None, _)) => continue,
                Ok((Some(_), watcher)) => {
                    tokio::select! {
                        () = closing.cancelled() => { tx.send_replace(Leadership::Stopped); return; }
                        _ = watcher.changed() => {}
                        _ = status.changed() => {}
                    }
                }
                Err(Error::SessionExpired | Error::ClientClosed) => continue 'join,
                Err(_) => {
                    tokio::select! {
                        () = closing.cancelled() => { tx.send_replace(Leadership::Stopped); return; }
                        _ = status.changed() => {}
                    }
                }
            }
        }
    }
}

/// Leads while our node exists, is ours, and the session is connected.
async fn hold(
    session: &Session,
    client: &FleetClient,
    node: &str,
    generation: u64,
    tx: &watch::Sender<Leadership>,
) -> Held {
    let closing = session.closing();
    let mut status = session.status();
    loop {
        match client.check_and_watch_stat(node).await {
            Ok((Some(stat), watcher)) if stat.ephemeral_owner == client.session_id().0 => {
                if !tx.borrow().is_leader() {
                    tracing::info!(%node, "elected leader");
                }
                tx.send_replace(Leadership::Leader {
                    node: node.to_owned(),
                });
                tokio::select! {
                    () = closing.cancelled() => return Held::Closed,
                    _ = watcher.changed() => continue,
                    _ = status.changed() => {}
                }
                // The session wavered: stop leading until it is confirmed.
                loop {
                    let now = *status.borrow_and_update();
                    match now {
                        SessionStatus::Connected { generation: g } if g == generation => break,
                        SessionStatus::Suspended { .. } => {
                            if tx.borrow().is_leader() {
                                tracing::warn!(%node, "disconnected from ZooKeeper: not leading until the election node is confirmed");
                            }
                            tx.send_replace(Leadership::Uncertain);
                        }
                        SessionStatus::Closed => return Held::Closed,
                        _ => return Held::SessionLost,
                    }
                    tokio::select! {
                        () = closing.cancelled() => return Held::Closed,
                        changed = status.changed() => if changed.is_err() { return Held::Closed },
                    }
                }
            }
            Ok(_) => return Held::NodeGone,
            Err(Error::ConnectionLoss) => {
                tx.send_replace(Leadership::Uncertain);
                tokio::select! {
                    () = closing.cancelled() => return Held::Closed,
                    _ = status.changed() => {}
                }
            }
            Err(_) => return Held::SessionLost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kazoo_node_names_sort_by_sequence() {
        let mut names = [
            "ffff0000ffff0000ffff0000ffff0000__lock__0000000012",
            "00000000000000000000000000000000__lock__0000000003",
            "abcd__lock__0000000007",
        ];
        names.sort_by(|a, b| sequence(a).cmp(&sequence(b)));
        assert!(names[0].ends_with("03") && names[2].ends_with("12"));
        assert_eq!(sequence("nolock"), None);
    }

    #[test]
    fn only_the_recipes_exact_form_is_a_contender() {
        assert!(well_formed(
            "0123456789abcdef0123456789abcdef__lock__0000000042"
        ));
        for planted in [
            "abcd__lock__0000000007",
            "0123456789ABCDEF0123456789abcdef__lock__0000000042",
            "0123456789abcdef0123456789abcdef__lock__42",
            "0123456789abcdef0123456789abcdef__lock__000000004x",
            "0123456789abcdef0123456789abcdef__lock__0000000042/x",
            "leader",
        ] {
            assert!(!well_formed(planted), "{planted}");
        }
    }
}
