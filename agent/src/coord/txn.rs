//! Labelled ZooKeeper transactions.
//!
//! A ZooKeeper multi reports a failure by the *index* of the operation that failed. Our
//! multis are assembled by several modules (the fence from the election, the release from
//! `barrier`, the counter from `counter`, the entry and ledger from the
//! outbox), so an index means nothing to the code that commits them: add or reorder one
//! operation and "fenced" silently means something else. Here every operation carries a
//! [`Label`] saying what it is for, and a failed commit names the label and the node
//! ([`TxnError::Failed`]), never an index.
//!
//! A [`Txn`] is plain data until [`Txn::commit`]: the leader's commit plan
//! (`round::plan`) builds one and its unit tests read it without ZooKeeper.

use zookeeper_client::{Error as ZkError, MultiWriteError};

use super::{CoordError, FleetClient, NodeAcl};

/// What an operation in a transaction is for: the name its failure is reported by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Label {
    /// Our election node exists at version 0: we still lead (fencing).
    Fence,
    /// `{root}/round`: a release, the fleet's start, or a value written back.
    Round,
    /// `{root}/barrier`: kazoo's barrier node, removed and re-created at a release.
    Barrier,
    /// `{root}/counter`: the readings in committed rounds.
    Counter,
    /// An entry in `{root}/results`: a round waiting for the API.
    Entry,
    /// An entry in `{root}/rejected`: a round set aside for an operator.
    Rejected,
    /// `{root}/outbox`: the ledger that bounds the outbox.
    Ledger,
    /// `{root}/given-up`: the rounds a leader released past unfinished.
    GivenUp,
    /// `{root}/counter-base`: the counter started without its base (the API was down).
    CounterBase,
    /// `{root}/artifacts/sha256-HEX`: a plugin artifact's node, its manifest as data.
    Artifact,
    /// One chunk of a plugin artifact.
    Chunk,
    /// `{root}/rollout`: the fleet's rollout record.
    Rollout,
    /// `{root}/plugins/{sensor,aggregator}`: what the fleet runs after a promoted rollout.
    Assignment,
}

impl Label {
    /// The label as logs and messages show it.
    pub fn name(self) -> &'static str {
        match self {
            Label::Fence => "fence",
            Label::Round => "round",
            Label::Barrier => "barrier",
            Label::Counter => "counter",
            Label::Entry => "entry",
            Label::Rejected => "rejected",
            Label::Ledger => "ledger",
            Label::GivenUp => "given-up",
            Label::CounterBase => "counter-base",
            Label::Artifact => "artifact",
            Label::Chunk => "chunk",
            Label::Rollout => "rollout",
            Label::Assignment => "assignment",
        }
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One operation: what it does, to which node, and what it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub label: Label,
    pub path: String,
    pub kind: OpKind,
}

impl Op {
    /// Applies only if `path` is at `version`.
    pub fn check(label: Label, path: &str, version: i32) -> Self {
        Self::new(label, path, OpKind::Check { version })
    }

    /// Creates the persistent node `path` with `data` and `acl`.
    pub fn create(label: Label, path: &str, data: &[u8], acl: &NodeAcl) -> Self {
        let (data, acl) = (data.to_vec(), acl.clone());
        Self::new(label, path, OpKind::Create { data, acl })
    }

    /// Sets `path`'s data.
    pub fn set(label: Label, path: &str, data: &[u8], version: Option<i32>) -> Self {
        let data = data.to_vec();
        Self::new(label, path, OpKind::Set { data, version })
    }

    /// Deletes `path`.
    pub fn delete(label: Label, path: &str, version: Option<i32>) -> Self {
        Self::new(label, path, OpKind::Delete { version })
    }

    fn new(label: Label, path: &str, kind: OpKind) -> Self {
        let path = path.to_owned();
        Self { label, path, kind }
    }
}

/// What an operation does. Versions are ZooKeeper's: the operation applies only when the
/// node is at that version (`None`: any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Check { version: i32 },
    Create { data: Vec<u8>, acl: NodeAcl },
    Set { data: Vec<u8>, version: Option<i32> },
    Delete { version: Option<i32> },
}

impl OpKind {
    fn verb(&self) -> &'static str {
        match self {
            OpKind::Check { .. } => "check (in multi)",
            OpKind::Create { .. } => "create (in multi)",
            OpKind::Set { .. } => "set (in multi)",
            OpKind::Delete { .. } => "delete (in multi)",
        }
    }
}

/// A transaction: operations applied all or none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Txn {
    /// What the transaction does and on which node, for an error that is not one
    /// operation's (`commit (multi)` on `/results`).
    what: &'static str,
    subject: String,
    ops: Vec<Op>,
}

/// Why a transaction did not apply.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// One operation failed (nothing was applied); its label says which.
    #[error("ZooKeeper refused the {label} operation on {path}: {source}")]
    Failed {
        /// The transaction's name (`commit (multi)`).
        what: &'static str,
        label: Label,
        path: String,
        source: ZkError,
    },
    /// The request itself failed (connection, session, a malformed path).
    #[error(transparent)]
    Coord(#[from] CoordError),
}

impl TxnError {
    /// The label and error of the operation that failed, when one did.
    pub fn failed(&self) -> Option<(Label, &ZkError)> {
        match self {
            TxnError::Failed { label, source, .. } => Some((*label, source)),
            TxnError::Coord(_) => None,
        }
    }

    /// Whether the operation labelled `label` failed (with any error).
    pub fn is(&self, label: Label) -> bool {
        self.failed().is_some_and(|(l, _)| l == label)
    }

    /// Whether the operation labelled `label` failed with `error`.
    pub fn is_at(&self, label: Label, error: &ZkError) -> bool {
        self.failed().is_some_and(|(l, e)| l == label && e == error)
    }

    /// As a coordination error, for a caller that has no use for the label.
    pub fn into_coord(self) -> CoordError {
        match self {
            TxnError::Failed {
                what, path, source, ..
            } => CoordError::zk(what, &path, source),
            TxnError::Coord(err) => err,
        }
    }
}

impl Txn {
    /// An empty transaction; `what` and `subject` name it in an error that is not one
    /// operation's (`"commit (multi)"`, `"/results"`).
    pub fn new(what: &'static str, subject: impl Into<String>) -> Self {
        Self {
            what,
            subject: subject.into(),
            ops: Vec::new(),
        }
    }

    /// Applies only if `path` is at `version`.
    pub fn check(&mut self, label: Label, path: &str, version: i32) -> &mut Self {
        self.push(Op::check(label, path, version))
    }

    /// Creates the persistent node `path` with `data` and `acl`.
    pub fn create(&mut self, label: Label, path: &str, data: &[u8], acl: &NodeAcl) -> &mut Self {
        self.push(Op::create(label, path, data, acl))
    }

    /// Sets `path`'s data.
    pub fn set(
        &mut self,
        label: Label,
        path: &str,
        data: &[u8],
        version: Option<i32>,
    ) -> &mut Self {
        self.push(Op::set(label, path, data, version))
    }

    /// Deletes `path`.
    pub fn delete(&mut self, label: Label, path: &str, version: Option<i32>) -> &mut Self {
        self.push(Op::delete(label, path, version))
    }

    /// Appends one operation.
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// Appends operations (those another module built: a release, a counter update).
    pub fn extend(&mut self, ops: impl IntoIterator<Item = Op>) -> &mut Self {
        self.ops.extend(ops);
        self
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The operations' labels, in order.
    pub fn labels(&self) -> Vec<Label> {
        self.ops.iter().map(|op| op.label).collect()
    }

    /// The first set-data operation labelled `label`: its node, data and expected version
    /// (what a plan's tests inspect).
    pub fn set_of(&self, label: Label) -> Option<(&str, &[u8], Option<i32>)> {
        self.labelled(label).find_map(|op| match &op.kind {
            OpKind::Set { data, version } => Some((op.path.as_str(), data.as_slice(), *version)),
            _ => None,
        })
    }

    /// The operations labelled `label`.
    pub fn labelled(&self, label: Label) -> impl Iterator<Item = &Op> {
        self.ops.iter().filter(move |op| op.label == label)
    }

    /// Whether any operation carries `label`.
    pub fn has(&self, label: Label) -> bool {
        self.labelled(label).next().is_some()
    }

    /// Applies every operation, or none.
    pub async fn commit(&self, client: &FleetClient) -> Result<(), TxnError> {
        let mut multi = client.raw().new_multi_writer();
        for op in &self.ops {
            let added = match &op.kind {
                OpKind::Check { version } => multi.add_check_version(&op.path, *version),
                OpKind::Create { data, acl } => multi.add_create(&op.path, data, &acl.persistent()),
                OpKind::Set { data, version } => multi.add_set_data(&op.path, data, *version),
                OpKind::Delete { version } => multi.add_delete(&op.path, *version),
            };
            added.map_err(|e| CoordError::zk(op.kind.verb(), &op.path, e))?;
        }
        match multi.commit().await {
            Ok(_) => Ok(()),
            Err(MultiWriteError::OperationFailed { index, source }) => match self.ops.get(index) {
                Some(op) => Err(TxnError::Failed {
                    what: self.what,
                    label: op.label,
                    path: op.path.clone(),
                    source,
                }),
                // ZooKeeper named an operation we did not send: report the whole.
                None => Err(CoordError::zk(self.what, &self.subject, source).into()),
            },
            Err(MultiWriteError::RequestFailed { source }) => {
                Err(CoordError::zk(self.what, &self.subject, source).into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_keep_their_labels_in_order() {
        let acl = NodeAcl::open();
        let mut txn = Txn::new("commit (multi)", "/results");
        txn.check(Label::Fence, "/election/x", 0)
            .create(Label::Entry, "/results/1", b"{}", &acl)
            .set(Label::Counter, "/counter", b"3", Some(7));
        assert_eq!(txn.labels(), [Label::Fence, Label::Entry, Label::Counter]);
        assert_eq!(
            txn.set_of(Label::Counter),
            Some(("/counter", b"3".as_slice(), Some(7)))
        );
        assert_eq!(txn.set_of(Label::Entry), None, "a create, not a set");
        assert!(txn.has(Label::Entry));
        assert!(!txn.has(Label::Ledger));
        assert_eq!(
            txn.labelled(Label::Counter).next().unwrap().kind,
            OpKind::Set {
                data: b"3".to_vec(),
                version: Some(7)
            }
        );
    }

    #[test]
    fn a_failure_names_its_label_and_node() {
        let err = TxnError::Failed {
            what: "commit (multi)",
            label: Label::Fence,
            path: "/election/x".into(),
            source: ZkError::NoNode,
        };
        assert!(err.is(Label::Fence));
        assert!(err.is_at(Label::Fence, &ZkError::NoNode));
        assert!(!err.is_at(Label::Fence, &ZkError::BadVersion));
        let text = err.to_string();
        assert!(
            text.contains("fence") && text.contains("/election/x"),
            "{text}"
        );
    }
}
