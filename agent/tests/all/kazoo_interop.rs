//! Interoperability with kazoo, the reference Python ZooKeeper client the original system
//! used: its recipes must see our election, counter and barrier as their own.
//! scripts/test creates `.venv` with kazoo 2.11 (FLEETMETER_KAZOO_PYTHON points to it).

use std::{path::PathBuf, process::Stdio, time::Duration};

use crate::support::{repo_root, wait_until, zk::ZkServer};
use fleetmeter::coord::{
    Session, ZkSettings, barrier, counter,
    election::{self, Election},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

fn python() -> PathBuf {
    let python = std::env::var_os("FLEETMETER_KAZOO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    let ok = std::process::Command::new(&python)
        .args(["-c", "import kazoo"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import kazoo: run scripts/test (it creates .venv with kazoo), or set \
         FLEETMETER_KAZOO_PYTHON",
        python.display()
    );
    python
}

const PRELUDE: &str = "
import sys, time, json
from kazoo.client import KazooClient
zk = KazooClient(hosts=sys.argv[1], timeout=2.0)
zk.start(timeout=20)
";

/// Runs a kazoo script with the ZooKeeper hosts as argv[1]; stdout as lines.
fn kazoo(zk: &ZkServer, script: &str) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(python())
        .arg("-c")
        .arg(format!("{PRELUDE}{script}"))
        .arg(zk.hosts())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start python");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("kazoo did not print {what} within 30 s"))
        .unwrap()
        .unwrap_or_else(|| panic!("kazoo exited before printing {what}"))
}

async fn session(zk: &ZkServer) -> Session {
    Session::connect(ZkSettings {
        session_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(20),
        ..ZkSettings::new(zk.hosts(), "/fleetmeter")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_sees_our_contenders_in_order_and_reads_our_counter() {
    let zk = ZkServer::start();
    let mut sessions = Vec::new();
    let mut elections = Vec::new();
    for id in ["3", "1", "2"] {
        let s = session(&zk).await;
        elections.push(Election::start(&s, id));
        let client = s.client().unwrap();
        wait_until("joined", Duration::from_secs(10), || async {
            election::contenders(&client)
                .await
                .unwrap()
                .iter()
                .any(|c| c == id)
        })
        .await;
        sessions.push(s);
    }
    counter::increment(&sessions[0].client().unwrap(), 42)
        .await
        .unwrap();

    let (mut child, mut lines) = kazoo(
        &zk,
        "print(json.dumps({'contenders': zk.Election('/fleetmeter/election').contenders(),
                           'counter': zk.Counter('/fleetmeter/counter').value}), flush=True)
zk.stop()",
    );
    let seen: serde_json::Value =
        serde_json::from_str(&next_line(&mut lines, "its view").await).unwrap();
    assert_eq!(
        seen["contenders"],
        serde_json::json!(["3", "1", "2"]),
        "election order"
    );
    assert_eq!(seen["counter"], 42);
    assert!(child.wait().await.unwrap().success());
    for s in &sessions {
        s.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kazoo_contender_behind_our_leader_leads_when_ours_leaves() {
    let zk = ZkServer::start();
    let ours = session(&zk).await;
    let e = Election::start(&ours, "a");
    wait_until("ours to lead", Duration::from_secs(10), || async {
        e.leadership().borrow().is_leader()
    })
    .await;
    let (_child, mut lines) = kazoo(
        &zk,
        "print('WAITING', flush=True)
def lead():
    print('LEADER', flush=True)
    time.sleep(120)
zk.Election('/fleetmeter/election', 'kazoo-1').run(lead)",
    );
    assert_eq!(next_line(&mut lines, "WAITING").await, "WAITING");
    let client = ours.client().unwrap();
    wait_until(
        "kazoo queued behind ours",
        Duration::from_secs(20),
        || async { election::contenders(&client).await.unwrap() == ["a", "kazoo-1"] },
    )
    .await;
    drop(client);
    ours.close().await;
    assert_eq!(next_line(&mut lines, "LEADER").await, "LEADER");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_takes_over_when_a_killed_kazoo_leaders_session_expires() {
    let zk = ZkServer::start();
    let (mut child, mut lines) = kazoo(
        &zk,
        "def lead():
    print('LEADER', flush=True)
    time.sleep(120)
zk.Election('/fleetmeter/election', 'kazoo-1').run(lead)",
    );
    assert_eq!(next_line(&mut lines, "LEADER").await, "LEADER");
    let ours = session(&zk).await;
    let e = Election::start(&ours, "b");
    wait_until("ours to follow kazoo", Duration::from_secs(10), || async {
        *e.leadership().borrow()
            == election::Leadership::Follower {
                leader: Some("kazoo-1".into()),
            }
    })
    .await;
    // SIGKILL: no goodbye to ZooKeeper; the session expires after its 2 s timeout.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    wait_until(
        "ours to lead after the expiry",
        Duration::from_secs(20),
        || async { e.leadership().borrow().is_leader() },
    )
    .await;
    ours.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kazoo_barrier_wait_returns_at_our_release() {
    let zk = ZkServer::start();
    let ours = session(&zk).await;
    let client = ours.client().unwrap();
    barrier::ensure(&client).await.unwrap();
    let (mut child, mut lines) = kazoo(
        &zk,
        "b = zk.Barrier('/fleetmeter/barrier')
print('WAITING', flush=True)
print(b.wait(30), flush=True)
zk.stop()",
    );
    assert_eq!(next_line(&mut lines, "WAITING").await, "WAITING");
    let round = barrier::current(&client).await.unwrap().unwrap();
    wait_until(
        "kazoo's watch on the barrier",
        Duration::from_secs(20),
        || async { zk.is_watched("/fleetmeter/barrier") },
    )
    .await;
    let mut release = fleetmeter::coord::txn::Txn::new("release (multi)", "/round");
    release.extend(barrier::release(client.acl(), round).unwrap());
    release.commit(&client).await.unwrap();
    assert_eq!(next_line(&mut lines, "the wait result").await, "True");
    assert!(child.wait().await.unwrap().success());
    drop(client);
    ours.close().await;
}
