//! The coordination recipes against a real ZooKeeper (tests/support/zk.rs): election,
//! membership, counter, barrier, dynamic configuration, and the faults they must survive.

use std::{sync::Arc, time::Duration};

use crate::support::{proxy::FaultProxy, wait_until, zk::ZkServer};
use fleetmeter::coord::{
    Session, SessionStatus, ZkSettings, barrier, counter,
    dynconfig::{self, Key, Local},
    election::{self, Election, Leadership},
    membership::Membership,
    paths,
    roster::Roster,
    txn::{Label, Txn},
};
use tokio::sync::watch;

async fn session(zk: &ZkServer, timeout: Duration) -> Session {
    Session::connect(ZkSettings {
        session_timeout: timeout,
        connect_timeout: Duration::from_secs(20),
        ..ZkSettings::new(zk.hosts(), "/fleetmeter")
    })
    .await
    .expect("connect to the test ZooKeeper")
}

fn is_leader(rx: &watch::Receiver<Leadership>) -> bool {
    rx.borrow().is_leader()
}

/// Waits until exactly one of `elections` leads; returns its index.
async fn sole_leader(elections: &[watch::Receiver<Leadership>], deadline: Duration) -> usize {
    wait_until("exactly one leader", deadline, || async {
        elections.iter().filter(|e| is_leader(e)).count() == 1
    })
    .await;
    elections.iter().position(is_leader).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_contenders_elect_exactly_one_leader() {
    let zk = ZkServer::start();
    let mut sessions = Vec::new();
    let mut elections = Vec::new();
    for id in 0..20 {
        let s = session(&zk, Duration::from_secs(4)).await;
        elections.push(Election::start(&s, &id.to_string()));
        sessions.push(s);
    }
    let rxs: Vec<_> = elections.iter().map(Election::leadership).collect();
    let client = sessions[0].client().unwrap();
    wait_until(
        "all 20 in the election",
        Duration::from_secs(20),
        || async { election::contenders(&client).await.unwrap().len() == 20 },
    )
    .await;
    let leader = sole_leader(&rxs, Duration::from_secs(20)).await;
    // The leader is the contender with the lowest sequence, in kazoo's order.
    let contenders = election::contenders(&client).await.unwrap();
    assert_eq!(contenders[0], leader.to_string());
    let mut all = contenders.clone();
    all.sort_by_key(|id| id.parse::<u32>().unwrap());
    assert_eq!(all, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
    // Everyone else knows who leads.
    wait_until(
        "followers to know the leader",
        Duration::from_secs(20),
        || async {
            rxs.iter()
                .enumerate()
                .filter(|(i, _)| *i != leader)
                .all(|(_, rx)| {
                    *rx.borrow()
                        == Leadership::Follower {
                            leader: Some(contenders[0].clone()),
                        }
                })
        },
    )
    .await;
    drop(client);
    for s in &sessions {
        s.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_leader_is_replaced_at_once_and_a_middle_contender_can_leave() {
    let zk = ZkServer::start();
    // A long session timeout: a node left to expire would still be listed after `close`.
    let timeout = Duration::from_secs(10);
    let a = session(&zk, timeout).await;
    let ea = Election::start(&a, "a");
    wait_until("a to lead", Duration::from_secs(10), || async {
        is_leader(&ea.leadership())
    })
    .await;
    let b = session(&zk, timeout).await;
    let eb = Election::start(&b, "b");
    let c = session(&zk, timeout).await;
    let ec = Election::start(&c, "c");
    let client = a.client().unwrap();
    wait_until("three contenders", Duration::from_secs(10), || async {
        election::contenders(&client).await.unwrap().len() == 3
    })
    .await;

    // The middle contender leaves: c now waits on a, a keeps leading.
    b.close().await;
    wait_until("b gone", Duration::from_secs(5), || async {
        election::contenders(&client).await.unwrap() == ["a", "c"]
    })
    .await;
    assert!(is_leader(&ea.leadership()));
    assert!(!is_leader(&ec.leadership()));
    assert_eq!(*eb.leadership().borrow(), Leadership::Stopped);
    drop(client);

    // The leader closes its session (SIGTERM path): its node is gone as soon as `close`
    // returns, not a session timeout later, and c takes over.
    a.close().await;
    let client = c.client().unwrap();
    assert_eq!(election::contenders(&client).await.unwrap(), ["c"]);
    drop(client);
    wait_until("c to take over", Duration::from_secs(30), || async {
        is_leader(&ec.leadership())
    })
    .await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_node_is_deleted_by_hand_steps_down() {
    let zk = ZkServer::start();
    let a = session(&zk, Duration::from_secs(4)).await;
    let ea = Election::start(&a, "a");
    wait_until("a to lead", Duration::from_secs(10), || async {
        is_leader(&ea.leadership())
    })
    .await;
    let b = session(&zk, Duration::from_secs(4)).await;
    let eb = Election::start(&b, "b");
    let Leadership::Leader { node } = ea.leadership().borrow().clone() else {
        unreachable!()
    };

    let admin = session(&zk, Duration::from_secs(4)).await;
    wait_until("b queued", Duration::from_secs(10), || async {
        election::contenders(&admin.client().unwrap())
            .await
            .unwrap()
            .len()
            == 2
    })
    .await;
    admin.client().unwrap().delete(&node, None).await.unwrap();
    wait_until("b to lead", Duration::from_secs(10), || async {
        is_leader(&eb.leadership())
    })
    .await;
    assert!(!is_leader(&ea.leadership()), "a stepped down");
    // a re-joined behind b.
    wait_until("a back in the queue", Duration::from_secs(10), || async {
        election::contenders(&admin.client().unwrap())
            .await
            .unwrap()
            == ["b", "a"]
    })
    .await;
    for s in [a, b, admin] {
        s.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_commit_fails_once_the_leader_is_deposed() {
    let zk = ZkServer::start();
    let a = session(&zk, Duration::from_secs(4)).await;
    let ea = Election::start(&a, "a");
    wait_until("a to lead", Duration::from_secs(10), || async {
        is_leader(&ea.leadership())
    })
    .await;
    let Leadership::Leader { node } = ea.leadership().borrow().clone() else {
        unreachable!()
    };
    let client = a.client().unwrap();
    barrier::ensure(&client).await.unwrap();

    // The leader's commit: fence + counter + round release, all or nothing.
    let commit = |readings: i64| {
        let client = client.clone();
        let node = node.clone();
        async move {
            let round = barrier::current(&client).await.unwrap().unwrap();
            let count = counter::read(&client).await.unwrap();
            let mut txn = Txn::new("commit (multi)", "/round");
            txn.check(Label::Fence, &node, 0)
                .push(counter::increment_op(count, readings).unwrap())
                .extend(barrier::release(client.acl(), round).unwrap());
            txn.commit(&client).await
        }
    };
    commit(3).await.expect("the leader commits");
    commit(2).await.expect("and again");
    assert_eq!(counter::read(&client).await.unwrap().value, 5);
    assert_eq!(barrier::current(&client).await.unwrap().unwrap().round, 3);

    // Deposed (its node deleted): the same commit must change nothing.
    client.delete(&node, None).await.unwrap();
    let fenced = commit(4)
        .await
        .expect_err("a deposed leader's write is fenced off");
    assert!(
        fenced.is(Label::Fence),
        "the failure names the fence: {fenced}"
    );
    assert_eq!(counter::read(&client).await.unwrap().value, 5);
    assert_eq!(barrier::current(&client).await.unwrap().unwrap().round, 3);
    drop(client);
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_wait_on_the_round_barrier() {
    let zk = ZkServer::start();
    let s = session(&zk, Duration::from_secs(4)).await;
    let client = s.client().unwrap();
    barrier::ensure(&client).await.unwrap();
    let first = barrier::wait_for_round(&s, None).await.unwrap();
    assert_eq!(first.round, 1);
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { barrier::wait_for_round(&s, Some(first)).await })
    };
    wait_until(
        "the waiter to watch the round",
        Duration::from_secs(10),
        || async { zk.is_watched("/fleetmeter/round") },
    )
    .await;
    assert!(!waiter.is_finished(), "round 1 is done: wait for the next");
    let round = barrier::current(&client).await.unwrap().unwrap();
    let release = || {
        let mut txn = Txn::new("release (multi)", "/round");
        txn.extend(barrier::release(client.acl(), round).unwrap());
        txn
    };
    release().commit(&client).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().round, 2);
    // A stale release (old version) is refused: a round is never released twice.
    let stale = release().commit(&client).await.unwrap_err();
    assert!(
        stale.is_at(Label::Round, &zookeeper_client::Error::BadVersion),
        "{stale}"
    );
    assert_eq!(barrier::current(&client).await.unwrap().unwrap().round, 2);
    drop(client);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_device_id_waits_until_the_live_one_is_gone() {
    let zk = ZkServer::start();
    let first = session(&zk, Duration::from_secs(4)).await;
    let _m1 = Membership::join(&first, "7", b"first".to_vec())
        .await
        .unwrap();
    let second = session(&zk, Duration::from_secs(4)).await;
    let joining = {
        let second = second.clone();
        tokio::spawn(async move { Membership::join(&second, "7", b"second".to_vec()).await })
    };
    // It cannot complete while the first device lives: once it watches the node, it waits.
    wait_until(
        "the second device to watch the taken node",
        Duration::from_secs(10),
        || async { zk.is_watched("/fleetmeter/devices/7") },
    )
    .await;
    assert!(
        !joining.is_finished(),
        "a live device's id must not be taken"
    );
    let client = first.client().unwrap();
    let (data, _) = client.get_data(&paths::device("7")).await.unwrap();
    assert_eq!(data, b"first");
    drop(client);

    first.close().await;
    let m2 = tokio::time::timeout(Duration::from_secs(10), joining)
        .await
        .expect("the second device joins once the first is gone")
        .unwrap()
        .unwrap();
    let (data, stat) = second.client().unwrap().get_data(m2.path()).await.unwrap();
    assert_eq!(data, b"second");
    assert_eq!(Some(stat.ephemeral_owner), second.session_id());
    second.close().await;
}

/// Waits until the roster lists exactly `members`.
async fn roster_sees(roster: &mut Roster, members: &[&str], deadline: Duration) {
    let start = std::time::Instant::now();
    while !(roster.refresh().await.is_ok() && roster.members() == members) {
        assert!(
            start.elapsed() < deadline,
            "the roster lists {:?}, not {members:?}",
            roster.members()
        );
        roster
            .wait(tokio::time::Instant::now() + Duration::from_millis(200))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_recreates_a_deleted_node_and_the_roster_sees_joins_writes_and_leaves() {
    let mut zk = ZkServer::start();
    let watcher = session(&zk, Duration::from_secs(4)).await;
    let mut roster = Roster::new(&watcher);
    roster.refresh().await.unwrap();
    assert!(roster.is_empty());
    let d1 = session(&zk, Duration::from_secs(4)).await;
    let m1 = Membership::join(&d1, "1", b"{}".to_vec()).await.unwrap();
    let d2 = session(&zk, Duration::from_secs(4)).await;
    let _m2 = Membership::join(&d2, "2", b"{}".to_vec()).await.unwrap();
    let (one, two) = ("1".to_owned(), "2".to_owned());
    roster_sees(&mut roster, &["1", "2"], Duration::from_secs(10)).await;
    assert_eq!(
        roster.read(&[&one, &two], false).await.unwrap(),
        [Some(b"{}".to_vec()), Some(b"{}".to_vec())],
        "joined devices count as changed"
    );
    assert_eq!(
        roster.read(&[&one, &two], false).await.unwrap(),
        [None, None],
        "read once, unchanged until written"
    );
    m1.publish(b"{\"round\":3}".to_vec()).await.unwrap();
    roster
        .wait(tokio::time::Instant::now() + Duration::from_secs(10))
        .await;
    assert_eq!(
        roster.read(&[&one, &two], false).await.unwrap(),
        [Some(b"{\"round\":3}".to_vec()), None],
        "only the written node is read again"
    );
    assert_eq!(
        roster.read(&[&one, &two], true).await.unwrap(),
        [Some(b"{\"round\":3}".to_vec()), Some(b"{}".to_vec())],
        "everything known, without reading it again"
    );

    // Removed behind its back (the original's NoNodeError case): the next write re-creates it.
    watcher
        .client()
        .unwrap()
        .delete(m1.path(), None)
        .await
        .unwrap();
    roster_sees(&mut roster, &["2"], Duration::from_secs(10)).await;
    m1.publish(br#"{"round":4,"value":80.5}"#.to_vec())
        .await
        .unwrap();
    let (data, stat) = watcher.client().unwrap().get_data(m1.path()).await.unwrap();
    assert_eq!(data, br#"{"round":4,"value":80.5}"#);
    assert_eq!(Some(stat.ephemeral_owner), d1.session_id());
    roster_sees(&mut roster, &["1", "2"], Duration::from_secs(10)).await;

    d2.close().await;
    roster_sees(&mut roster, &["1"], Duration::from_secs(10)).await;

    // A new session (the old one expired): the roster sets its watch again and re-reads.
    let before = watcher.session_id();
    zk.restart();
    d1.close().await;
    let d3 = session(&zk, Duration::from_secs(4)).await;
    let _m3 = Membership::join(&d3, "3", b"{}".to_vec()).await.unwrap();
    roster_sees(&mut roster, &["3"], Duration::from_secs(20)).await;
    assert_eq!(
        watcher.session_id(),
        before,
        "the same session, reconnected"
    );
    d3.close().await;
    watcher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_counter_increments_are_exact() {
    let zk = ZkServer::start();
    let a = session(&zk, Duration::from_secs(4)).await;
    let b = session(&zk, Duration::from_secs(4)).await;
    let run = |s: Session| {
        tokio::spawn(async move {
            let client = s.client().unwrap();
            for _ in 0..100 {
                counter::increment(&client, 1).await.unwrap();
            }
        })
    };
    let (ta, tb) = (run(a.clone()), run(b.clone()));
    ta.await.unwrap();
    tb.await.unwrap();
    let value = counter::read(&a.client().unwrap()).await.unwrap().value;
    assert_eq!(value, 200);
    let (raw, _) = a.client().unwrap().get_data(paths::COUNTER).await.unwrap();
    assert_eq!(raw, b"200", "kazoo Counter encoding");
    a.close().await;
    b.close().await;
}

fn local() -> Local {
    Local {
        sampling_period: Duration::from_secs(5),
        api_url: "http://api:4000/".into(),
        // The seed report moves the API to another port at run time: allowed here, as an
        // operator would allow it in [publish] allowed_origins.
        allowed_origins: vec!["http://api:4000".into(), "http://127.0.0.1:4001".into()],
        aggregator: "mean".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_config_is_seeded_validated_and_the_last_value_wins() {
    let zk = ZkServer::start();
    let s = session(&zk, Duration::from_secs(4)).await;
    let known: dynconfig::KnownAggregators = Arc::new(|n: &str| ["mean", "median"].contains(&n));
    let (config, _tasks) = dynconfig::start(&s, local(), known).await.unwrap();
    let client = s.client().unwrap();
    let (seeded, _) = client.get_data(&Key::SamplingPeriod.path()).await.unwrap();
    assert_eq!(seeded, b"5", "absent keys are seeded from local values");

    // Two quick changes: the last one wins.
    client
        .set_data(&Key::SamplingPeriod.path(), b"3", None)
        .await
        .unwrap();
    client
        .set_data(&Key::SamplingPeriod.path(), b"8", None)
        .await
        .unwrap();
    wait_until("period 8 s", Duration::from_secs(10), || async {
        *config.sampling_period.borrow() == Duration::from_secs(8)
    })
    .await;

    // Bad values are rejected and counted; the last good one stays.
    for (key, bad) in [
        (Key::SamplingPeriod, "abc"),
        (Key::SamplingPeriod, "-2"),
        (Key::SamplingPeriod, "1000000"),
        (Key::ApiUrl, "localhost:4000"),
        (Key::Aggregator, "max"),
    ] {
        let before = config.rejected();
        client
            .set_data(&key.path(), bad.as_bytes(), None)
            .await
            .unwrap();
        wait_until(
            &format!("{bad:?} rejected"),
            Duration::from_secs(10),
            || async { config.rejected() == before + 1 },
        )
        .await;
    }
    assert_eq!(*config.sampling_period.borrow(), Duration::from_secs(8));
    assert_eq!(*config.api_url.borrow(), "http://api:4000/");
    assert_eq!(*config.aggregator.borrow(), "mean");

    client
        .set_data(&Key::ApiUrl.path(), b"http://127.0.0.1:4001/", None)
        .await
        .unwrap();
    client
        .set_data(&Key::Aggregator.path(), b"median", None)
        .await
        .unwrap();
    wait_until(
        "new url and aggregator",
        Duration::from_secs(10),
        || async {
            *config.api_url.borrow() == "http://127.0.0.1:4001/"
                && *config.aggregator.borrow() == "median"
        },
    )
    .await;
    drop(client);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shorter_than_the_session_timeout_changes_nothing_visible() {
    let mut zk = ZkServer::start();
    let timeout = Duration::from_secs(10);
    let a = session(&zk, timeout).await;
    let ea = Election::start(&a, "a");
    let _ma = Membership::join(&a, "a", b"x".to_vec()).await.unwrap();
    wait_until("a to lead", Duration::from_secs(10), || async {
        is_leader(&ea.leadership())
    })
    .await;
    let node_before = ea.leadership().borrow().clone();
    let session_before = a.session_id();

    zk.stop();
    wait_until("suspended", Duration::from_secs(10), || async {
        matches!(a.current_status(), SessionStatus::Suspended { .. })
    })
    .await;
    wait_until("leadership uncertain", Duration::from_secs(5), || async {
        *ea.leadership().borrow() == Leadership::Uncertain
    })
    .await;
    zk.restart();
    wait_until("reconnected", Duration::from_secs(15), || async {
        a.current_status() == SessionStatus::Connected { generation: 1 }
    })
    .await;
    wait_until(
        "leading again, same node",
        Duration::from_secs(10),
        || async { *ea.leadership().borrow() == node_before },
    )
    .await;
    assert_eq!(a.session_id(), session_before, "the session was kept");
    let (data, _) = a
        .client()
        .unwrap()
        .get_data(&paths::device("a"))
        .await
        .unwrap();
    assert_eq!(data, b"x", "the ephemeral device node was kept");
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_session_timeout_rebuilds_sessions_and_one_leader_remains() {
    let mut zk = ZkServer::start();
    let timeout = Duration::from_secs(2);
    let a = session(&zk, timeout).await;
    let b = session(&zk, timeout).await;
    let ea = Election::start(&a, "a");
    let eb = Election::start(&b, "b");
    let _ma = Membership::join(&a, "a", b"a".to_vec()).await.unwrap();
    let _mb = Membership::join(&b, "b", b"b".to_vec()).await.unwrap();
    let rxs = [ea.leadership(), eb.leadership()];
    sole_leader(&rxs, Duration::from_secs(10)).await;
    let (old_a, old_b) = (a.session_id(), b.session_id());

    zk.stop();
    wait_until("a's session to expire", Duration::from_secs(30), || async {
        matches!(a.current_status(), SessionStatus::Lost { .. })
    })
    .await;
    zk.restart();
    wait_until("both sessions rebuilt", Duration::from_secs(30), || async {
        a.current_status() == SessionStatus::Connected { generation: 2 }
            && b.current_status() == SessionStatus::Connected { generation: 2 }
    })
    .await;
    assert_ne!(a.session_id(), old_a);
    assert_ne!(b.session_id(), old_b);
    sole_leader(&rxs, Duration::from_secs(30)).await;
    // Device nodes re-created by the new sessions (after the old ones expired on the server).
    let admin = a.client().unwrap();
    for (id, s) in [("a", &a), ("b", &b)] {
        let s = s.clone();
        let admin = admin.clone();
        wait_until(
            &format!("device {id} re-created"),
            Duration::from_secs(30),
            || {
                let admin = admin.clone();
                let s = s.clone();
                async move {
                    matches!(admin.check_stat(&paths::device(id)).await,
                    Ok(Some(stat)) if Some(stat.ephemeral_owner) == s.session_id())
                }
            },
        )
        .await;
    }
    drop(admin);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_loss_while_creating_our_nodes_leaves_no_orphan() {
    let zk = ZkServer::start();
    let proxy = FaultProxy::start(zk.port).await;
    let s = Session::connect(ZkSettings {
        session_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(20),
        ..ZkSettings::new(proxy.addr.to_string(), "/fleetmeter")
    })
    .await
    .unwrap();
    let admin = session(&zk, Duration::from_secs(4)).await;
    let admin_client = admin.client().unwrap();
    admin_client
        .mkdir(paths::ELECTION, &fleetmeter_persistent())
        .await
        .unwrap();
    admin_client
        .mkdir(paths::DEVICES, &fleetmeter_persistent())
        .await
        .unwrap();
    let session_id = s.session_id();

    // The election node's create reaches the server; its reply never reaches us.
    proxy.cut_after_next_create();
    let e = Election::start(&s, "a");
    wait_until(
        "leading despite the lost reply",
        Duration::from_secs(20),
        || async { e.leadership().borrow().is_leader() },
    )
    .await;
    assert_eq!(proxy.cuts(), 1, "the fault was injected");
    assert_eq!(
        s.session_id(),
        session_id,
        "same session after the reconnect"
    );
    let nodes = election::sorted_nodes(&admin_client).await.unwrap();
    assert_eq!(
        nodes.len(),
        1,
        "our node was found, not created twice: {nodes:?}"
    );
    let Leadership::Leader { node } = e.leadership().borrow().clone() else {
        unreachable!()
    };
    assert_eq!(node, format!("{}/{}", paths::ELECTION, nodes[0]));

    // Same for the device node: the retried create finds our own node.
    proxy.cut_after_next_create();
    let m = Membership::join(&s, "a", b"x".to_vec()).await.unwrap();
    assert_eq!(proxy.cuts(), 2);
    let stat = admin_client.check_stat(m.path()).await.unwrap().unwrap();
    assert_eq!(Some(stat.ephemeral_owner), s.session_id());
    drop(admin_client);
    s.close().await;
    admin.close().await;
}

fn fleetmeter_persistent() -> fleetmeter::coord::zk::CreateOptions<'static> {
    fleetmeter::coord::zk::CreateMode::Persistent
        .with_acls(fleetmeter::coord::zk::Acls::anyone_all())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_stops_leading_before_its_successor_starts() {
    let zk = ZkServer::start();
    let proxy = FaultProxy::start(zk.port).await;
    let timeout = Duration::from_secs(2);
    let a = Session::connect(ZkSettings {
        session_timeout: timeout,
        connect_timeout: Duration::from_secs(20),
        ..ZkSettings::new(proxy.addr.to_string(), "/fleetmeter")
    })
    .await
    .unwrap();
    let ea = Election::start(&a, "a");
    wait_until("a to lead", Duration::from_secs(10), || async {
        is_leader(&ea.leadership())
    })
    .await;
    let b = session(&zk, timeout).await;
    let eb = Election::start(&b, "b");
    wait_until("b to follow a", Duration::from_secs(10), || async {
        *eb.leadership().borrow()
            == Leadership::Follower {
                leader: Some("a".into()),
            }
    })
    .await;

    // Record every leadership change of both; they must never both lead.
    let both_led = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (mut ra, mut rb) = (ea.leadership(), eb.leadership());
        let both_led = both_led.clone();
        tokio::spawn(async move {
            loop {
                if ra.borrow_and_update().is_leader() && rb.borrow_and_update().is_leader() {
                    both_led.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::select! {
                    r = ra.changed() => if r.is_err() { return },
                    r = rb.changed() => if r.is_err() { return },
                }
            }
        })
    };

    // a freezes (as if SIGSTOPped, or killed without closing its socket).
    proxy.freeze();
    wait_until("a to stop leading", Duration::from_secs(10), || async {
        !is_leader(&ea.leadership())
    })
    .await;
    wait_until(
        "b to lead once a's session expired",
        Duration::from_secs(20),
        || async { is_leader(&eb.leadership()) },
    )
    .await;
    // a comes back: its session is gone; it rejoins as a follower of b.
    proxy.thaw();
    wait_until(
        "a back as a follower of b",
        Duration::from_secs(30),
        || async {
            *ea.leadership().borrow()
                == Leadership::Follower {
                    leader: Some("b".into()),
                }
        },
    )
    .await;
    assert_eq!(
        a.current_status(),
        SessionStatus::Connected { generation: 2 }
    );
    assert!(
        !both_led.load(std::sync::atomic::Ordering::SeqCst),
        "two leaders at once"
    );
    monitor.abort();
    a.close().await;
    b.close().await;
}

/// `fleetmeter run` closes the session inside a `select!` that may finish first (the round
/// loop ends as soon as the session is closing), dropping that `close` mid-way, then calls
/// `close` again and exits. The second `close` must not return before ZooKeeper ended the
/// session, or the exit kills the close and the fleet waits a session timeout for the
/// device's nodes to go (seen as SIGTERM failovers of 5.4 s instead of 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_close_is_finished_by_the_next_one() {
    let zk = ZkServer::start();
    let observer = session(&zk, Duration::from_secs(10)).await;
    let settings = ZkSettings {
        session_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(20),
        ..ZkSettings::new(zk.hosts(), "/fleetmeter")
    };
    // A process of its own, as far as the runtime goes: it ends when `close` returns.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let s = Session::connect(settings).await.unwrap();
            let device = Membership::join(&s, "closing", b"{}".to_vec())
                .await
                .unwrap();
            // A recipe still holds a client while the close starts.
            let held = s.client().unwrap();
            let interrupted = tokio::time::timeout(Duration::from_millis(50), s.close()).await;
            assert!(
                interrupted.is_err(),
                "the first close waits for the held client"
            );
            drop(held);
            drop(device);
            s.close().await;
        });
        runtime.shutdown_background();
    })
    .join()
    .unwrap();
    // The server deletes a session's ephemeral nodes before it answers the close, so once
    // `close` returned the node is gone; a session left to time out keeps it for 10 s.
    let client = observer.client().unwrap();
    assert_eq!(
        client
            .check_stat(&paths::device("closing"))
            .await
            .unwrap()
            .map(|stat| stat.ephemeral_owner),
        None,
        "the device node went with the closed session"
    );
    drop(client);
    observer.close().await;
}
