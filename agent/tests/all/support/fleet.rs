//! The e2e harness: a real ZooKeeper, a real Redis, the real `fleetmeter-api` binary and
//! `fleetmeter run` processes with the real plugins, checked from the API's stored rounds,
//! the agents' /metrics and /healthz, and ZooKeeper's state.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use fleetmeter::coord::{Session, ZkAuth, ZkSettings, barrier, counter, paths};
use fleetmeter_testkit::fleet::{Agents, agent_toml};
use serde_json::Value;

use super::{free_port, plugin, redis::RedisServer, repo_root, wait_until, zk::ZkServer};

/// One fleet at a time: 2 cores shared by several fleets would skew the failover deadlines.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const PERIOD: Duration = Duration::from_secs(1);
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub zk: ZkServer,
    pub _redis: RedisServer,
    pub api_port: u16,
    pub api: Option<Child>,
    pub redis_url: String,
    pub agents: Agents,
    /// Each agent's /metrics and /healthz port.
    pub metrics_ports: BTreeMap<String, u16>,
    pub http: reqwest::Client,
    /// The fleet's ZooKeeper credentials (`digest:USER:PASSWORD`), once [`Fleet::secure`].
    pub auth: Option<String>,
    /// The API's write token, once [`Fleet::with_token`].
    pub api_token: Option<String>,
    /// The API's certificate and key, once [`Fleet::with_tls`].
    pub api_tls: Option<(PathBuf, PathBuf)>,
}

pub fn api_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_fleetmeter")).with_file_name("fleetmeter-api");
    assert!(
        path.exists(),
        "{} is missing: `cargo build -p fleetmeter-api` (scripts/test builds the workspace)",
        path.display()
    );
    path
}

impl Fleet {
    /// ZooKeeper, Redis, the API, and an agent.toml with `extra` appended.
    pub async fn start(extra_toml: &str) -> Self {
        plugin("random-temperature");
        plugin("mean");
        let dir = tempfile::tempdir().unwrap();
        let zk = ZkServer::start();
        let redis = RedisServer::start();
        let api_port = free_port();
        let agents = Agents::new(env!("CARGO_BIN_EXE_fleetmeter"), dir.path())
            .env("ZK_HOST", zk.hosts())
            .env("API_URL", format!("http://127.0.0.1:{api_port}/"));
        let mut fleet = Self {
            api_port,
            redis_url: redis.url(),
            dir,
            zk,
            _redis: redis,
            api: None,
            agents,
            metrics_ports: BTreeMap::new(),
            http: reqwest::Client::new(),
            auth: None,
            api_token: None,
            api_tls: None,
        };
        let toml = agent_toml(
            SESSION_TIMEOUT.as_secs_f64(),
            PERIOD.as_secs_f64(),
            "[publish]\nretry_initial = 0.2\nretry_max = 1.0\n",
            &repo_root().join("plugins/dist"),
            &super::cache_dir(),
            extra_toml,
        );
        std::fs::write(fleet.dir.path().join("agent.toml"), toml).unwrap();
        fleet.start_api();
        fleet
    }

    /// A fleet of `ids` (agent.toml with `extra`), once every one has joined and two rounds
    /// are stored.
    pub async fn running(extra_toml: &str, ids: &[&str]) -> Self {
        let mut fleet = Self::start(extra_toml).await;
        for id in ids {
            fleet.spawn(id);
        }
        fleet.round_once_joined(ids).await;
        fleet.wait_for_rounds(2, Duration::from_secs(30)).await;
        fleet
    }

    /// Sets `key` in the environment of the agents started from now on.
    pub fn agent_env(&mut self, key: &str, value: String) {
        let agents = std::mem::replace(
            &mut self.agents,
            Agents::new(env!("CARGO_BIN_EXE_fleetmeter"), self.dir.path()),
        );
        self.agents = agents.env(key, value);
    }

    /// Agents started from now on (and `admin`) use these ZooKeeper credentials.
    pub fn secure(&mut self, auth: &str) {
        self.auth = Some(auth.to_owned());
        self.agent_env("FLEETMETER_ZK_AUTH", auth.to_owned());
    }

    /// The API (restarted now) takes writes with this token only; agents started from now
    /// on send it.
    pub fn with_token(&mut self, token: &str) {
        self.api_token = Some(token.to_owned());
        self.agent_env("FLEETMETER_API_TOKEN", token.to_owned());
        self.stop_api();
        self.start_api();
    }

    /// The API (restarted now) serves TLS with `cert` and `key`; agents started from now on
    /// reach it at its https:// URL, trusting `ca` (`FLEETMETER_API_TLS_CA`) when
    /// `agents_trust`; this harness trusts it.
    pub fn with_tls(&mut self, ca: &Path, cert: &Path, key: &Path, agents_trust: bool) {
        self.api_tls = Some((cert.to_owned(), key.to_owned()));
        self.agent_env("API_URL", format!("https://127.0.0.1:{}/", self.api_port));
        if agents_trust {
            self.agent_env("FLEETMETER_API_TLS_CA", ca.display().to_string());
        }
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
        self.http = reqwest::Client::builder()
            .tls_certs_merge([ca])
            .build()
            .unwrap();
        self.stop_api();
        self.start_api();
    }

    pub fn start_api(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("api.log"))
            .unwrap();
        let mut command = Command::new(api_binary());
        command
            .env("API_LISTEN", format!("127.0.0.1:{}", self.api_port))
            .env("REDIS_URL", &self.redis_url)
            .env_remove("API_TOKEN");
        match &self.api_token {
            Some(token) => command.env("API_TOKEN", token),
            // The tests' API takes writes without a token unless a test sets one.
            None => command.env("API_ALLOW_ANONYMOUS_WRITES", "true"),
        };
        if let Some((cert, key)) = &self.api_tls {
            command.env("API_TLS_CERT", cert).env("API_TLS_KEY", key);
        }
        let child = command.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.api = Some(child);
    }

    pub fn stop_api(&mut self) {
        if let Some(mut api) = self.api.take() {
            let _ = api.kill();
            let _ = api.wait();
        }
    }

    pub fn api_url(&self) -> String {
        let scheme = if self.api_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}/", self.api_port)
    }

    pub fn spawn(&mut self, id: &str) {
        let config = self.dir.path().join("agent.toml");
        self.spawn_with_config(id, &config);
    }

    pub fn spawn_with_config(&mut self, id: &str, config: &Path) {
        let port = *self
            .metrics_ports
            .entry(id.to_owned())
            .or_insert_with(free_port);
        self.agents
            .spawn(
                id,
                config,
                &[("FLEETMETER_METRICS_LISTEN", format!("127.0.0.1:{port}"))],
            )
            .unwrap();
    }

    pub fn signal(&mut self, id: &str, signal: &str) -> Child {
        self.agents
            .signal(id, signal)
            .unwrap_or_else(|e| panic!("kill -{signal} {id}: {e}"))
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Stored rounds, oldest first.
    pub async fn rounds(&self) -> Vec<Value> {
        self.rounds_at("").await
    }

    /// Stored rounds of the fleet whose API base is `{api_url}{path}` (`fleets/NAME/` for
    /// another fleet on the same API), oldest first.
    pub async fn rounds_at(&self, path: &str) -> Vec<Value> {
        let Ok(response) = self
            .http
            .get(format!("{}{path}api/v1/rounds?limit=1000", self.api_url()))
            .send()
            .await
        else {
            return Vec::new();
        };
        let mut rounds: Vec<Value> = response.json().await.unwrap_or_default();
        rounds.reverse();
        rounds
    }

    /// An agent's /metrics URL.
    pub fn metrics_url(&self, id: &str) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics_ports[id])
    }

    /// The text at `url` (empty while nothing answers).
    pub async fn scrape(&self, url: &str) -> String {
        match self.http.get(url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// An agent's /metrics as `name{labels} -> value` (empty while it does not answer).
    pub async fn metrics(&self, id: &str) -> BTreeMap<String, f64> {
        let text = self.scrape(&self.metrics_url(id)).await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
            .collect()
    }

    /// An agent's /healthz: the status code and the JSON body.
    pub async fn health(&self, id: &str) -> Option<(u16, Value)> {
        let url = format!("http://127.0.0.1:{}/healthz", self.metrics_ports[id]);
        let response = self.http.get(url).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }

    pub async fn wait_for_rounds(&self, n: usize, deadline: Duration) -> Vec<Value> {
        wait_until(&format!("{n} stored rounds"), deadline, || async {
            self.rounds().await.len() >= n
        })
        .await;
        self.rounds().await
    }

    /// Waits for a stored round led by another device than `old`; returns its leader.
    pub async fn wait_for_new_leader(&self, old: &str, what: &str, deadline: Duration) -> String {
        wait_until(
            &format!("a new leader's first stored round after {what}"),
            deadline,
            || async {
                self.rounds()
                    .await
                    .last()
                    .is_some_and(|r| leader_of(r) != old)
            },
        )
        .await;
        leader_of(self.rounds().await.last().unwrap())
    }

    /// The stored rounds numbered above `round`.
    pub async fn rounds_after(&self, round: u64) -> Vec<Value> {
        let mut rounds = self.rounds().await;
        rounds.retain(|r| r["round"].as_u64().unwrap() > round);
        rounds
    }

    pub async fn admin(&self) -> Session {
        Session::connect(ZkSettings {
            connect_timeout: Duration::from_secs(20),
            auth: self.zk_auth(),
            ..ZkSettings::new(self.zk.hosts(), "/fleetmeter")
        })
        .await
        .unwrap()
    }

    pub fn zk_auth(&self) -> Option<ZkAuth> {
        self.auth.as_ref().map(|a| a.parse().unwrap())
    }

    /// Waits until every device in `ids` has joined; returns the round open then. That round
    /// may have opened before a device joined (a late joiner rightly misses it); every later
    /// round opens with all of them as members.
    pub async fn round_once_joined(&self, ids: &[&str]) -> u64 {
        let admin = self.admin().await;
        let client = admin.client().unwrap();
        for id in ids {
            wait_until(
                &format!("device {id} to join"),
                Duration::from_secs(30),
                || async {
                    client
                        .check_stat(&paths::device(id))
                        .await
                        .is_ok_and(|s| s.is_some())
                },
            )
            .await;
        }
        // The leader starts the fleet's state once the API says where rounds continue.
        wait_until(
            "the fleet's first round",
            Duration::from_secs(30),
            || async {
                barrier::current(&client)
                    .await
                    .is_ok_and(|state| state.is_some())
            },
        )
        .await;
        let open = barrier::current(&client).await.unwrap().unwrap().round;
        drop(client);
        admin.close().await;
        open
    }

    /// The round open now (released, not yet committed).
    pub async fn open_round(&self) -> u64 {
        let admin = self.admin().await;
        let client = admin.client().unwrap();
        let open = barrier::current(&client).await.unwrap().unwrap().round;
        drop(client);
        admin.close().await;
        open
    }

    /// Waits until a round numbered `round` or later is stored.
    pub async fn wait_for_round(&self, round: u64, deadline: Duration) {
        wait_until(&format!("round {round} stored"), deadline, || async {
            self.rounds()
                .await
                .iter()
                .any(|r| r["round"].as_u64().unwrap() >= round)
        })
        .await;
    }

    pub async fn stop_all(&mut self) {
        self.agents.kill_all();
        self.stop_api();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::env::var_os("FLEETMETER_E2E_KEEP_LOGS").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("e2e logs kept in {}", dir.display());
        }
        self.agents.kill_all();
        self.stop_api();
    }
}

/// Waits until the outbox (`{root}/results`) holds at least `n` entries (`n` = 0: until it
/// is empty), saying `what` if it does not within `deadline`.
pub async fn wait_for_outbox(
    client: &fleetmeter::coord::FleetClient,
    n: usize,
    what: &str,
    deadline: Duration,
) {
    wait_until(what, deadline, || async {
        let held = client
            .list_children(paths::RESULTS)
            .await
            .map_or(0, |c| c.len());
        if n == 0 { held == 0 } else { held >= n }
    })
    .await;
}

pub fn leader_of(round: &Value) -> String {
    round["leader"].as_str().unwrap().to_owned()
}

/// Lets the outbox drain, stops the agents (SIGTERM), then checks exactly-once from
/// ZooKeeper's state: `counter` == the `count` of every stored round plus of every result
/// still in the outbox (committed in the last moments), and no round is both.
pub async fn final_check(fleet: &mut Fleet) -> Vec<Value> {
    let admin = fleet.admin().await;
    let client = admin.client().unwrap();
    wait_for_outbox(&client, 0, "the outbox to drain", Duration::from_secs(30)).await;
    for (_, child) in fleet.agents.children.iter_mut() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        assert!(status.success(), "SIGTERM exits 0: {status}");
    }
    fleet.agents.children.clear();
    let rounds = fleet.rounds().await;
    let stored: Vec<u64> = rounds
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert!(
        stored.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing, no duplicate: {stored:?}"
    );
    let mut total: i64 = rounds.iter().map(|r| r["count"].as_i64().unwrap()).sum();
    let mut names = client
        .list_children(paths::RESULTS)
        .await
        .unwrap_or_default();
    names.sort();
    for (i, name) in names.iter().enumerate() {
        let (data, _) = client
            .get_data(&format!("{}/{name}", paths::RESULTS))
            .await
            .unwrap();
        let entry: Value = serde_json::from_slice(&data).unwrap();
        // A fleet with credentials or a token marks its entries: {"mark":…,"round":{…}}.
        let pending = if entry.get("mark").is_some() {
            entry["round"].clone()
        } else {
            entry
        };
        let round = pending["round"].as_u64().unwrap();
        if let Some(stored) = rounds.iter().find(|r| r["round"].as_u64() == Some(round)) {
            in_flight_at_the_stop(i, stored, &pending);
            // Stored already: counted once, as the API's.
            continue;
        }
        total += pending["count"].as_i64().unwrap();
    }
    let counted = counter::read(&client).await.unwrap().value;
    assert_eq!(
        counted, total,
        "counter == sum of count over committed rounds"
    );
    drop(client);
    admin.close().await;
    rounds
}

/// A round both stored and pending is legitimate only as the one the publisher had in flight
/// when the stop landed: the API answered 201, the agent stopped before it removed the entry
/// (the next leader's resend is then a harmless duplicate). The publisher sends in round
/// order, one at a time, so that is the lowest pending entry (`index` 0), and it is the very
/// round the API stored, field for field. Anything else — a later entry, or another round
/// under the same number — is a real duplicate and fails.
fn in_flight_at_the_stop(index: usize, stored: &Value, pending: &Value) {
    let round = &pending["round"];
    assert_eq!(
        index, 0,
        "round {round} both stored and pending, and not the first pending entry: a duplicate"
    );
    for key in [
        "round",
        "value",
        "count",
        "devices",
        "aggregator",
        "leader",
        "ts",
        "counter",
        "values",
    ] {
        assert_eq!(
            stored.get(key),
            pending.get(key),
            "round {round} both stored and pending with another `{key}`: a duplicate"
        );
    }
}

/// Writes `NAME.toml`: the fleet's agent.toml with `sensor` and `extra` tables added.
pub fn config_with_sensor(fleet: &Fleet, name: &str, sensor: &Path, extra: &str) -> PathBuf {
    let path = fleet.dir.path().join(format!("{name}.toml"));
    let base = std::fs::read_to_string(fleet.dir.path().join("agent.toml")).unwrap();
    std::fs::write(
        &path,
        base.replace(
            "[plugins]\n",
            &format!("[plugins]\nsensor = \"{}\"\n", sensor.display()),
        ) + extra,
    )
    .unwrap();
    path
}

/// Runs a one-shot `fleetmeter` command on the fleet, with its credentials and token.
pub fn fleetmeter(fleet: &Fleet, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetmeter"));
    command
        .args(args)
        .args(["--zk", &fleet.zk.hosts()])
        .env_remove("ZK_HOST")
        .env_remove("FLEETMETER_ROOT")
        .env_remove("FLEETMETER_ZK_AUTH")
        .env_remove("FLEETMETER_API_TOKEN");
    if let Some(auth) = &fleet.auth {
        command.env("FLEETMETER_ZK_AUTH", auth);
    }
    if let Some(token) = &fleet.api_token {
        command.env("FLEETMETER_API_TOKEN", token);
    }
    command.output().unwrap()
}

pub fn metric(metrics: &BTreeMap<String, f64>, name: &str) -> f64 {
    *metrics
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not exported: {metrics:?}"))
}

/// The checker's exception is narrow: only the first pending entry, and only when it is the
/// very round the API stored.
#[test]
fn only_the_in_flight_round_may_be_both_stored_and_pending() {
    let stored = serde_json::json!({
        "round": 7, "value": 21.5, "count": 2, "devices": ["1", "2"], "aggregator": "mean@0.1.0",
        "leader": "1", "ts": 1, "counter": 14, "values": [21.0, 22.0]
    });
    in_flight_at_the_stop(0, &stored, &stored.clone());
    let refused = |index: usize, pending: Value| {
        std::panic::catch_unwind(|| in_flight_at_the_stop(index, &stored, &pending)).is_err()
    };
    assert!(refused(1, stored.clone()), "a later pending entry");
    for (key, other) in [
        ("value", serde_json::json!(99.0)),
        ("counter", serde_json::json!(15)),
        ("leader", serde_json::json!("2")),
        ("values", serde_json::json!([21.0, 23.0])),
    ] {
        let mut pending = stored.clone();
        pending[key] = other;
        assert!(refused(0, pending), "another {key} under the same round");
    }
}
