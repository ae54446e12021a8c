//! The leader's commit as data, in the spirit of raft-rs's `Ready`: given what the leader
//! read (the round, the counter, the outbox's ledger) and the round's result, [`plan`]
//! returns the transaction to apply and what it will have done, and [`judge`] says what a
//! failed transaction means. Pure: no ZooKeeper, no clock; the executor
//! (`round::commit`) reads, writes and retries, and the tests below cover every outcome.
//!
//! The commit is one transaction: our election node is unchanged ([`Label::Fence`]); the
//! result, if there is one and it fits, as an outbox entry and the ledger's update
//! ([`Label::Entry`], [`Label::Ledger`]); the counter plus the result's readings, or the
//! counter written back when someone else changed it ([`Label::Counter`]); the release of
//! the next round ([`Label::Round`], [`Label::Barrier`]).

use zookeeper_client::Error as ZkError;

use crate::{
    coord::{
        CoordError, NodeAcl,
        barrier::{self, RoundState},
        counter::{self, CounterValue},
        txn::{Label, Txn, TxnError},
    },
    publish::outbox::{self, Encoded, Ledger, LedgerState, MarkKey},
    wire::{InvalidRound, Round},
};

/// Why a round's result was not stored.
#[derive(Debug, thiserror::Error)]
pub enum Dropped {
    #[error("the API would refuse it: {0}")]
    Invalid(#[from] InvalidRound),
    #[error("the outbox is full ({} rounds, {} bytes; at most {} rounds, {} bytes): publish or discard what waits (`fleetmeter outbox list`)", .now.rounds, .now.bytes, .max.rounds, .max.bytes)]
    OutboxFull { now: Ledger, max: Ledger },
}

impl Dropped {
    /// The metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Dropped::Invalid(_) => "invalid",
            Dropped::OutboxFull { .. } => "outbox_full",
        }
    }
}

/// What a commit did (once its transaction applied).
#[derive(Debug)]
pub(super) struct Committed {
    /// The counter after the commit.
    pub counter: i64,
    /// Whether the result went into the outbox.
    pub stored: bool,
    /// The outbox's ledger after the commit, when it was read.
    pub ledger: Option<Ledger>,
    pub dropped: Option<Dropped>,
}

/// The round's result, made ready for the commit.
#[derive(Debug)]
pub(super) enum Staged {
    /// No result (no readings, or the aggregator returned none): only the release.
    Nothing,
    /// The API would refuse it: never stored.
    Invalid(InvalidRound),
    /// To store: the round with the counter it brings the fleet to, encoded.
    Store { encoded: Encoded, delta: i64 },
}

impl Staged {
    /// The encoded entry, when there is one to store.
    pub fn encoded(&self) -> Option<&Encoded> {
        match self {
            Staged::Store { encoded, .. } => Some(encoded),
            _ => None,
        }
    }
}

/// Stages `result` on a counter at `counter`: the round carries the counter it brings the
/// fleet to (none while the counter's base is pending, `counter_known` false), is checked
/// against the wire contract and encoded for the outbox (`term`: our election node; `mark`:
/// the fleet's commit-mark key).
pub(super) fn stage(
    result: Option<&Round>,
    counter: i64,
    counter_known: bool,
    term: &str,
    mark: Option<&MarkKey>,
) -> Result<Staged, CoordError> {
    let Some(result) = result else {
        return Ok(Staged::Nothing);
    };
    let mut result = result.clone();
    let delta = i64::from(result.count);
    let after = counter::checked_add(counter, delta)?;
    result.counter = counter_known.then_some(after);
    Ok(match result.validate() {
        Err(invalid) => Staged::Invalid(invalid),
        Ok(()) => Staged::Store {
            encoded: outbox::encode(&result, term, mark),
            delta,
        },
    })
}

/// What the leader read before committing.
#[derive(Clone, Copy, Debug)]
pub(super) struct Inputs<'a> {
    /// Our election node (the fence).
    pub node: &'a str,
    pub acl: &'a NodeAcl,
    /// `{root}/round` as read: the round being committed.
    pub state: RoundState,
    /// The counter to build on.
    pub counter: CounterValue,
    /// The counter node holds something the leader did not write: write `counter` back.
    pub restore_counter: bool,
    /// The counter's pending base is added (in `counter`): delete its marker.
    pub settle: Option<counter::PendingBase>,
    /// The outbox's ledger (read when there is a result to store).
    pub ledger: Option<LedgerState>,
    /// The outbox's bound.
    pub max: Ledger,
}

/// A commit, ready to apply.
#[derive(Debug)]
pub(super) struct Plan {
    pub txn: Txn,
    /// The entry the transaction stores: a large round's parts are written before it.
    pub entry: Option<Encoded>,
    /// What the commit will have done once `txn` applied.
    pub committed: Committed,
    /// `{root}/round` as `txn` leaves it.
    pub released: RoundState,
    /// The counter as `txn` leaves it.
    pub counter: CounterValue,
}

/// The commit of `staged` on what the leader read.
pub(super) fn plan(inputs: Inputs<'_>, staged: Staged) -> Result<Plan, CoordError> {
    let Inputs {
        node,
        acl,
        state,
        counter: count,
        restore_counter,
        settle,
        ledger,
        max,
    } = inputs;
    let mut txn = Txn::new("commit (multi)", crate::coord::paths::RESULTS);
    txn.check(Label::Fence, node, 0);
    let mut committed = Committed {
        counter: count.value,
        stored: false,
        ledger: None,
        dropped: None,
    };
    let mut stored = None;
    match staged {
        Staged::Nothing => {}
        Staged::Invalid(invalid) => committed.dropped = Some(invalid.into()),
        Staged::Store { encoded, delta } => {
            let ledger = ledger.ok_or_else(|| {
                CoordError::Settings("a result to store needs the outbox's ledger".into())
            })?;
            if ledger.ledger.fits(encoded.bytes, &max) {
                let round = state.round;
                let (ops, after) = outbox::entry_ops(acl, round, &encoded, ledger);
                txn.extend(ops);
                txn.push(counter::increment_op(count, delta)?);
                committed.ledger = Some(after);
                committed.counter = counter::checked_add(count.value, delta)?;
                committed.stored = true;
                stored = Some(encoded);
            } else {
                committed.ledger = Some(ledger.ledger);
                committed.dropped = Some(Dropped::OutboxFull {
                    now: ledger.ledger,
                    max,
                });
            }
        }
    }
    if restore_counter && !committed.stored {
        txn.push(counter::increment_op(count, 0)?);
    }
    if let Some(pending) = settle {
        txn.push(counter::settle_base(pending));
    }
    txn.extend(barrier::release(acl, state)?);
    let written = committed.stored || restore_counter;
    Ok(Plan {
        txn,
        entry: stored,
        released: RoundState {
            round: state.round.saturating_add(1),
            version: state.version.wrapping_add(1),
            created: state.created,
        },
        counter: CounterValue {
            value: committed.counter,
            version: if written {
                count.version.wrapping_add(1)
            } else {
                count.version
            },
        },
        committed,
    })
}

/// What a failed commit (or write-back) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// Our election node is gone or changed: we are not the leader.
    Fenced,
    /// `{root}/results` does not exist yet: make it and try again.
    NoResultsDir,
    /// The counter, the ledger, the round or the counter's pending base moved since read:
    /// read again (if the round moved, someone else released it).
    Conflict,
    /// Anything else: the commit failed.
    Other,
}

pub(super) fn judge(err: &TxnError) -> Failure {
    match err.failed() {
        Some((Label::Fence, _)) => Failure::Fenced,
        Some((Label::Entry, ZkError::NoNode)) => Failure::NoResultsDir,
        Some((
            Label::Counter | Label::Ledger | Label::Round | Label::CounterBase,
            ZkError::BadVersion,
        )) => Failure::Conflict,
        _ => Failure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::{super::fixtures::*, *};
    use crate::coord::{
        paths::{BARRIER, COUNTER, OUTBOX, ROUND},
        txn::OpKind,
    };

    fn result(round: u64, count: usize) -> Round {
        Round {
            round,
            value: 21.5,
            count: count as u32,
            devices: (0..count).map(|i| i.to_string()).collect(),
            aggregator: "mean@0.1.0".into(),
            leader: "1".into(),
            ts: 1,
            unit: None,
            counter: None,
            version: crate::wire::VERSION,
            values: Some(vec![21.5; count]),
            shadow: None,
            rollout: None,
            quantities: None,
        }
        .one_quantity("t")
    }

    fn ledger(rounds: u64, bytes: u64) -> LedgerState {
        LedgerState {
            ledger: Ledger { rounds, bytes },
            version: 3,
        }
    }

    const MAX: Ledger = Ledger {
        rounds: 100,
        bytes: 1 << 20,
    };

    fn inputs(acl: &NodeAcl, ledger: Option<LedgerState>) -> Inputs<'_> {
        Inputs {
            node: NODE,
            acl,
            state: state(7),
            counter: counter(40),
            restore_counter: false,
            settle: None,
            ledger,
            max: MAX,
        }
    }

    #[test]
    fn while_the_counter_base_is_pending_rounds_carry_no_counter_and_the_base_is_added_once() {
        let acl = NodeAcl::open();
        let staged = stage(Some(&result(7, 3)), 40, false, NODE, None).unwrap();
        let plan = plan(inputs(&acl, Some(ledger(2, 100))), staged).unwrap();
        let entry = plan.txn.labelled(Label::Entry).next().unwrap();
        let OpKind::Create { data, .. } = &entry.kind else {
            panic!("the entry is created");
        };
        let stored: Round = serde_json::from_slice(data).unwrap();
        assert_eq!(stored.counter, None, "not the fleet's total yet");
        assert_eq!(
            set_data(&plan.txn, Label::Counter),
            (COUNTER.into(), b"43".to_vec(), Some(5)),
            "the readings are still counted"
        );
        assert!(!plan.txn.labels().contains(&Label::CounterBase));

        // The API said the counter stood at 1000 before: 40 + 1000, and this round's 3.
        let pending = counter::PendingBase {
            since: 5,
            version: 0,
        };
        let settled = Inputs {
            counter: counter(1040),
            restore_counter: true,
            settle: Some(pending),
            ..inputs(&acl, Some(ledger(2, 100)))
        };
        let staged = stage(Some(&result(7, 3)), 1040, true, NODE, None).unwrap();
        let added = super::plan(settled, staged).unwrap();
        assert_eq!(
            set_data(&added.txn, Label::Counter),
            (COUNTER.into(), b"1043".to_vec(), Some(5))
        );
        let marker = added.txn.labelled(Label::CounterBase).next().unwrap();
        assert_eq!(marker.path, crate::coord::paths::COUNTER_BASE);
        assert_eq!(marker.kind, OpKind::Delete { version: Some(0) });
        assert_eq!(added.committed.counter, 1043);
    }

    #[test]
    fn a_result_is_stored_counted_and_the_next_round_released_in_one_fenced_transaction() {
        let acl = NodeAcl::open();
        let staged = stage(Some(&result(7, 3)), 40, true, NODE, None).unwrap();
        let bytes = staged.encoded().unwrap().bytes;
        let plan = plan(inputs(&acl, Some(ledger(2, 100))), staged).unwrap();
        assert_eq!(
            plan.txn.labels(),
            [
                Label::Fence,
                Label::Entry,
                Label::Ledger,
                Label::Counter,
                Label::Round,
                Label::Barrier,
                Label::Barrier
            ]
        );
        assert_eq!(
            plan.txn.ops()[0].kind,
            OpKind::Check { version: 0 },
            "the fence is our election node at version 0"
        );
        assert_eq!(plan.txn.ops()[0].path, NODE);
        let entry = plan.txn.labelled(Label::Entry).next().unwrap();
        assert_eq!(entry.path, outbox::result_path(7));
        let OpKind::Create { data, .. } = &entry.kind else {
            panic!("the entry is created");
        };
        let stored: Round = serde_json::from_slice(data).unwrap();
        assert_eq!(
            stored.counter,
            Some(43),
            "the round carries the counter it makes"
        );
        assert_eq!(
            set_data(&plan.txn, Label::Counter),
            (COUNTER.into(), b"43".to_vec(), Some(5))
        );
        assert_eq!(
            set_data(&plan.txn, Label::Round),
            (ROUND.into(), b"8".to_vec(), Some(10))
        );
        let (path, data, version) = set_data(&plan.txn, Label::Ledger);
        assert_eq!((path.as_str(), version), (OUTBOX, Some(3)));
        let after: Ledger = serde_json::from_slice(&data).unwrap();
        assert_eq!(
            after,
            Ledger {
                rounds: 3,
                bytes: 100 + bytes
            }
        );
        assert!(plan.committed.stored && plan.committed.dropped.is_none());
        assert_eq!(plan.committed.counter, 43);
        assert_eq!(plan.committed.ledger, Some(after));
        assert_eq!(plan.released.round, 8);
        assert_eq!(plan.released.version, 11);
        assert_eq!(
            plan.counter,
            CounterValue {
                value: 43,
                version: 6
            }
        );
    }

    #[test]
    fn no_result_commits_the_release_alone() {
        let acl = NodeAcl::open();
        let plan = plan(
            inputs(&acl, None),
            stage(None, 40, true, NODE, None).unwrap(),
        )
        .unwrap();
        assert_eq!(
            plan.txn.labels(),
            [Label::Fence, Label::Round, Label::Barrier, Label::Barrier]
        );
        let barrier: Vec<&str> = plan
            .txn
            .labelled(Label::Barrier)
            .map(|op| op.path.as_str())
            .collect();
        assert_eq!(barrier, [BARRIER, BARRIER], "removed and re-created");
        assert!(!plan.committed.stored);
        assert!(plan.committed.dropped.is_none());
        assert_eq!(plan.counter, counter(40), "the counter is untouched");
    }

    #[test]
    fn a_full_outbox_drops_the_result_but_the_round_still_advances() {
        let acl = NodeAcl::open();
        let staged = stage(Some(&result(7, 3)), 40, true, NODE, None).unwrap();
        let full = ledger(MAX.rounds, 10);
        let plan = plan(inputs(&acl, Some(full)), staged).unwrap();
        assert!(!plan.txn.has(Label::Entry));
        assert!(
            plan.entry.is_none(),
            "no parts written for a dropped result"
        );
        assert!(
            !plan.txn.has(Label::Counter),
            "nothing stored, nothing counted"
        );
        assert!(plan.txn.has(Label::Round));
        assert!(!plan.committed.stored);
        let dropped = plan.committed.dropped.as_ref().unwrap();
        assert_eq!(dropped.reason(), "outbox_full");
        assert!(dropped.to_string().contains("fleetmeter outbox list"));
        assert_eq!(plan.committed.ledger, Some(full.ledger));
        assert_eq!(plan.counter, counter(40));
    }

    #[test]
    fn a_result_the_api_would_refuse_is_never_stored() {
        let acl = NodeAcl::open();
        let mut bad = result(7, 3);
        bad.value = f64::NAN;
        let staged = stage(Some(&bad), 40, true, NODE, None).unwrap();
        assert!(matches!(staged, Staged::Invalid(_)));
        let plan = plan(inputs(&acl, None), staged).unwrap();
        assert!(!plan.txn.has(Label::Entry));
        assert_eq!(plan.committed.dropped.as_ref().unwrap().reason(), "invalid");
    }

    #[test]
    fn a_counter_changed_by_someone_else_is_written_back_with_or_without_a_result() {
        let acl = NodeAcl::open();
        let restore = |staged, ledger| {
            let inputs = Inputs {
                restore_counter: true,
                ..inputs(&acl, ledger)
            };
            plan(inputs, staged).unwrap()
        };
        let alone = restore(stage(None, 40, true, NODE, None).unwrap(), None);
        assert_eq!(
            set_data(&alone.txn, Label::Counter),
            (COUNTER.into(), b"40".to_vec(), Some(5)),
            "our value, over whatever version is there"
        );
        assert_eq!(
            alone.counter,
            CounterValue {
                value: 40,
                version: 6
            }
        );
        let with_result = restore(
            stage(Some(&result(7, 2)), 40, true, NODE, None).unwrap(),
            Some(ledger(0, 0)),
        );
        assert_eq!(
            with_result.txn.labelled(Label::Counter).count(),
            1,
            "one write of the counter: ours plus the readings"
        );
        assert_eq!(set_data(&with_result.txn, Label::Counter).1, b"42".to_vec());
    }

    #[test]
    fn a_large_round_commits_a_reference_to_its_parts() {
        let acl = NodeAcl::open();
        let mut big = result(7, fleetmeter_wire::MAX_DEVICES);
        big.devices = (0..fleetmeter_wire::MAX_DEVICES)
            .map(|i| format!("{i:0width$}", width = fleetmeter_wire::MAX_ID_BYTES))
            .collect();
        let staged = stage(Some(&big), 40, true, NODE, None).unwrap();
        let encoded = staged.encoded().unwrap().clone();
        assert!(!encoded.parts.is_empty(), "written before the transaction");
        let roomy = Inputs {
            max: Ledger {
                rounds: 100,
                bytes: 64 << 20,
            },
            ..inputs(&acl, Some(ledger(0, 0)))
        };
        let plan = plan(roomy, staged).unwrap();
        let entry = plan.txn.labelled(Label::Entry).next().unwrap();
        let OpKind::Create { data, .. } = &entry.kind else {
            panic!("the entry is created");
        };
        assert_eq!(data, &encoded.entry);
        assert!(
            data.len() < 1024,
            "the entry holds the reference, not the round"
        );
        assert!(plan.committed.stored);
        assert_eq!(plan.entry.as_ref(), Some(&encoded), "its parts go first");
    }

    #[test]
    fn a_marked_fleet_commits_marked_entries() {
        let key = MarkKey::from_token("secret");
        let staged = stage(Some(&result(7, 1)), 0, true, NODE, Some(&key)).unwrap();
        let entry: serde_json::Value =
            serde_json::from_slice(&staged.encoded().unwrap().entry).unwrap();
        assert!(entry["mark"].is_string(), "{entry}");
    }

    #[test]
    fn a_counter_at_its_limit_is_an_error_not_a_wrap() {
        assert!(stage(Some(&result(7, 2)), i64::MAX, true, NODE, None).is_err());
    }

    #[test]
    fn failures_are_judged_by_label() {
        let failed = |label, source| TxnError::Failed {
            what: "commit (multi)",
            label,
            path: "/x".into(),
            source,
        };
        assert_eq!(
            judge(&failed(Label::Fence, ZkError::NoNode)),
            Failure::Fenced
        );
        assert_eq!(
            judge(&failed(Label::Fence, ZkError::BadVersion)),
            Failure::Fenced
        );
        assert_eq!(
            judge(&failed(Label::Entry, ZkError::NoNode)),
            Failure::NoResultsDir
        );
        for label in [Label::Counter, Label::Ledger, Label::Round] {
            assert_eq!(
                judge(&failed(label, ZkError::BadVersion)),
                Failure::Conflict,
                "{label}"
            );
        }
        assert_eq!(
            judge(&failed(Label::Entry, ZkError::NodeExists)),
            Failure::Other
        );
        assert_eq!(
            judge(&failed(Label::Counter, ZkError::NoNode)),
            Failure::Other
        );
        assert_eq!(judge(&TxnError::Coord(CoordError::Closed)), Failure::Other);
    }
}
