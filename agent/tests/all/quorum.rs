//! A 3-node ZooKeeper ensemble: losing one node changes nothing for the fleet; losing the
//! quorum suspends it (no leader acts), and it recovers when the quorum returns.

use std::time::Duration;

use crate::support::{wait_until, zk::ZkEnsemble};
use fleetmeter::coord::{
    Session, SessionStatus, ZkSettings, counter,
    election::{Election, Leadership},
    membership::Membership,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_node_keeps_working_and_losing_quorum_suspends() {
    let mut ensemble = ZkEnsemble::start(3);
    let session = Session::connect(ZkSettings {
        session_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(30),
        ..ZkSettings::new(ensemble.hosts(), "/fleetmeter")
    })
    .await
    .unwrap();
    let election = Election::start(&session, "1");
    let _member = Membership::join(&session, "1", b"x".to_vec())
        .await
        .unwrap();
    let leading = || election.leadership().borrow().is_leader();
    wait_until("a leader", Duration::from_secs(20), || async { leading() }).await;
    let first_session = session.session_id();

    // One node down (possibly ours: the client moves to another, the session is kept).
    ensemble.stop(0);
    wait_until(
        "leading and writable with one node down",
        Duration::from_secs(30),
        || async {
            leading()
                && match session.client() {
                    Ok(client) => counter::increment(&client, 1).await.is_ok(),
                    Err(_) => false,
                }
        },
    )
    .await;
    assert_eq!(session.session_id(), first_session, "the session survived");
    assert_eq!(
        session.current_status(),
        SessionStatus::Connected { generation: 1 }
    );

    // Quorum lost: the remaining node stops serving; the agent must not act as leader.
    ensemble.stop(1);
    wait_until(
        "suspended without quorum",
        Duration::from_secs(30),
        || async {
            matches!(
                session.current_status(),
                SessionStatus::Suspended { .. } | SessionStatus::Lost { .. }
            )
        },
    )
    .await;
    wait_until(
        "not leading without quorum",
        Duration::from_secs(10),
        || async {
            matches!(
                *election.leadership().borrow(),
                Leadership::Uncertain | Leadership::Follower { .. }
            )
        },
    )
    .await;

    // Quorum back: connected again and exactly this contender leads.
    ensemble.restart(1);
    ensemble.wait_for_quorum();
    wait_until("connected again", Duration::from_secs(60), || async {
        session.current_status().is_connected()
    })
    .await;
    wait_until("leading again", Duration::from_secs(30), || async {
        leading()
    })
    .await;
    session.close().await;
}
