//! What the pure round modules' unit tests share: a leader's election node, the state it
//! read, and a transaction's set operation as owned values.

use crate::coord::{
    barrier::RoundState,
    counter::CounterValue,
    txn::{Label, Txn},
};

pub(super) const NODE: &str = "/election/x__lock__0000000001";

/// `{root}/round` at `round`, version 10.
pub(super) fn state(round: u64) -> RoundState {
    RoundState {
        round,
        version: 10,
        created: (1, 2),
    }
}

/// The counter at `value`, version 5.
pub(super) fn counter(value: i64) -> CounterValue {
    CounterValue { value, version: 5 }
}

/// The set operation labelled `label`: node, data, expected version.
pub(super) fn set_data(txn: &Txn, label: Label) -> (String, Vec<u8>, Option<i32>) {
    let (path, data, version) = txn.set_of(label).expect("a set with the label");
    (path.to_owned(), data.to_vec(), version)
}
