//! `scripts/demo`: the compose topology as local processes. Started on free ports with the
//! binaries under test, it must bring rounds to the API and agents up healthy, then stop
//! every process it started on ctrl-c (SIGINT), exit 0 and keep the logs.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::support::{free_port, repo_root, wait_until};

/// Three consecutive free ports (the demo's agents use BASE, BASE+1, BASE+2).
fn free_port_run() -> u16 {
    loop {
        let base = free_port();
        if base < 65000 && (1..3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
}

/// Whether this process ignores SIGINT (children inherit that, and a shell cannot trap a
/// signal ignored at entry): then the test stops the demo with SIGTERM, its other signal.
fn sigint_ignored() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << (2 - 1)) != 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_fleet_and_stops_everything_on_ctrl_c() {
    crate::support::plugin("random-temperature");
    crate::support::plugin("mean");
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .parent()
        .unwrap()
        .to_owned();
    assert!(
        bin_dir.join("fleetmeter-api").exists(),
        "build the workspace first (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let api_port = free_port();
    let metrics_port = free_port_run();
    let mut child = Command::new("bash")
        .arg(repo_root().join("scripts/demo"))
        .env("DEMO_ZK_PORT", free_port().to_string())
        .env("DEMO_REDIS_PORT", free_port().to_string())
        .env("DEMO_API_PORT", api_port.to_string())
        .env("DEMO_METRICS_PORT", metrics_port.to_string())
        .env("DEMO_DIR", dir.path())
        .env("SAMPLING_PERIOD", "1")
        .env("FLEETMETER_BIN_DIR", &bin_dir)
        .env_remove("ZK_HOST")
        .env_remove("API_URL")
        .env_remove("FLEETMETER_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A failed assertion must not leave the demo's fleet running: stop it as ctrl-c would.
    let _stop_on_panic = StopDemo(child.id());
    let output = Arc::new(Mutex::new(String::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let output = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut out = output.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
    }
    let printed = || output.lock().unwrap().clone();

    // Not wait_until: when the demo does not come up, what it printed says why.
    let started = std::time::Instant::now();
    while !printed().contains("fleetmeter demo running") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the demo did not say it runs within 120 s; it printed:\n{}",
            printed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = printed();
    for expected in [
        format!("http://127.0.0.1:{api_port}/"),
        format!("http://127.0.0.1:{metrics_port}/metrics"),
        "fleetmeter status --zk".to_owned(),
        "ctrl-c".to_owned(),
    ] {
        assert!(text.contains(&expected), "{expected:?} in:\n{text}");
    }
    let http = reqwest::Client::new();
    let rounds_url = format!("http://127.0.0.1:{api_port}/api/v1/rounds?limit=100");
    wait_until("3 rounds in the API", Duration::from_secs(30), || async {
        let Ok(response) = http.get(&rounds_url).send().await else {
            return false;
        };
        let rounds: Vec<serde_json::Value> = response.json().await.unwrap_or_default();
        // A device may join a round late while the fleet starts (first writes are spread
        // over up to 250 ms): three rounds with every device is the requirement.
        rounds.iter().filter(|r| r["count"] == 3).count() >= 3
    })
    .await;
    for port in metrics_port..metrics_port + 3 {
        let health = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "agent on {port}");
    }
    wait_until(
        "the demo to report stored rounds",
        Duration::from_secs(10),
        || async { printed().contains("demo: stored round:") },
    )
    .await;

    ship_as_printed(&printed(), dir.path()).await;

    let pids: Vec<(u32, String)> = std::fs::read_to_string(dir.path().join("pids"))
        .unwrap()
        .lines()
        .map(|l| {
            let (pid, name) = l.split_once(' ').unwrap();
            (pid.parse().unwrap(), name.to_owned())
        })
        .collect();
    assert_eq!(
        pids.len(),
        6,
        "ZooKeeper, Redis, the API, three agents: {pids:?}"
    );

    let signal = if sigint_ignored() { "-TERM" } else { "-INT" };
    let stop_sent = Instant::now();
    assert!(
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stop_sent.elapsed() < Duration::from_secs(30),
            "the demo did not stop within 30 s:\n{}",
            printed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "demo exit {status:?}:\n{}", printed());
    for (pid, name) in &pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{name} (pid {pid}) still runs after the demo stopped"
        );
    }
    for id in 1..=3 {
        let log = std::fs::read_to_string(dir.path().join(format!("agent-{id}.log"))).unwrap();
        assert!(
            log.contains("shutting down: closing the ZooKeeper session") && log.contains("stopped"),
            "agent {id} stopped cleanly:\n{log}"
        );
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", api_port)).is_err(),
        "the API port is free again"
    );
    let text = printed();
    assert!(
        text.contains(&format!("logs are in {}", dir.path().display())),
        "{text}"
    );
}

/// Runs the "ship a plugin" commands the demo printed, as a user would copy them, with a
/// sensor that reads 1: signed with the demo's key, published, rolled out to device 2, which
/// is promoted by its gates.
async fn ship_as_printed(text: &str, dir: &std::path::Path) {
    let start = text
        .find("ship a plugin")
        .unwrap_or_else(|| panic!("no ship commands in:\n{text}"));
    let commands: Vec<String> = text[start + "ship a plugin".len()..]
        .lines()
        .take(4)
        .map(|l| l.trim().to_owned())
        .collect();
    assert!(commands[0].contains("plugin sign"), "{commands:?}");
    let file = dir.join("one.wasm");
    std::fs::copy(crate::support::fixture("raw-sensor"), &file).unwrap();
    let run = |command: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(command.replace("FILE.wasm", file.to_str().unwrap()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    run(&commands[0]);
    let reference = run(&commands[1]);
    assert!(reference.starts_with("raw-sensor@sha256:"), "{reference}");
    run(&format!(
        "{} --rounds 2",
        commands[2].replace("NAME@sha256:HEX", &reference)
    ));
    wait_until(
        "the demo's rollout promoted",
        Duration::from_secs(60),
        || async { run(&commands[3]).contains("state: promoted") },
    )
    .await;
}

/// Sends the demo script the signal ctrl-c would when dropped (a no-op once it has exited).
struct StopDemo(u32);

impl Drop for StopDemo {
    fn drop(&mut self) {
        // Only while it is still the demo (its pid is not reused by then).
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains("scripts/demo") {
            return;
        }
        let signal = if sigint_ignored() { "-TERM" } else { "-INT" };
        let _ = Command::new("kill")
            .args([signal, &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}
