//! The round loop as a library: several devices run by `round::run` in one process, each
//! with its own ZooKeeper session, sharing one plugin engine — what a fleet simulator does.
//! Real ZooKeeper, real plugins; no API runs, so every committed result stays in the outbox,
//! where the exactly-once check counts it.

use std::{sync::Arc, time::Duration};

use crate::support::{cache_dir, repo_root, wait_until, zk::ZkServer};
use fleetmeter::{
    config::{self, Overrides},
    coord::{Session, ZkSettings, barrier, counter, election, paths},
    round::{self, Device},
    telemetry::Telemetry,
    wire::Round,
};
use fleetmeter_testkit::fleet::agent_toml;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_in_one_process_lead_and_commit_rounds_exactly_once() {
    let zk = ZkServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        agent_toml(
            2.0,
            0.5,
            "[publish]\napi_url = \"http://127.0.0.1:9/\"\n[telemetry]\nlisten = \"off\"\n",
            &repo_root().join("plugins/dist"),
            &cache_dir(),
            "",
        ),
    )
    .unwrap();
    let observer = Session::connect(ZkSettings {
        connect_timeout: Duration::from_secs(20),
        ..ZkSettings::new(zk.hosts(), "/fleetmeter")
    })
    .await
    .unwrap();
    let client = observer.client().unwrap();
    // No API runs, so the leader could not ask it where round numbers continue: the fleet's
    // state is started by hand, as a tool would.
    barrier::ensure(&client).await.unwrap();
    let engine = crate::support::engine();
    let shutdown = CancellationToken::new();
    let mut telemetries = Vec::new();
    let mut devices = Vec::new();
    for id in ["1", "2", "3"] {
        let config = config::load(
            Some(&file),
            Overrides {
                id: Some(id.into()),
                zk_hosts: Some(zk.hosts()),
                ..Overrides::default()
            },
        )
        .unwrap();
        let telemetry = Arc::new(Telemetry::new(id, config.zookeeper.session_timeout, 3));
        let device = Device::load(config, &engine, telemetry.clone())
            .await
            .unwrap();
        let session = Session::connect(device.config.zookeeper.clone())
            .await
            .unwrap();
        let shutdown = shutdown.clone();
        devices.push(tokio::spawn(async move {
            let ran = round::run(device, &session, shutdown).await;
            session.close().await;
            ran
        }));
        telemetries.push(telemetry);
    }

    wait_until("round 8", Duration::from_secs(60), || async {
        barrier::current(&client)
            .await
            .is_ok_and(|state| state.is_some_and(|s| s.round >= 8))
    })
    .await;
    assert_eq!(election::contenders(&client).await.unwrap().len(), 3);
    let leaders = telemetries
        .iter()
        .filter(|t| t.render().contains("\nfleetmeter_leader 1\n"))
        .count();
    assert_eq!(leaders, 1, "exactly one device leads");

    shutdown.cancel();
    for device in devices {
        device.await.unwrap().unwrap();
    }
    // Every session was closed: the devices are gone at once, not a timeout later.
    assert!(
        client
            .list_children(paths::DEVICES)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(election::contenders(&client).await.unwrap().is_empty());

    // Exactly once: the counter is the readings of every committed result, and every
    // result lists each device at most once.
    let mut committed = 0;
    let names = client.list_children(paths::RESULTS).await.unwrap();
    assert!(names.len() >= 5, "only {} results committed", names.len());
    for name in &names {
        let (data, _) = client
            .get_data(&format!("{}/{name}", paths::RESULTS))
            .await
            .unwrap();
        let result: Round = serde_json::from_slice(&data).unwrap();
        let mut devices = result.devices.clone();
        devices.dedup();
        assert_eq!(devices.len(), result.devices.len(), "{result:?}");
        assert_eq!(result.count as usize, result.devices.len());
        committed += i64::from(result.count);
    }
    assert_eq!(counter::read(&client).await.unwrap().value, committed);
    drop(client);
    observer.close().await;
}
