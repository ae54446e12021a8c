//! A new leader's first round: the round its predecessor released and did not commit. The
//! readings devices wrote for it are in their nodes, so the successor finishes it — on the
//! predecessor's schedule when it can (a SIGTERM: the successor is elected within
//! milliseconds and commits at the round's deadline, as the predecessor would have), late
//! when the predecessor died and its session had to expire first (the readings stay in the
//! device nodes until the next release; after an outage of ZooKeeper's quorum too). A round
//! whose deadline passed more than the grace ago ([`grace`]: at least 30 s) is given up: the leader releases the next round
//! without a result and records why in `{root}/given-up` (`fleetmeter status`), the log and
//! `fleetmeter_rounds_given_up_total`.
//!
//! When the round was released comes from ZooKeeper (the modification time of
//! `{root}/round`, by the server's clock), so the hand-over is as exact as the clocks of the
//! server and the agents agree (NTP); a clock ahead of the server's is clamped to "just
//! released".

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use zookeeper_client::Error as ZkError;

use super::schedule::Schedule;
use crate::coord::{
    CoordError, FleetClient,
    paths::GIVEN_UP,
    txn::{Label, Txn},
};

/// Most given-up rounds `{root}/given-up` keeps (the latest).
pub const GIVEN_UP_KEPT: usize = 20;

/// What a new leader does with the round its predecessor released.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Handover {
    /// Finish it on the predecessor's schedule: collect until its collection deadline,
    /// commit at its end.
    OnTime(Schedule),
    /// Its end passed less than the grace ago: take the readings that are there, commit now.
    Late {
        schedule: Schedule,
        late_by: Duration,
    },
    /// Its end passed more than the grace ago: release past it, unfinished.
    GiveUp { late_by: Duration },
}

/// The least [`grace`]: an outage of ZooKeeper's quorum expires every session and leaves the
/// round in flight with its readings (devices re-create their nodes with them); finishing it
/// within half a minute publishes real measurements, only late.
pub const MIN_GRACE: Duration = Duration::from_secs(30);

/// How late a round may still be finished: what a crash of its leader costs — its session
/// expires between one and two session timeouts later (the server checks expiry on its
/// ticks, and a session timeout is at least two ticks) — plus a period, and at least
/// [`MIN_GRACE`]. Later than that its readings are too stale to publish as that round.
pub(super) fn grace(session_timeout: Duration, period: Duration) -> Duration {
    (session_timeout * 2 + period).max(MIN_GRACE)
}

/// The decision for a round released `elapsed` ago, with `period` and `collect_fraction` in
/// force and `grace` ([`grace`]) to finish it late.
pub(super) fn decide(
    now: Instant,
    elapsed: Duration,
    period: Duration,
    collect_fraction: f64,
    grace: Duration,
) -> Handover {
    if elapsed < period {
        let start = now.checked_sub(elapsed).unwrap_or(now);
        return Handover::OnTime(Schedule::new(start, period, collect_fraction));
    }
    let late_by = elapsed - period;
    if late_by > grace {
        return Handover::GiveUp { late_by };
    }
    // Its end is now: one look at the readings, then the commit; the next round gets a
    // whole period.
    let start = now.checked_sub(period).unwrap_or(now);
    Handover::Late {
        schedule: Schedule::new(start, period, collect_fraction),
        late_by,
    }
}

/// How long ago a round released at `released_ms` (ZooKeeper's clock) was released, by this
/// host's clock `now_ms`; zero when the clocks disagree the other way.
pub(super) fn elapsed_since(released_ms: i64, now_ms: u64) -> Duration {
    let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
    Duration::from_millis(u64::try_from(now.saturating_sub(released_ms)).unwrap_or(0))
}

/// One round released past unfinished, as `{root}/given-up` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GivenUp {
    pub round: u64,
    /// `too_late`.
    pub reason: String,
    /// How late it was when the new leader found it, ms.
    pub late_ms: u64,
    /// The leader that gave it up.
    pub leader: String,
    /// When, ms since the Unix epoch.
    pub at: u64,
}

/// The rounds `{root}/given-up` lists (empty when absent or unreadable).
pub async fn read(client: &FleetClient) -> Result<Vec<GivenUp>, CoordError> {
    Ok(read_node(client).await?.0)
}

async fn read_node(client: &FleetClient) -> Result<(Vec<GivenUp>, Option<i32>), CoordError> {
    match client.get_data(GIVEN_UP).await {
        Ok((data, stat)) => Ok((
            serde_json::from_slice(&data).unwrap_or_default(),
            Some(stat.version),
        )),
        Err(ZkError::NoNode) => Ok((Vec::new(), None)),
        Err(e) => Err(CoordError::zk("read", GIVEN_UP, e)),
    }
}

/// The list with `entry` added (once per round) and only the latest [`GIVEN_UP_KEPT`] kept.
fn with(mut list: Vec<GivenUp>, entry: GivenUp) -> Vec<GivenUp> {
    list.retain(|g| g.round != entry.round);
    list.push(entry);
    list.sort_by_key(|g| g.round);
    let excess = list.len().saturating_sub(GIVEN_UP_KEPT);
    list.drain(..excess);
    list
}

/// Attempts at adding to `{root}/given-up` while someone else changes it meanwhile.
const RECORD_ATTEMPTS: usize = 5;

/// Adds `entry` to `{root}/given-up`, fenced by the leader's election node `node`.
pub(super) async fn record(
    client: &FleetClient,
    node: &str,
    entry: GivenUp,
) -> Result<(), CoordError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (list, version) = read_node(client).await?;
        let data = serde_json::to_vec(&with(list, entry.clone())).expect("a list serializes");
        let mut txn = Txn::new("given-up (multi)", GIVEN_UP);
        txn.check(Label::Fence, node, 0);
        match version {
            Some(version) => txn.set(Label::GivenUp, GIVEN_UP, &data, Some(version)),
            None => txn.create(Label::GivenUp, GIVEN_UP, &data, client.acl()),
        };
        match txn.commit(client).await {
            Ok(()) => return Ok(()),
            Err(err)
                if attempts < RECORD_ATTEMPTS
                    && (err.is_at(Label::GivenUp, &ZkError::BadVersion)
                        || err.is_at(Label::GivenUp, &ZkError::NodeExists)) =>
            {
                continue;
            }
            Err(err) => return Err(err.into_coord()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(1);
    const GRACE: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn a_round_released_moments_ago_keeps_its_deadline() {
        let now = Instant::now() + Duration::from_secs(100);
        let Handover::OnTime(schedule) = decide(now, ms(300), PERIOD, 0.8, GRACE) else {
            panic!("on time");
        };
        assert_eq!(schedule.commit_at(), now + ms(700));
        assert_eq!(schedule.collect_until(), now + ms(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_past_its_end_is_committed_now_or_given_up() {
        let now = Instant::now() + Duration::from_secs(100);
        match decide(now, ms(4_000), PERIOD, 0.8, GRACE) {
            Handover::Late { schedule, late_by } => {
                assert_eq!(schedule.commit_at(), now);
                assert!(schedule.collect_until() < now);
                assert_eq!(late_by, ms(3_000));
            }
            other => panic!("late, got {other:?}"),
        }
        assert_eq!(
            decide(now, ms(7_000), PERIOD, 0.8, GRACE),
            Handover::GiveUp { late_by: ms(6_000) }
        );
    }

    #[test]
    fn the_grace_covers_a_crash_and_at_least_half_a_minute() {
        assert_eq!(grace(ms(2_000), ms(1_000)), MIN_GRACE);
        assert_eq!(grace(ms(20_000), ms(5_000)), ms(45_000));
    }

    #[test]
    fn clocks_that_disagree_count_as_just_released() {
        assert_eq!(elapsed_since(10_000, 9_000), Duration::ZERO);
        assert_eq!(elapsed_since(10_000, 10_250), ms(250));
    }

    #[test]
    fn the_list_keeps_each_round_once_and_only_the_latest() {
        let entry = |round| GivenUp {
            round,
            reason: "too_late".into(),
            late_ms: 1,
            leader: "a".into(),
            at: 1,
        };
        let mut list = Vec::new();
        for round in 1..=30 {
            list = with(list, entry(round));
        }
        list = with(list, entry(30));
        assert_eq!(list.len(), GIVEN_UP_KEPT);
        assert_eq!(list.first().unwrap().round, 11);
        assert_eq!(list.last().unwrap().round, 30);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
}
