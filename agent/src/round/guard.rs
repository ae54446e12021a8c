//! What the leader trusts before it commits: only values it wrote. `{root}/round` and
//! `{root}/counter` must be what its last commit left (at a term's start: readable, and the
//! round above everything in the outbox); anything else was written by someone else and is
//! written back, fenced ([`restore_round`]). Pure decisions; `round::commit` reads and writes.

use crate::coord::{
    barrier::{self, RoundState},
    counter::CounterValue,
    txn::{Label, Txn},
};

/// The leader's check of `{root}/round` before a round: only the leader moves it, by one per
/// commit, so a round other than the one it left (lower: backwards; higher: a jump) was
/// written by someone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RoundCheck {
    /// The round is ours: lead it.
    Ours,
    /// The first round of a term, above everything in the outbox: adopt it.
    Adopt,
    /// Someone else moved it: write `expected` back.
    Refuse { expected: u64 },
    /// The first round of a term lies at or below a round in the outbox: ask where rounds
    /// continue (at least `floor`), then refuse it.
    BelowFloor { floor: u64 },
}

/// `released`: the round as our last release left it (`None` at a term's start); `floor`:
/// one above the outbox's highest round, read only at a term's start.
pub(super) fn check_round(
    released: Option<RoundState>,
    state: RoundState,
    floor: Option<u64>,
) -> RoundCheck {
    match released {
        Some(released) if released == state => RoundCheck::Ours,
        Some(released) => RoundCheck::Refuse {
            expected: released.round,
        },
        None => {
            let floor = floor.unwrap_or(1);
            if state.round >= floor {
                RoundCheck::Adopt
            } else {
                RoundCheck::BelowFloor { floor }
            }
        }
    }
}

/// The leader's check of the counter before a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CounterCheck {
    /// Build on it.
    Build(CounterValue),
    /// Someone else changed it (or it is not a number): write `value` back.
    Restore { value: i64 },
    /// Unreadable at a term's start: ask the API where the fleet's counter stands.
    Unknown,
}

/// `read`: the node's value (`None`: not a number) at `version`; `ours`: the counter as
/// our last commit left it (`None` at a term's start).
pub(super) fn check_counter(
    read: Option<i64>,
    version: i32,
    ours: Option<CounterValue>,
) -> CounterCheck {
    match (read, ours) {
        (Some(value), None) => CounterCheck::Build(CounterValue { value, version }),
        (Some(value), Some(ours)) if ours.value == value && ours.version == version => {
            CounterCheck::Build(ours)
        }
        (_, Some(ours)) => CounterCheck::Restore { value: ours.value },
        (None, None) => CounterCheck::Unknown,
    }
}

/// Writing back a round someone else moved: fenced, only if the node is unchanged since
/// read. Returns the transaction and `{root}/round` as it leaves it.
pub(super) fn restore_round(node: &str, state: RoundState, expected: u64) -> (Txn, RoundState) {
    let mut txn = Txn::new("restore (multi)", crate::coord::paths::ROUND);
    txn.check(Label::Fence, node, 0)
        .push(barrier::restore(state, expected));
    let after = RoundState {
        round: expected,
        version: state.version.wrapping_add(1),
        created: state.created,
    };
    (txn, after)
}

#[cfg(test)]
mod tests {
    use super::{super::fixtures::*, *};
    use crate::coord::paths::ROUND;

    #[test]
    fn the_leader_refuses_a_round_it_did_not_release() {
        let ours = state(7);
        assert_eq!(check_round(Some(ours), ours, None), RoundCheck::Ours);
        let moved_back = RoundState {
            round: 3,
            version: 11,
            ..ours
        };
        assert_eq!(
            check_round(Some(ours), moved_back, None),
            RoundCheck::Refuse { expected: 7 }
        );
        let jumped = RoundState {
            round: 1_000,
            version: 11,
            ..ours
        };
        assert_eq!(
            check_round(Some(ours), jumped, None),
            RoundCheck::Refuse { expected: 7 }
        );
        // A term's first round: adopted when above the outbox, else where rounds continue.
        assert_eq!(check_round(None, ours, Some(7)), RoundCheck::Adopt);
        assert_eq!(check_round(None, ours, None), RoundCheck::Adopt);
        assert_eq!(
            check_round(None, ours, Some(9)),
            RoundCheck::BelowFloor { floor: 9 }
        );
    }

    #[test]
    fn a_written_back_round_is_fenced_and_version_checked() {
        let (txn, after) = restore_round(NODE, state(3), 7);
        assert_eq!(txn.labels(), [Label::Fence, Label::Round]);
        assert_eq!(
            set_data(&txn, Label::Round),
            (ROUND.into(), b"7".to_vec(), Some(10))
        );
        assert_eq!(after.round, 7);
        assert_eq!(after.version, 11);
    }

    #[test]
    fn the_leader_builds_only_on_the_counter_it_left() {
        let ours = counter(40);
        assert_eq!(
            check_counter(Some(40), 5, Some(ours)),
            CounterCheck::Build(ours)
        );
        assert_eq!(
            check_counter(Some(40), 6, Some(ours)),
            CounterCheck::Restore { value: 40 },
            "same value, written again by someone else"
        );
        assert_eq!(
            check_counter(Some(0), 5, Some(ours)),
            CounterCheck::Restore { value: 40 }
        );
        assert_eq!(
            check_counter(None, 5, Some(ours)),
            CounterCheck::Restore { value: 40 }
        );
        assert_eq!(
            check_counter(Some(12), 9, None),
            CounterCheck::Build(CounterValue {
                value: 12,
                version: 9
            }),
            "a term's first read is trusted when it is a number"
        );
        assert_eq!(check_counter(None, 9, None), CounterCheck::Unknown);
    }
}
