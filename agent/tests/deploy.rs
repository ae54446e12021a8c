//! The deployment files, checked without a Docker engine (none runs here): the compose file
//! parses and every agent service's command and environment are accepted by
//! `fleetmeter run --check`; every path the Dockerfile copies exists and every crate's
//! manifest reaches its dependency layer, whose stub layout resolves with `--locked`;
//! Prometheus scrapes the compose services on their ports; Grafana's provisioning points at
//! them, and Prometheus' own `promtool` accepts its configuration. (e2e.rs checks against a
//! real fleet that every metric the dashboard queries is exported, and that every dashboard
//! query returns data from a real Prometheus scraping it with this configuration.)

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

use serde_norway::Value;
use support::repo_root;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    let mut value: Value =
        serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} parses: {e}"));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{path}: merge keys: {e}"));
    value
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is a string: {value:?}"))
}

fn strings(value: &Value, what: &str) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what} is a list: {value:?}"))
        .iter()
        .map(|v| str_of(v, what).to_owned())
        .collect()
}

/// A service's `environment`, as a map (compose allows a map or a `K=V` list; we use maps).
fn environment(service: &Value) -> BTreeMap<String, String> {
    let Some(env) = service.get("environment") else {
        return BTreeMap::new();
    };
    env.as_mapping()
        .expect("environment is a map")
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("environment value {other:?}"),
            };
            (str_of(k, "env name").to_owned(), value)
        })
        .collect()
}

struct Compose {
    services: BTreeMap<String, Value>,
}

impl Compose {
    fn load() -> Self {
        let compose = yaml("docker-compose.yml");
        let services = compose
            .get("services")
            .and_then(Value::as_mapping)
            .expect("services")
            .iter()
            .map(|(k, v)| (str_of(k, "service name").to_owned(), v.clone()))
            .collect();
        Self { services }
    }

    /// Services running the fleetmeter image's default entrypoint (`fleetmeter run`).
    fn agents(&self) -> BTreeMap<&str, &Value> {
        self.services
            .iter()
            .filter(|(_, s)| s.get("build").is_some() && s.get("entrypoint").is_none())
            .map(|(name, s)| (name.as_str(), s))
            .collect()
    }

    fn service(&self, name: &str) -> &Value {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("service {name} in docker-compose.yml"))
    }
}

/// One Dockerfile instruction, with its stage index.
struct Instruction {
    stage: usize,
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let text = read("Dockerfile").replace("\\\n", " ");
    let mut stage = 0;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, args) = line.split_once(' ').unwrap_or((line, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stage += 1;
        }
        out.push(Instruction {
            stage,
            keyword,
            args: args.trim().to_owned(),
        });
    }
    out
}

/// `COPY` instructions from the build context: (sources, destination, stage).
fn context_copies() -> Vec<(Vec<String>, String, usize)> {
    dockerfile()
        .into_iter()
        .filter(|i| i.keyword == "COPY" && !i.args.contains("--from"))
        .map(|i| {
            let mut parts: Vec<String> = i.args.split_whitespace().map(str::to_owned).collect();
            let dest = parts.pop().expect("a destination");
            (parts, dest, i.stage)
        })
        .collect()
}

/// The runtime stage's `ENV`, with paths copied from the context mapped back to the
/// repository (so that `/etc/fleetmeter/agent.toml` is checked as the repository's
/// agent.toml, the file the image carries).
fn runtime_env() -> BTreeMap<String, String> {
    let instructions = dockerfile();
    let last = instructions.iter().map(|i| i.stage).max().unwrap();
    let copied: BTreeMap<String, String> = context_copies()
        .into_iter()
        .filter(|(_, _, stage)| *stage == last)
        .filter_map(|(sources, dest, _)| match sources.as_slice() {
            [one] => Some((dest, repo_root().join(one).display().to_string())),
            _ => None,
        })
        .collect();
    let mut env = BTreeMap::new();
    for i in instructions
        .iter()
        .filter(|i| i.stage == last && i.keyword == "ENV")
    {
        for pair in i.args.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV K=V");
            let v = copied.get(v).cloned().unwrap_or_else(|| v.to_owned());
            env.insert(k.to_owned(), v);
        }
    }
    env
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

#[test]
fn every_agent_service_is_accepted_by_fleetmeter_run_check() {
    let compose = Compose::load();
    let agents = compose.agents();
    assert_eq!(
        agents.keys().copied().collect::<Vec<_>>(),
        ["agent-1", "agent-2", "agent-3"]
    );
    let image_env = runtime_env();
    assert!(
        image_env.contains_key("FLEETMETER_CONFIG"),
        "the image names its agent.toml: {image_env:?}"
    );
    let mut ids = BTreeSet::new();
    for (name, service) in &agents {
        let command = strings(service.get("command").expect("command"), "command");
        // The device id is the command, as in the original compose.
        assert_eq!(command.len(), 1, "{name}: command is the device id");
        assert!(
            ids.insert(command[0].clone()),
            "{name}: duplicate device id"
        );
        assert_eq!(
            service.get("restart").and_then(Value::as_str),
            Some("always")
        );
        assert_eq!(
            service
                .get("depends_on")
                .and_then(|d| d.get("zookeeper"))
                .and_then(|z| z.get("condition"))
                .and_then(Value::as_str),
            Some("service_healthy"),
            "{name} waits for ZooKeeper to be healthy"
        );
        // Same definition apart from the id: the YAML anchor, no copy-paste drift.
        let mut without_id = (*service).clone();
        without_id.as_mapping_mut().unwrap().remove("command");
        let mut first = agents["agent-1"].clone();
        first.as_mapping_mut().unwrap().remove("command");
        assert_eq!(without_id, first, "{name} differs from agent-1");

        let mut env = image_env.clone();
        env.extend(environment(service));
        let out = Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
            .arg("run")
            .args(&command)
            .arg("--check")
            .env_clear()
            .envs(&env)
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: fleetmeter run {command:?} --check refused its configuration: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = &command[0];
        for expected in [
            "configuration OK".to_owned(),
            format!("device id:        {id}\n"),
            format!("zookeeper:        {}", env["ZK_HOST"]),
            format!("api url:          {}", env["API_URL"]),
        ] {
            assert!(
                stdout.contains(&expected),
                "{name}: {expected:?} in {stdout}"
            );
        }
    }
    let zookeeper = compose.service("zookeeper");
    assert_eq!(
        zookeeper.get("image").and_then(Value::as_str),
        Some("zookeeper:3.9")
    );
    assert!(
        zookeeper.get("healthcheck").is_some(),
        "ZooKeeper has a healthcheck"
    );
    for service in ["api", "redis", "prometheus", "grafana"] {
        compose.service(service);
    }
}

#[test]
fn prometheus_scrapes_the_compose_services_on_their_ports() {
    let compose = Compose::load();
    let mut expected = BTreeSet::new();
    for (name, service) in compose.agents() {
        let env = environment(service);
        let listen = env
            .get("FLEETMETER_METRICS_LISTEN")
            .map_or("0.0.0.0:9464", String::as_str);
        expected.insert(format!("{name}:{}", port_of(listen)));
    }
    let api_env = environment(compose.service("api"));
    expected.insert(format!("api:{}", port_of(&api_env["API_LISTEN"])));

    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    let mut targets = BTreeSet::new();
    for job in prometheus["scrape_configs"].as_sequence().unwrap() {
        for config in job["static_configs"].as_sequence().unwrap() {
            targets.extend(strings(&config["targets"], "targets"));
        }
    }
    assert_eq!(targets, expected);

    // The compose mounts are the files checked here.
    let volumes = strings(
        compose.service("prometheus").get("volumes").unwrap(),
        "volumes",
    );
    assert!(
        volumes
            .iter()
            .any(|v| v
                .starts_with("./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml")),
        "{volumes:?}"
    );
}

#[test]
fn promtool_accepts_the_prometheus_configuration() {
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(repo_root().join("deploy/prometheus/prometheus.yml"))
        .output()
        .unwrap_or_else(|e| panic!("promtool ({e}): scripts/test installs Debian's prometheus"));
    assert!(
        out.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn grafana_provisioning_points_at_prometheus_and_the_dashboard() {
    let compose = Compose::load();
    let grafana = compose.service("grafana");
    let mounts: BTreeMap<String, String> = strings(grafana.get("volumes").unwrap(), "volumes")
        .iter()
        .map(|v| {
            let mut parts = v.split(':');
            let host = parts.next().unwrap().trim_start_matches("./").to_owned();
            let container = parts.next().unwrap().to_owned();
            assert!(repo_root().join(&host).exists(), "mounted {host} exists");
            (container, host)
        })
        .collect();
    let provisioning = &mounts["/etc/grafana/provisioning"];

    let datasources = yaml(&format!("{provisioning}/datasources/prometheus.yml"));
    let source = &datasources["datasources"][0];
    assert_eq!(source["type"].as_str(), Some("prometheus"));
    let url = url::Url::parse(str_of(&source["url"], "url")).unwrap();
    assert_eq!(url.host_str(), Some("prometheus"), "the compose service");
    assert_eq!(url.port(), Some(9090));
    let ports = strings(compose.service("prometheus").get("ports").unwrap(), "ports");
    assert!(ports.iter().any(|p| p.ends_with(":9090")), "{ports:?}");
    let uid = str_of(&source["uid"], "uid");

    let providers = yaml(&format!("{provisioning}/dashboards/fleetmeter.yml"));
    let path = str_of(&providers["providers"][0]["options"]["path"], "path");
    let dashboards_dir = mounts
        .get(path)
        .unwrap_or_else(|| panic!("the dashboards path {path} is a compose mount"));

    let env = environment(grafana);
    let home = &env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"];
    let home_file = home
        .strip_prefix(&format!("{path}/"))
        .expect("the home dashboard is in the provisioned directory");
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&format!("{dashboards_dir}/{home_file}"))).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    for panel in panels {
        assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], uid);
            assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Published value per round",
        "Readings per round",
        "Leader over time",
        "Round duration",
        "Plugin errors",
        "Publish backlog",
    ] {
        assert!(titles.contains(&wanted), "panel {wanted:?} in {titles:?}");
    }
}

/// `.dockerignore` patterns (directory prefixes and `**/*.ext`), enough for ours.
fn ignored(path: &str) -> bool {
    read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|pattern| match pattern.strip_prefix("**/*") {
            Some(ext) => path.ends_with(ext),
            None => {
                let dir = pattern.trim_end_matches('/');
                path == dir || path.starts_with(&format!("{dir}/"))
            }
        })
}

#[test]
fn every_path_the_dockerfile_copies_exists_and_every_manifest_reaches_the_dependency_layer() {
    let copies = context_copies();
    let mut sources = BTreeSet::new();
    for (srcs, dest, _) in &copies {
        for src in srcs {
            if src == "." {
                continue;
            }
            assert!(
                repo_root().join(src).exists(),
                "COPY {src} {dest}: {src} does not exist"
            );
            assert!(!ignored(src), "COPY {src}: excluded by .dockerignore");
            sources.insert(src.clone());
        }
    }
    // Every crate of both workspaces is in the dependency layer.
    let members = |manifest: &str| -> Vec<String> {
        let doc: toml::Table = read(manifest).parse().unwrap();
        let base = Path::new(manifest).parent().unwrap();
        doc["workspace"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                base.join(m.as_str().unwrap())
                    .join("Cargo.toml")
                    .display()
                    .to_string()
            })
            .collect()
    };
    for manifest in members("Cargo.toml")
        .into_iter()
        .chain(members("plugins/Cargo.toml"))
    {
        assert!(
            sources.contains(&manifest),
            "the Dockerfile's dependency layer misses {manifest}: add a COPY line for it"
        );
    }
    for lockfile in ["Cargo.lock", "plugins/Cargo.lock"] {
        assert!(sources.contains(lockfile), "{lockfile} is copied");
    }
    let instructions = dockerfile();
    let last = instructions.iter().map(|i| i.stage).max().unwrap();
    let final_stage: Vec<&Instruction> = instructions.iter().filter(|i| i.stage == last).collect();
    let user = final_stage
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .expect("the runtime stage sets a USER");
    assert_ne!(user.args, "root");
    let entrypoint = final_stage
        .iter()
        .find(|i| i.keyword == "ENTRYPOINT")
        .unwrap();
    assert_eq!(entrypoint.args, r#"["fleetmeter", "run"]"#);
    assert!(!ignored("agent.toml") && ignored("target/debug/fleetmeter"));
}

#[test]
fn the_dependency_layer_resolves_with_stub_sources_and_the_lockfiles() {
    // The files the Dockerfile copies before building dependencies, and nothing else.
    let dir = tempfile::tempdir().unwrap();
    let copies = context_copies();
    let full = copies
        .iter()
        .position(|(srcs, _, _)| srcs == &["."])
        .expect("COPY . . after the dependency layer");
    for (srcs, dest, _) in &copies[..full] {
        for src in srcs {
            let from = repo_root().join(src);
            let to = if dest.ends_with('/') {
                dir.path()
                    .join(dest)
                    .join(Path::new(src).file_name().unwrap())
            } else {
                dir.path().join(dest)
            };
            copy_tree(&from, &to);
        }
    }
    let stub = Command::new(dir.path().join("scripts/stub-sources"))
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(stub.success());
    for (manifest, platform) in [
        ("Cargo.toml", "x86_64-unknown-linux-gnu"),
        ("plugins/Cargo.toml", "wasm32-wasip2"),
    ] {
        let out = Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--locked",
                "--format-version",
                "1",
                "--filter-platform",
            ])
            .arg(platform)
            .arg("--manifest-path")
            .arg(dir.path().join(manifest))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{manifest} does not resolve in the dependency layer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}
