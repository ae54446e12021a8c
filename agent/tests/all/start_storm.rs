//! A start storm: a few hundred devices (the fleet simulator's, each with its own session and
//! sensor, running `round::run`) start in the same instant against a freshly started
//! ZooKeeper and the real API. Every one must join and contribute a reading within a few
//! periods; none may exit. Not a benchmark: `scripts/bench-fleet` measures.

#[path = "../../examples/bench_fleet/sim.rs"]
mod sim;

use std::{collections::BTreeSet, time::Duration};

use crate::support::{cache_dir, fleet::api_binary, repo_root, zk::ZkServer};
use fleetmeter::{
    coord::{Session, ZkSettings, paths},
    wire::Round,
};
use fleetmeter_testkit::{api::ApiServer, redis::RedisServer};
use sim::{Sim, Spec};

const DEVICES: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_hundred_devices_started_at_once_all_join_and_contribute() {
    let zk = ZkServer::start_for_fleet(512);
    let redis = RedisServer::start();
    let logs = tempfile::tempdir().unwrap();
    let api = ApiServer::start(
        &api_binary(),
        &redis.url(),
        "storm-token",
        &logs.path().join("api.log"),
    );
    let spec = Spec {
        devices: DEVICES,
        period: 1.0,
        session_timeout: 4.0,
        connect_timeout: 60.0,
        zk_hosts: zk.hosts(),
        root: "/storm".into(),
        api_url: api.url(),
        token: "storm-token".into(),
        plugin_dir: repo_root().join("plugins/dist"),
        cache_dir: cache_dir(),
    };
    let engine = sim::engine(&spec).unwrap();
    let fleet = Sim::start(&spec, &engine).await.unwrap();

    // Every device's id in some stored round, and one round with every device in it.
    let all: BTreeSet<String> = (0..DEVICES).map(Spec::id).collect();
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let (contributed, full_round) = loop {
        assert_eq!(fleet.exited(), 0, "a device exited during the start storm");
        let rounds: Vec<Round> = client
            .get(format!("{}api/v1/rounds?limit=1000", api.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let contributed: BTreeSet<String> = rounds.iter().flat_map(|r| r.devices.clone()).collect();
        let full = rounds.iter().find(|r| r.count as usize == DEVICES);
        if contributed == all
            && let Some(full) = full
        {
            break (contributed, full.round);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after 90 s, {} of {DEVICES} devices contributed and no round had all of them \
             (largest: {:?})",
            contributed.len(),
            rounds.iter().map(|r| r.count).max()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(contributed.len(), DEVICES);
    assert!(full_round >= 1);

    let observer = Session::connect(ZkSettings::new(zk.hosts(), "/storm"))
        .await
        .unwrap();
    let members = observer
        .client()
        .unwrap()
        .list_children(paths::DEVICES)
        .await
        .unwrap();
    assert_eq!(members.len(), DEVICES, "no device lost its membership");
    // Only the leader watches the member list: no herd of watchers on {root}/devices.
    assert!(
        zk.watchers_of("/storm/devices") <= 1,
        "{} sessions watch /storm/devices",
        zk.watchers_of("/storm/devices")
    );
    observer.close().await;

    let errors = fleet.stop(Duration::from_secs(30)).await;
    assert!(errors.is_empty(), "{errors:?}");
}
