//! The fleet's client: a ZooKeeper client chrooted at the fleet's root, creating nodes with
//! the root's ACL.
//!
//! It does not dereference to the raw client: what the rest of the agent may do to
//! ZooKeeper is what is listed here — reads and watches, plain writes, and
//! [`Txn`](super::txn::Txn)s (the only way to write several nodes at once, each operation
//! labelled). Each method returns the client's own future, so a request is sent when the
//! method is called, not when the future is awaited (several reads can be in flight at
//! once).

use std::future::Future;

use zookeeper_client::{
    AddWatchMode, Client, CreateOptions, CreateSequence, Error, MultiReader, OneshotWatcher,
    PersistentWatcher, Stat, StateWatcher,
};

use super::NodeAcl;

type Answer<T> = Result<T, Error>;

/// A client chrooted at the fleet's root, with the ACL its nodes are created with.
#[derive(Clone, Debug)]
pub struct FleetClient {
    client: Client,
    acl: NodeAcl,
}

impl FleetClient {
    pub fn new(client: Client, acl: NodeAcl) -> Self {
        Self { client, acl }
    }

    /// The ACL this fleet's nodes are created with (the root's).
    pub fn acl(&self) -> &NodeAcl {
        &self.acl
    }

    /// Options for a persistent node with the fleet's ACL.
    pub fn persistent(&self) -> CreateOptions<'_> {
        self.acl.persistent()
    }

    /// The raw client, for what only the coordination recipes do (transactions, the
    /// election's lock nodes, the session's state).
    pub(in crate::coord) fn raw(&self) -> &Client {
        &self.client
    }

    /// The raw client, for a tool that leaves the fleet's root (a test that inspects the
    /// whole tree, `secure-root`).
    pub fn into_client(self) -> Client {
        self.client
    }

    /// The session's id (an ephemeral node's owner).
    pub fn session_id(&self) -> zookeeper_client::SessionId {
        self.client.session_id()
    }

    pub fn get_data(&self, path: &str) -> impl Future<Output = Answer<(Vec<u8>, Stat)>> + Send {
        self.client.get_data(path)
    }

    pub fn get_and_watch_data(
        &self,
        path: &str,
    ) -> impl Future<Output = Answer<(Vec<u8>, Stat, OneshotWatcher)>> + Send + '_ {
        self.client.get_and_watch_data(path)
    }

    pub fn check_stat(&self, path: &str) -> impl Future<Output = Answer<Option<Stat>>> + Send {
        self.client.check_stat(path)
    }

    pub fn check_and_watch_stat(
        &self,
        path: &str,
    ) -> impl Future<Output = Answer<(Option<Stat>, OneshotWatcher)>> + Send + '_ {
        self.client.check_and_watch_stat(path)
    }

    pub fn list_children(
        &self,
        path: &str,
    ) -> impl Future<Output = Answer<Vec<String>>> + Send + '_ {
        self.client.list_children(path)
    }

    /// The node's ACL.
    pub fn get_acl(
        &self,
        path: &str,
    ) -> impl Future<Output = Answer<(Vec<zookeeper_client::Acl>, Stat)>> + Send + '_ {
        self.client.get_acl(path)
    }

    /// Several reads answered together, as of one moment.
    pub fn new_multi_reader(&self) -> MultiReader<'_> {
        self.client.new_multi_reader()
    }

    /// A persistent watch (the leader's roster of devices).
    pub fn watch(
        &self,
        path: &str,
        mode: AddWatchMode,
    ) -> impl Future<Output = Answer<PersistentWatcher>> + Send + '_ {
        self.client.watch(path, mode)
    }

    pub fn state_watcher(&self) -> StateWatcher {
        self.client.state_watcher()
    }

    pub fn create<'a: 'f, 'b: 'f, 'f>(
        &'a self,
        path: &'b str,
        data: &[u8],
        options: &CreateOptions<'_>,
    ) -> impl Future<Output = Answer<(Stat, CreateSequence)>> + Send + 'f {
        self.client.create(path, data, options)
    }

    pub fn set_data(
        &self,
        path: &str,
        data: &[u8],
        expected_version: Option<i32>,
    ) -> impl Future<Output = Answer<Stat>> + Send {
        self.client.set_data(path, data, expected_version)
    }

    pub fn delete(
        &self,
        path: &str,
        expected_version: Option<i32>,
    ) -> impl Future<Output = Answer<()>> + Send {
        self.client.delete(path, expected_version)
    }

    /// Creates `path` and its missing parents.
    pub async fn mkdir(&self, path: &str, options: &CreateOptions<'_>) -> Answer<()> {
        self.client.mkdir(path, options).await
    }
}
