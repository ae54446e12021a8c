//! The deployment files, checked without a Docker engine (none runs here): the compose file
//! parses and every agent service's command and environment are accepted by
//! `fleetmeter run --check`; every path the Dockerfile copies exists and every crate's
//! manifest reaches its dependency layer, whose stub layout resolves with `--locked`;
//! Prometheus scrapes the compose services on their ports; Grafana's provisioning points at
//! them, and Prometheus' own `promtool` accepts its configuration. (e2e.rs checks against a
//! real fleet that every metric the dashboard queries is exported, and that every dashboard
//! query returns data from a real Prometheus scraping it with this configuration.)

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

use crate::support::{
    compose::{
        Compose, Instruction, SECRETS, context_copies, dockerfile, environment, read, runtime_env,
        str_of, strings, with_secrets_at, yaml,
    },
    repo_root,
};
use serde_norway::Value;

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// `fleetmeter run ARGS --check` with exactly `env`, as a container would run it.
fn run_check(args: &[String], env: &BTreeMap<String, String>) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .arg("run")
        .args(args)
        .arg("--check")
        .env_clear()
        .envs(env)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
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
    // The secrets the compose file's `secrets` service makes, where the agents read them.
    let secrets = tempfile::tempdir().unwrap();
    compose.make_secrets(secrets.path());
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
        env.extend(with_secrets_at(&environment(service), secrets.path()));
        let out = run_check(&command, &env);
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
            "zk credentials:   user \"fleet\" (password hidden)".to_owned(),
            "token set, hidden".to_owned(),
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
        // Bind mounts of the repository; the secrets volume is checked elsewhere.
        .filter(|v| v.starts_with("./"))
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

/// What `scripts/compose-check` found when the image was first built for real: Compose v1
/// (Debian 12's `docker-compose`) refuses a top-level `name:`, and its classic builder knows
/// neither `RUN --mount` nor a `# syntax=` line (which BuildKit would pull from a registry).
/// The project name lives in `.env`, which both Compose versions read.
#[test]
fn the_files_build_and_start_with_compose_v1_and_the_classic_builder() {
    let compose = yaml("docker-compose.yml");
    assert!(
        compose.get("name").is_none(),
        "docker-compose.yml: no top-level `name:` (Compose v1 refuses it); see .env"
    );
    let env = read(".env");
    assert!(
        env.lines()
            .any(|l| l.trim() == "COMPOSE_PROJECT_NAME=fleetmeter"),
        ".env names the project: {env}"
    );
    let text = read("Dockerfile");
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("# syntax=")),
        "Dockerfile: no `# syntax=` line"
    );
    for instruction in dockerfile() {
        assert!(
            !(instruction.keyword == "RUN" && instruction.args.contains("--mount")),
            "Dockerfile: RUN --mount needs BuildKit: {}",
            instruction.args
        );
    }
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

/// Secure by default, with no manual step (docs/security.md): generated secrets shared
/// through a volume, nothing secret in the file, writes and ZooKeeper closed without them,
/// every published port on the host's loopback unless FLEETMETER_BIND says otherwise, and no
/// agent's metrics published at all.
#[test]
fn the_compose_defaults_are_secure() {
    let compose = Compose::load();
    for (name, service) in &compose.services {
        if let Some(ports) = service.get("ports") {
            for port in strings(ports, "ports") {
                assert!(
                    port.starts_with("${FLEETMETER_BIND:-127.0.0.1}:"),
                    "{name} publishes {port} beyond the host's loopback by default"
                );
            }
        }
        for (key, value) in environment(service) {
            let secret_like = ["TOKEN", "PASSWORD", "AUTH"]
                .iter()
                .any(|w| key.contains(w))
                && !key.ends_with("_FILE")
                && !key.starts_with("GF_AUTH_ANONYMOUS");
            assert!(
                !secret_like,
                "{name}: {key}={value} puts a secret in the repository; use a _FILE from the secrets volume"
            );
            if key.ends_with("_FILE") && key != "FLEETMETER_CONFIG" {
                assert!(value.starts_with(SECRETS), "{name}: {key}={value}");
            }
        }
    }
    for (name, agent) in compose.agents() {
        assert!(agent.get("ports").is_none(), "{name} publishes its metrics");
        let env = environment(agent);
        assert!(env.contains_key("FLEETMETER_ZK_AUTH_FILE"), "{name}");
        assert!(env.contains_key("FLEETMETER_API_TOKEN_FILE"), "{name}");
    }
    let api = environment(compose.service("api"));
    assert!(api.contains_key("API_TOKEN_FILE"), "{api:?}");
    assert!(!api.contains_key("API_ALLOW_ANONYMOUS_WRITES"));
    assert!(!api.contains_key("API_LEGACY_QUERY"));
    let zookeeper = environment(compose.service("zookeeper"));
    assert!(
        zookeeper["ZOO_CFG_EXTRA"].contains("enforce.auth.enabled=true"),
        "{zookeeper:?}"
    );

    // The secrets: random, made once, readable by their owner only.
    let dir = tempfile::tempdir().unwrap();
    let first = compose.make_secrets(dir.path());
    let again = compose.make_secrets(dir.path());
    assert_eq!(first, again, "a later start keeps the secrets");
    let other = tempfile::tempdir().unwrap();
    assert_ne!(
        first,
        compose.make_secrets(other.path()),
        "random per deployment"
    );
    let token = first["api-token"].trim();
    assert_eq!(token.len(), 48, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let auth: fleetmeter::coord::ZkAuth = first["zk-auth"].parse().unwrap();
    assert_eq!(auth.user(), "fleet");
    use std::os::unix::fs::PermissionsExt;
    for file in ["api-token", "zk-auth", "grafana-admin", "signing.key"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400, "{file}: {mode:o}");
    }
    // Signed rollouts by default: the agents trust the stack's signing key, a real one.
    let keys = fleetmeter::rollout::signing::TrustedKey::read_all(&dir.path().join("signing.pub"))
        .unwrap();
    assert_eq!(keys.len(), 1);
    for service in compose.agents().values() {
        let env = environment(service);
        assert_eq!(
            env.get("FLEETMETER_TRUSTED_KEYS_FILE").map(String::as_str),
            Some("/run/fleetmeter/signing.pub"),
            "{env:?}"
        );
    }
}

/// `deploy/compose/api-tls.yml` turns on HTTPS between the agents and the API with the
/// certificates the `secrets` service makes. Here, for real: the secrets script runs (openssl
/// makes the CA and the API's certificate), every agent with the override's environment
/// passes `fleetmeter run --check`, the real API serves TLS with the override's files and
/// its healthcheck command answers over HTTPS, curl reads it with the CA, and promtool
/// accepts the override's Prometheus configuration, whose targets are the plain one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_tls_override_serves_https_with_the_secrets_certificates() {
    let compose = Compose::load();
    let tls = yaml("deploy/compose/api-tls.yml");
    let services = tls["services"].as_mapping().expect("services");
    for name in services.keys() {
        compose.service(str_of(name, "service name"));
    }
    let secrets = tempfile::tempdir().unwrap();
    let made = compose.make_secrets(secrets.path());
    for file in ["api-ca.pem", "api.pem", "api.key"] {
        assert!(
            made.contains_key(file),
            "the secrets service makes {file}: {made:?}"
        );
    }
    let image_env = runtime_env();
    for (name, service) in compose.agents() {
        let mut env = image_env.clone();
        env.extend(with_secrets_at(&environment(service), secrets.path()));
        env.extend(with_secrets_at(
            &environment(&tls["services"][name]),
            secrets.path(),
        ));
        let command = strings(service.get("command").expect("command"), "command");
        let out = run_check(&command, &env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("api url:          https://api:4000/"),
            "{name} with the TLS override: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The API with the override's environment, on a free loopback port.
    let api_env = with_secrets_at(&environment(&tls["services"]["api"]), secrets.path());
    let redis = crate::support::redis::RedisServer::start();
    let api = crate::support::api::ApiProcess::start(&redis, &api_env).await;
    let port = api.port;
    let healthcheck = strings(&tls["services"]["api"]["healthcheck"]["test"], "test");
    assert_eq!(healthcheck[..2], ["CMD", "fleetmeter"]);
    let args: Vec<String> = healthcheck[2..]
        .iter()
        .map(|a| {
            a.replace(SECRETS, &secrets.path().display().to_string())
                .replace("127.0.0.1:4000", &format!("127.0.0.1:{port}"))
        })
        .collect();
    crate::support::wait_until(
        "the API's healthcheck to pass over HTTPS",
        std::time::Duration::from_secs(20),
        || async {
            Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
                .args(&args)
                .output()
                .is_ok_and(|o| o.status.success())
        },
    )
    .await;
    let ca = secrets.path().join("api-ca.pem");
    for host in ["127.0.0.1", "localhost"] {
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--cacert"])
            .arg(&ca)
            .arg(format!("https://{host}:{port}/healthz"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(api);

    // Prometheus: the same targets, the API over https with the stack's CA.
    let volumes = strings(&tls["services"]["prometheus"]["volumes"], "volumes");
    assert!(volumes.iter().any(|v| {
        v.starts_with("./deploy/prometheus/prometheus-api-tls.yml:/etc/prometheus/prometheus.yml")
    }));
    let targets = |path: &str| -> BTreeSet<String> {
        yaml(path)["scrape_configs"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|job| job["static_configs"].as_sequence().unwrap().clone())
            .flat_map(|config| strings(&config["targets"], "targets"))
            .collect()
    };
    assert_eq!(
        targets("deploy/prometheus/prometheus-api-tls.yml"),
        targets("deploy/prometheus/prometheus.yml")
    );
    let config = read("deploy/prometheus/prometheus-api-tls.yml")
        .replace(SECRETS, &secrets.path().display().to_string());
    let checked = secrets.path().join("prometheus.yml");
    std::fs::write(&checked, config).unwrap();
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(&checked)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
