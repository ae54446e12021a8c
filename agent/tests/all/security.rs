//! Nobody without credentials can steer, stall or rob the fleet (docs/security.md): real
//! `fleetmeter run` processes, a real ZooKeeper, the real API, and the attacks of issue 13
//! tried as an outsider would, through kazoo (the reference client) and plain ZooKeeper
//! writes. Each attack must fail and the fleet must go on.

use std::{path::PathBuf, process::Stdio, time::Duration};

use crate::support::{
    compose::{Compose, environment, runtime_env, with_secrets_at},
    fleet::{Fleet, SERIAL, api_binary, final_check, fleetmeter, leader_of, metric},
    free_port,
    redis::RedisServer,
    repo_root, wait_until,
    zk::ZkServer,
};
use fleetmeter::coord::{counter, paths};
use serde_json::Value;

const AUTH: &str = "digest:fleet:correct-horse-battery-staple";

fn python() -> PathBuf {
    std::env::var_os("FLEETMETER_KAZOO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

/// Runs a kazoo script (argv[1]: the hosts); its stdout.
fn kazoo(fleet: &Fleet, script: &str) -> String {
    let output = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(fleet.zk.hosts())
        .stderr(Stdio::inherit())
        .output()
        .expect("run python with kazoo (scripts/test installs it in .venv)");
    assert!(output.status.success(), "the kazoo script failed");
    String::from_utf8(output.stdout).unwrap()
}

/// Every write an outsider would try, and the reads, as `op: outcome` lines.
const OUTSIDER: &str = r#"
import sys
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import OPEN_ACL_UNSAFE
for name, auth in [("anonymous", None), ("wrong password", [("digest", "fleet:guess")]), ("other user", [("digest", "mallory:x")])]:
    zk = KazooClient(hosts=sys.argv[1], timeout=2.0, auth_data=auth)
    zk.start(timeout=20)
    ops = [
        ("list root", lambda: zk.get_children("/fleetmeter")),
        ("read counter", lambda: zk.get("/fleetmeter/counter")),
        ("read api_url", lambda: zk.get("/fleetmeter/config/api_url")),
        ("list election", lambda: zk.get_children("/fleetmeter/election")),
        ("set api_url", lambda: zk.set("/fleetmeter/config/api_url", b"http://127.0.0.1:9/")),
        ("set round", lambda: zk.set("/fleetmeter/round", b"1")),
        ("forge result", lambda: zk.create("/fleetmeter/results/00000000000000099999", b"{}")),
        ("plant election node", lambda: zk.create("/fleetmeter/election/00000000000000000000000000000000__lock__0000000000", b"x")),
        ("delete round", lambda: zk.delete("/fleetmeter/round")),
        ("delete root", lambda: zk.delete("/fleetmeter", recursive=True)),
        ("open the ACL", lambda: zk.set_acls("/fleetmeter", OPEN_ACL_UNSAFE)),
    ]
    for op, call in ops:
        try:
            call()
            print(f"{name}: {op}: ALLOWED")
        except NoAuthError:
            print(f"{name}: {op}: denied")
        except Exception as e:
            print(f"{name}: {op}: {type(e).__name__}")
    zk.stop()
"#;

/// The fleet's own identity through kazoo: its recipes still read our nodes.
const INSIDER: &str = r#"
import sys, json
from kazoo.client import KazooClient
zk = KazooClient(hosts=sys.argv[1], timeout=2.0, auth_data=[("digest", sys.argv[2])])
zk.start(timeout=20)
print(json.dumps({
    "counter": zk.Counter("/fleetmeter/counter").value,
    "contenders": zk.Election("/fleetmeter/election").contenders(),
    "acl": [[a.id.scheme, a.id.id.split(":")[0], a.perms] for a in zk.get_acls("/fleetmeter")[0]],
}))
zk.stop()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_with_credentials_is_closed_to_everyone_else_and_runs_fails_over_and_publishes() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    fleet.secure(AUTH);
    for id in ["1", "2", "3"] {
        fleet.spawn(id);
    }
    let rounds = fleet.wait_for_rounds(3, Duration::from_secs(60)).await;
    let leader = leader_of(rounds.last().unwrap());

    let outsider = kazoo(&fleet, OUTSIDER);
    let lines: Vec<&str> = outsider.lines().collect();
    assert_eq!(lines.len(), 33, "{outsider}");
    for line in &lines {
        assert!(
            line.ends_with(": denied"),
            "without the fleet's credentials nothing is read or changed: {line}\n{outsider}"
        );
    }

    let auth_arg = AUTH.trim_start_matches("digest:");
    let output = std::process::Command::new(python())
        .arg("-c")
        .arg(INSIDER)
        .arg(fleet.zk.hosts())
        .arg(auth_arg)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let inside: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(inside["counter"].as_i64().unwrap() > 0, "{inside}");
    let mut contenders: Vec<&str> = inside["contenders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    contenders.sort_unstable();
    assert_eq!(contenders, ["1", "2", "3"], "kazoo's Election sees ours");
    assert_eq!(
        inside["acl"],
        serde_json::json!([["digest", "fleet", 31]]),
        "the fleet's identity may do everything, nobody else anything"
    );

    // Failover with credentials: the next leader's rounds are stored.
    let _ = fleet.signal(&leader, "TERM").wait();
    fleet
        .wait_for_new_leader(&leader, "SIGTERM of the leader", Duration::from_secs(30))
        .await;
    // Tools need the credentials too, and say so without them.
    let status = fleetmeter(&fleet, &["status", "--json"]);
    assert!(status.status.success(), "{status:?}");
    let anonymous = std::process::Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .args(["status", "--zk", &fleet.zk.hosts()])
        .env_remove("FLEETMETER_ZK_AUTH")
        .output()
        .unwrap();
    assert!(!anonymous.status.success());
    let message = String::from_utf8_lossy(&anonymous.stderr);
    assert!(
        message.contains("protected by credentials") && message.contains("FLEETMETER_ZK_AUTH"),
        "{message}"
    );
    assert!(!message.contains("correct-horse"), "{message}");
    final_check(&mut fleet).await;
    for id in ["1", "2", "3"] {
        let log = fleet.agents.log(id);
        assert!(
            !log.contains("correct-horse"),
            "agent {id} logged the password"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_root_is_refused_with_credentials_until_secure_root_secures_it() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    fleet.spawn("1");
    let before = fleet.wait_for_rounds(2, Duration::from_secs(60)).await;
    let _ = fleet.signal("1", "TERM").wait();
    fleet.agents.children.clear();

    let config = fleet.dir.path().join("agent.toml");
    let (hosts, api_url) = (fleet.zk.hosts(), fleet.api_url());
    let run = |auth: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fleetmeter"));
        command
            .args(["run", "2", "--config"])
            .arg(&config)
            .env("ZK_HOST", &hosts)
            .env("API_URL", &api_url)
            .env("FLEETMETER_METRICS_LISTEN", "off")
            .env_remove("FLEETMETER_ZK_AUTH");
        if let Some(auth) = auth {
            command.env("FLEETMETER_ZK_AUTH", auth);
        }
        command.output().unwrap()
    };
    let refused = run(Some(AUTH));
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("open to anyone") && message.contains("fleetmeter secure-root"),
        "the refusal names the command that fixes it: {message}"
    );

    fleet.auth = Some(AUTH.to_owned());
    let secured = fleetmeter(&fleet, &["secure-root"]);
    assert!(secured.status.success(), "{secured:?}");
    let said = String::from_utf8_lossy(&secured.stdout);
    assert!(
        said.contains("secured") && said.contains("digest:fleet"),
        "{said}"
    );
    let outsider = kazoo(&fleet, OUTSIDER);
    assert!(
        outsider.lines().all(|l| l.ends_with(": denied")),
        "{outsider}"
    );
    // Without credentials, an agent is refused now, and told what it lacks.
    let anonymous = run(None);
    assert_eq!(anonymous.status.code(), Some(1));
    let message = String::from_utf8_lossy(&anonymous.stderr);
    assert!(message.contains("protected by credentials"), "{message}");

    fleet.secure(AUTH);
    fleet.spawn("2");
    let last = before.last().unwrap()["round"].as_u64().unwrap();
    wait_until(
        "rounds of the secured fleet",
        Duration::from_secs(60),
        || async { !fleet.rounds_after(last).await.is_empty() },
    )
    .await;
    final_check(&mut fleet).await;
}

/// `{root}/config/api_url` pointed at an outsider's server, a planted persistent election
/// node with the leader's node deleted, a forged result, the round moved backwards and
/// ahead, the counter overwritten: on an open ZooKeeper (the outsider's best case), with the
/// API's token configured as for production. The fleet goes on, nothing reaches the
/// outsider, nothing forged is published, and the round numbers and counter stay true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_outsider_writes_to_zookeeper_is_refused_and_the_fleet_goes_on() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("").await;
    fleet.with_token("api-write-token");
    for id in ["1", "2"] {
        fleet.spawn(id);
    }
    fleet.wait_for_rounds(2, Duration::from_secs(60)).await;
    let admin = fleet.admin().await;
    let client = admin.client().unwrap();

    // 1. The API URL pointed at the outsider's server.
    let outsider = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outsider_url = format!("http://{}/", outsider.local_addr().unwrap());
    let heard = tokio::spawn(async move { outsider.accept().await.is_ok() });
    client
        .set_data("/config/api_url", outsider_url.as_bytes(), None)
        .await
        .unwrap();
    let stored = fleet.rounds().await.len();
    fleet
        .wait_for_rounds(stored + 3, Duration::from_secs(30))
        .await;
    assert!(!heard.is_finished(), "the outsider's server heard nothing");
    heard.abort();
    let leader = leader_of(fleet.rounds().await.last().unwrap());
    let metrics = fleet.metrics(&leader).await;
    assert!(
        metric(&metrics, "fleetmeter_config_rejected_total") >= 1.0,
        "{metrics:?}"
    );

    // 2. A persistent node planted at the head of the election, the leader's node deleted.
    client
        .create(
            "/election/00000000000000000000000000000000__lock__0000000000",
            b"mallory",
            &client.persistent(),
        )
        .await
        .unwrap();
    let nodes = client.list_children("/election").await.unwrap();
    for node in nodes.iter().filter(|n| !n.starts_with("0000000000")) {
        let (data, _) = client.get_data(&format!("/election/{node}")).await.unwrap();
        if data == leader.as_bytes() {
            client
                .delete(&format!("/election/{node}"), None)
                .await
                .unwrap();
        }
    }
    let stored = fleet.rounds().await.len();
    fleet
        .wait_for_rounds(stored + 3, Duration::from_secs(30))
        .await;

    // 3. A forged result, well-formed, one round ahead: set aside, never published.
    let open = fleetmeter::coord::barrier::current(&client)
        .await
        .unwrap()
        .unwrap()
        .round;
    let forged_round = open + 2;
    let forged = serde_json::json!({
        "round": forged_round, "value": 1.0e6, "count": 1, "devices": ["1"],
        "aggregator": "mean@0.1.0", "leader": "1", "ts": 1
    });
    client
        .create(
            &fleetmeter::publish::outbox::result_path(forged_round),
            forged.to_string().as_bytes(),
            &client.persistent(),
        )
        .await
        .unwrap();
    wait_until(
        "the forged result to be set aside",
        Duration::from_secs(30),
        || async {
            client
                .check_stat(&fleetmeter::publish::outbox::rejected_path(forged_round))
                .await
                .is_ok_and(|s| s.is_some())
        },
    )
    .await;
    let (kept, _) = client
        .get_data(&fleetmeter::publish::outbox::rejected_path(forged_round))
        .await
        .unwrap();
    let kept: Value = serde_json::from_slice(&kept).unwrap();
    assert!(
        kept["answer"].as_str().unwrap().contains("commit mark"),
        "{kept}"
    );

    // 4. The round moved ahead, then backwards; the counter overwritten. Each write waits
    // until the leader (the same one since the election attack) has refused it, so that the
    // next one does not overwrite it unseen.
    let leader = leader_of(fleet.rounds().await.last().unwrap());
    let refused = |what: &'static str| {
        let (fleet, leader) = (&fleet, leader.clone());
        async move {
            fleet
                .metrics(&leader)
                .await
                .get(&format!("fleetmeter_zk_refused_total{{what=\"{what}\"}}"))
                .copied()
                .unwrap_or(0.0)
        }
    };
    let now = fleetmeter::coord::barrier::current(&client)
        .await
        .unwrap()
        .unwrap();
    let forged_rounds = [(now.round + 1000).to_string().into_bytes(), b"1".to_vec()];
    for (k, data) in forged_rounds.into_iter().enumerate() {
        client.set_data(paths::ROUND, &data, None).await.unwrap();
        wait_until(
            "the leader to refuse the forged round",
            Duration::from_secs(30),
            || async { refused("round").await >= (k + 1) as f64 },
        )
        .await;
    }
    let forged_counters = [b"not a number".to_vec(), i64::MAX.to_string().into_bytes()];
    for (k, data) in forged_counters.into_iter().enumerate() {
        client.set_data(paths::COUNTER, &data, None).await.unwrap();
        wait_until(
            "the leader to refuse the forged counter",
            Duration::from_secs(30),
            || async { refused("counter").await >= (k + 1) as f64 },
        )
        .await;
    }
    let stored = fleet.rounds().await.len();
    fleet
        .wait_for_rounds(stored + 3, Duration::from_secs(30))
        .await;
    assert!(refused("round").await >= 2.0);
    assert!(refused("counter").await >= 2.0);
    assert!(
        counter::read(&client).await.unwrap().value < i64::MAX / 2,
        "the counter was written back"
    );
    drop(client);
    admin.close().await;

    let rounds = final_check(&mut fleet).await;
    let numbers: Vec<u64> = rounds
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert!(
        numbers.iter().all(|&n| n < now.round + 1000),
        "no forged round number was published: {numbers:?}"
    );
    assert!(
        rounds.iter().all(|r| r["value"].as_f64() != Some(1.0e6)),
        "the forged result was not published"
    );
    let list = fleetmeter(&fleet, &["outbox", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    let rejected: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "rejected")
        .map(|e| e["round"].as_u64().unwrap())
        .collect();
    assert_eq!(
        rejected,
        [forged_round],
        "only the forged entry was set aside"
    );
}

/// A process killed when the test ends, passing or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The API and agents started exactly as docker-compose.yml configures them (their
/// environment, the image's, the secrets its `secrets` service makes, ZooKeeper with its
/// `ZOO_CFG_EXTRA`), with the compose host names mapped to this host's ports and the
/// sampling period cut to 1 s for the test. Rounds flow; a write without the token, the
/// legacy write, and a ZooKeeper client without credentials are all refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_as_compose_configures_it_refuses_whoever_lacks_its_secrets() {
    let _serial = SERIAL.lock().await;
    let compose = Compose::load();
    let secrets = tempfile::tempdir().unwrap();
    let made = compose.make_secrets(secrets.path());
    let zk_extra: String = environment(compose.service("zookeeper"))["ZOO_CFG_EXTRA"]
        .split_whitespace()
        .map(|line| format!("{line}\n"))
        .collect();
    let zk = ZkServer::start_with(&zk_extra);
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let api_port = free_port();
    let local = |value: &str| {
        value
            .replace("zookeeper:2181", &zk.hosts())
            .replace("redis://redis:6379", &redis.url())
            .replace("http://api:4000/", &format!("http://127.0.0.1:{api_port}/"))
            .replace("0.0.0.0:4000", &format!("127.0.0.1:{api_port}"))
    };
    let api_env = with_secrets_at(&environment(compose.service("api")), secrets.path());
    let _api = Killed(
        std::process::Command::new(api_binary())
            .env_clear()
            .envs(api_env.iter().map(|(k, v)| (k, local(v))))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("api.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut agents = Vec::new();
    let agent_services = compose.agents();
    for (name, service) in agent_services.iter().take(2) {
        let mut env = runtime_env();
        env.extend(with_secrets_at(&environment(service), secrets.path()));
        let mut env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.clone(), local(v))).collect();
        for (key, value) in &mut env {
            match key.as_str() {
                "SAMPLING_PERIOD" => *value = "1".into(),
                "FLEETMETER_PLUGIN_DIR" => {
                    *value = repo_root().join("plugins/dist").display().to_string()
                }
                "XDG_CACHE_HOME" => *value = dir.path().join("cache").display().to_string(),
                "FLEETMETER_METRICS_LISTEN" => *value = format!("127.0.0.1:{}", free_port()),
                _ => {}
            }
        }
        let id =
            crate::support::compose::strings(service.get("command").unwrap(), "command").remove(0);
        agents.push(Killed(
            std::process::Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
                .env_clear()
                .envs(env)
                .env("RUST_LOG", "info")
                .arg("run")
                .arg(&id)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap())
                .spawn()
                .unwrap(),
        ));
    }
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{api_port}");
    wait_until(
        "rounds from the compose-configured fleet",
        Duration::from_secs(60),
        || async {
            let Ok(response) = http
                .get(format!("{base}/api/v1/rounds?limit=3"))
                .send()
                .await
            else {
                return false;
            };
            response
                .json::<Vec<Value>>()
                .await
                .is_ok_and(|rounds| rounds.len() >= 2)
        },
    )
    .await;

    let round = serde_json::json!({
        "round": 999_999, "value": 1.0, "count": 1, "devices": ["x"],
        "aggregator": "mean@0.1.0", "leader": "x", "ts": 1
    });
    let anonymous = http
        .post(format!("{base}/api/v1/rounds"))
        .json(&round)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401, "a write without the token");
    let wrong = http
        .post(format!("{base}/api/v1/rounds"))
        .bearer_auth("guess")
        .json(&round)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401, "a write with a wrong token");
    let legacy = http
        .get(format!("{base}/nuevo?dato=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(legacy.status(), 404, "the legacy GET write is off");

    // ZooKeeper serves no client without credentials, not even a read.
    let script = r#"
import sys
from kazoo.client import KazooClient
zk = KazooClient(hosts=sys.argv[1], timeout=2.0)
try:
    zk.start(timeout=10)
    zk.get_children("/fleetmeter")
    print("ALLOWED")
except Exception as e:
    print("refused:", type(e).__name__)
"#;
    let output = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(zk.hosts())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.starts_with("refused"), "{said}");

    // With the generated credentials (the file compose mounts), the tools work.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .args(["status", "--json", "--zk", &zk.hosts()])
        .env_remove("FLEETMETER_ZK_AUTH")
        .env("FLEETMETER_ZK_AUTH_FILE", secrets.path().join("zk-auth"))
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 2, "{status}");
    let secret = made["zk-auth"]
        .trim()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let token = made["api-token"].trim().to_owned();
    drop(agents);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let log = std::fs::read_to_string(&path).unwrap();
            assert!(
                !log.contains(&secret) && !log.contains(&token),
                "{} holds a secret",
                path.display()
            );
        }
    }
}
