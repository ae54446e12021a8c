//! The outbox's ZooKeeper side against a real ZooKeeper: entries inline and in parts, the
//! move to `{root}/rejected` and back, discarding, the ledger staying exact through all of
//! it, parts nobody refers to collected, and damaged parts detected.

use std::time::Duration;

use crate::support::zk::ZkServer;
use fleetmeter::{
    coord::{Session, ZkSettings, paths, txn::Txn},
    publish::outbox::{self, Handled, Ledger, LoadError, MarkKey, Rejected},
    wire::{MAX_DEVICES, MAX_ID_BYTES, Round},
};

async fn session(zk: &ZkServer) -> Session {
    Session::connect(ZkSettings {
        connect_timeout: Duration::from_secs(20),
        ..ZkSettings::new(zk.hosts(), "/fleetmeter")
    })
    .await
    .unwrap()
}

fn round(n: u64, devices: usize) -> Round {
    let count = devices;
    let devices: Vec<String> = (0..devices)
        .map(|i| format!("{i:0>width$}", width = MAX_ID_BYTES))
        .collect();
    Round {
        round: n,
        value: 20.5,
        count: devices.len() as u32,
        devices,
        aggregator: "mean@0.1.0".into(),
        leader: "0".into(),
        ts: 1_764_201_600_000,
        unit: None,
        counter: Some(n as i64),
        version: fleetmeter::wire::VERSION,
        values: Some(vec![20.5; count]),
        shadow: None,
        rollout: None,
        quantities: None,
    }
    .one_quantity("t")
}

/// Opens round `n` (what garbage collection compares parts against).
async fn set_round(client: &fleetmeter::coord::FleetClient, n: u64) {
    let data = n.to_string();
    match client
        .create(paths::ROUND, data.as_bytes(), &client.persistent())
        .await
    {
        Ok(_) => {}
        Err(fleetmeter::coord::zk::Error::NodeExists) => {
            client
                .set_data(paths::ROUND, data.as_bytes(), None)
                .await
                .unwrap();
        }
        Err(e) => panic!("{e}"),
    }
}

/// Commits `round` the way the leader does (parts first, then entry and ledger in one
/// transaction), marked with `mark` when given.
async fn commit(
    client: &fleetmeter::coord::FleetClient,
    round: &Round,
    term: &str,
    mark: Option<&MarkKey>,
) -> u64 {
    let encoded = outbox::encode(round, term, mark);
    outbox::write_parts(client, &encoded).await.unwrap();
    let _ = client.mkdir(paths::RESULTS, &client.persistent()).await;
    let ledger = outbox::ledger::read(client).await.unwrap();
    let (ops, _) = outbox::entry_ops(client.acl(), round.round, &encoded, ledger);
    let mut txn = Txn::new("commit (multi)", paths::RESULTS);
    txn.extend(ops);
    txn.commit(client).await.unwrap();
    encoded.bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_move_between_waiting_and_rejected_and_the_ledger_stays_exact() {
    let zk = ZkServer::start();
    let s = session(&zk).await;
    let client = s.client().unwrap();
    let small = round(1, 3);
    let big = round(2, MAX_DEVICES);
    let small_bytes = commit(&client, &small, "/election/a__lock__0000000001", None).await;
    let big_bytes = commit(&client, &big, "/election/a__lock__0000000001", None).await;
    assert!(big_bytes > 1_000_000, "{big_bytes}");
    let both = Ledger {
        rounds: 2,
        bytes: small_bytes + big_bytes,
    };
    assert_eq!(outbox::ledger::read(&client).await.unwrap().ledger, both);
    assert_eq!(
        client.list_children(paths::PARTS).await.unwrap().len(),
        1,
        "the big round went in parts"
    );

    // Both read back whole.
    let loaded = outbox::load(&client, &outbox::result_path(2), None)
        .await
        .unwrap();
    assert_eq!(loaded.round, big);
    assert_eq!(loaded.bytes, big_bytes);

    // Refused: moved, with its answer; the ledger still counts it.
    let (data, _) = client.get_data(&outbox::result_path(2)).await.unwrap();
    let rejected = Rejected::new(Some(422), "too big for us", Some("http://api/"), &data);
    outbox::reject(&client, "00000000000000000002", &rejected)
        .await
        .unwrap();
    let listed = outbox::list(&client, None).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!((listed[0].round, listed[0].state), (1, "waiting"));
    assert_eq!((listed[1].round, listed[1].state), (2, "rejected"));
    assert_eq!(listed[1].status, Some(422));
    assert_eq!(listed[1].answer.as_deref(), Some("too big for us"));
    assert_eq!(outbox::ledger::read(&client).await.unwrap().ledger, both);
    assert_eq!(outbox::rejected_rounds(&client).await.unwrap(), [2]);

    // Garbage collection keeps the parts a rejected entry refers to.
    set_round(&client, 100).await;
    assert_eq!(outbox::collect_garbage(&client).await.unwrap(), 0);

    // Resent: back in the outbox, readable, parts intact.
    assert_eq!(
        outbox::resend(&client, None, 2).await.unwrap(),
        Handled::Done
    );
    assert_eq!(
        outbox::resend(&client, None, 2).await.unwrap(),
        Handled::NotFound
    );
    assert_eq!(
        outbox::load(&client, &outbox::result_path(2), None)
            .await
            .unwrap()
            .round,
        big
    );

    // Delivered: gone with its parts, and out of the ledger.
    let loaded = outbox::load(&client, &outbox::result_path(2), None)
        .await
        .unwrap();
    outbox::remove_delivered(&client, &outbox::result_path(2), &loaded)
        .await
        .unwrap();
    assert!(client.list_children(paths::PARTS).await.unwrap().is_empty());
    assert_eq!(
        outbox::ledger::read(&client).await.unwrap().ledger,
        Ledger {
            rounds: 1,
            bytes: small_bytes
        }
    );

    // Refused and discarded: out of the ledger for good.
    let (data, _) = client.get_data(&outbox::result_path(1)).await.unwrap();
    let rejected = Rejected::new(Some(409), "conflict", None, &data);
    outbox::reject(&client, "00000000000000000001", &rejected)
        .await
        .unwrap();
    assert_eq!(outbox::discard(&client, 1).await.unwrap(), Handled::Done);
    assert_eq!(
        outbox::discard(&client, 1).await.unwrap(),
        Handled::NotFound
    );
    assert_eq!(
        outbox::ledger::read(&client).await.unwrap().ledger,
        Ledger::default()
    );
    assert!(outbox::list(&client, None).await.unwrap().is_empty());

    // A ledger deleted by hand is recounted from the entries.
    commit(&client, &round(3, 2), "/election/b__lock__0000000002", None).await;
    client.delete(paths::OUTBOX, None).await.unwrap();
    assert_eq!(
        outbox::ledger::read(&client).await.unwrap().ledger.rounds,
        1
    );
    drop(client);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_no_leader_could_have_written_is_not_read_as_a_round() {
    let zk = ZkServer::start();
    let s = session(&zk).await;
    let client = s.client().unwrap();
    client
        .mkdir(paths::RESULTS, &client.persistent())
        .await
        .unwrap();
    // Parses as a round, but `count` does not match `devices`: the API would refuse it, and
    // no leader commits it.
    let forged = br#"{"round":9,"value":1.0,"count":5,"devices":["a"],"aggregator":"mean@0.1.0","leader":"a","ts":1}"#;
    client
        .create(&outbox::result_path(9), forged, &client.persistent())
        .await
        .unwrap();
    match outbox::load(&client, &outbox::result_path(9), None).await {
        Err(LoadError::Corrupt { reason, .. }) => {
            assert!(reason.contains("not a valid round"), "{reason}");
            assert!(reason.contains("`count` is 5"), "{reason}");
        }
        other => panic!("a forged entry must not load: {other:?}"),
    }
    drop(client);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_parts_are_collected_and_damaged_parts_are_detected() {
    let zk = ZkServer::start();
    let s = session(&zk).await;
    let client = s.client().unwrap();
    let big = round(5, MAX_DEVICES);
    // A deposed leader's parts for round 5 (its commit failed), and the winner's entry.
    let loser = outbox::encode(&big, "/election/loser__lock__0000000001", None);
    outbox::write_parts(&client, &loser).await.unwrap();
    commit(&client, &big, "/election/winner__lock__0000000002", None).await;
    assert_eq!(client.list_children(paths::PARTS).await.unwrap().len(), 2);
    // Round 5 is still open: nothing is collected yet (its commit could still refer to them).
    set_round(&client, 5).await;
    assert_eq!(outbox::collect_garbage(&client).await.unwrap(), 0);
    // Once the round moved on, only the loser's parts go.
    set_round(&client, 6).await;
    assert_eq!(outbox::collect_garbage(&client).await.unwrap(), 1);
    let left = client.list_children(paths::PARTS).await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].ends_with("winner__lock__0000000002"), "{left:?}");

    // A part changed by hand: the entry does not read, and says why.
    let part = format!("{}/{}/0001", paths::PARTS, left[0]);
    client.set_data(&part, b"garbage", None).await.unwrap();
    match outbox::load(&client, &outbox::result_path(5), None).await {
        Err(LoadError::Corrupt { reason, parts, .. }) => {
            assert!(
                reason.contains("do not match its size and digest"),
                "{reason}"
            );
            assert!(parts.is_some());
        }
        other => panic!("a damaged part must not read as a round: {other:?}"),
    }
    // Set aside as the publisher does, then discarded: the ledger gives back what it
    // counted for the whole round, not the size of the reference.
    let (data, _) = client.get_data(&outbox::result_path(5)).await.unwrap();
    let rejected = Rejected::new(None, "damaged parts", None, &data);
    outbox::reject(&client, "00000000000000000005", &rejected)
        .await
        .unwrap();
    assert_eq!(outbox::discard(&client, 5).await.unwrap(), Handled::Done);
    assert_eq!(
        outbox::ledger::read(&client).await.unwrap().ledger,
        Ledger::default()
    );
    drop(client);
    s.close().await;
}

/// On a fleet with credentials every entry carries the leader's commit mark: one without a
/// valid mark (forged, or written before the fleet had credentials) does not load, and an
/// operator's `resend` (with the credentials) vouches for it with a fresh mark. A key
/// derived from other credentials accepts neither. Inline and in parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_need_the_fleets_commit_mark_and_resend_vouches_for_them() {
    use fleetmeter::coord::ZkAuth;
    let zk = ZkServer::start();
    let with = |auth: &str| {
        let auth: ZkAuth = auth.parse().unwrap();
        ZkSettings {
            connect_timeout: Duration::from_secs(20),
            auth: Some(auth),
            ..ZkSettings::new(zk.hosts(), "/fleetmeter")
        }
    };
    let key = MarkKey::for_fleet(Some(&"digest:fleet:right".parse().unwrap()), None);
    let key = key.as_ref();
    let fleet = Session::connect(with("digest:fleet:right")).await.unwrap();
    let client = fleet.client().unwrap();
    set_round(&client, 10).await;
    // The leader's own entries load.
    commit(&client, &round(1, 3), "/election/a__lock__0000000001", key).await;
    commit(
        &client,
        &round(2, MAX_DEVICES),
        "/election/a__lock__0000000001",
        key,
    )
    .await;
    for n in [1, 2] {
        let loaded = outbox::load(&client, &outbox::result_path(n), key)
            .await
            .unwrap();
        assert_eq!(loaded.round.round, n);
    }
    // An unmarked entry, as the API's JSON itself, does not.
    let forged = serde_json::to_vec(&round(3, 3)).unwrap();
    client
        .create(&outbox::result_path(3), &forged, &client.persistent())
        .await
        .unwrap();
    let err = outbox::load(&client, &outbox::result_path(3), key)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::Corrupt { reason, .. } if reason.contains("commit mark")),
        "{err}"
    );
    // Set aside, as the publisher does, then vouched for by an operator.
    let rejected = Rejected::new(None, &err.to_string(), None, &forged);
    outbox::reject(&client, &format!("{:020}", 3), &rejected)
        .await
        .unwrap();
    assert_eq!(
        outbox::resend(&client, key, 3).await.unwrap(),
        Handled::Done
    );
    let loaded = outbox::load(&client, &outbox::result_path(3), key)
        .await
        .unwrap();
    assert_eq!(loaded.round, round(3, 3));
    // Another password derives another key: the fleet's entries do not load under it.
    let stranger = MarkKey::from_auth(&"digest:fleet:wrong".parse::<ZkAuth>().unwrap());
    for n in [1, 2, 3] {
        assert!(
            outbox::load(&client, &outbox::result_path(n), Some(&stranger))
                .await
                .is_err(),
            "round {n} under another key"
        );
    }
    drop(client);
    fleet.close().await;
}
