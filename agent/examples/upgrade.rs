//! A rolling upgrade and downgrade of a real fleet (`scripts/upgrade-check`): a ZooKeeper
//! from Debian's package, Redis, the current `fleetmeter-api` (the API is upgraded first),
//! and three `fleetmeter run` processes started from the previous release. The agents are
//! replaced one by one with the current build (the leader last), then back with the previous
//! release (the leader first: a downgrade), then with the current build again (the leader
//! first). Between replacements the fleet runs a few rounds. At the end it checks the stored
//! series: every round number from the first to the last stored (none lost or given up),
//! strictly increasing, `counter` equal to the readings of the stored rounds, nothing left
//! in the outbox or refused; and it prints each replacement's commit gap (ZooKeeper's
//! commit times), the periods with no committed round, and which version took over.
//!
//! `cargo run --example upgrade -- --previous PATH [--current PATH] [--api PATH]`

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use fleetmeter::coord::{FleetClient, Session, ZkSettings, barrier, counter, election, paths};
use fleetmeter_testkit::{
    fleet::{Agents, agent_toml},
    free_port,
    redis::RedisServer,
    zk::ZkServer,
};

/// Rolls a 3-device fleet from the previous release to the current build and back.
#[derive(Parser)]
struct Args {
    /// The previous release's `fleetmeter` binary.
    #[arg(long)]
    previous: PathBuf,
    /// The current `fleetmeter` (default: target/debug/fleetmeter beside this example).
    #[arg(long)]
    current: Option<PathBuf>,
    /// The current `fleetmeter-api` (default: beside `--current`).
    #[arg(long)]
    api: Option<PathBuf>,
    /// The fleet's sampling period, seconds.
    #[arg(long, default_value_t = 1.0)]
    period: f64,
    /// The agents' ZooKeeper session timeout, seconds.
    #[arg(long, default_value_t = 2.0)]
    session_timeout: f64,
    /// Rounds the fleet runs between two replacements.
    #[arg(long, default_value_t = 3)]
    rounds: u64,
    /// The bundled plugins.
    #[arg(long, default_value = "plugins/dist")]
    plugin_dir: PathBuf,
}

/// Which build a device runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Build {
    Previous,
    Current,
}

struct Fleet {
    previous: Agents,
    current: Agents,
    config: PathBuf,
    runs: [Build; 3],
    session: Session,
    period: Duration,
    timeout: Duration,
}

const IDS: [&str; 3] = ["1", "2", "3"];

impl Fleet {
    fn agents(&mut self, build: Build) -> &mut Agents {
        match build {
            Build::Previous => &mut self.previous,
            Build::Current => &mut self.current,
        }
    }

    async fn client(&self) -> Result<FleetClient> {
        Ok(self.session.client()?)
    }

    async fn leader(&self) -> Result<String> {
        election::contenders(&self.client().await?)
            .await?
            .first()
            .cloned()
            .context("no leader")
    }

    /// Waits until `rounds` more rounds are committed with every device a contender.
    async fn settle(&self, rounds: u64) -> Result<()> {
        let client = self.client().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while election::contenders(&client).await?.len() < IDS.len() {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the fleet is not back to 3 agents after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut state = barrier::current(&client).await?.context("no round")?;
        let bound = (self.period + self.timeout) * 4;
        for _ in 0..rounds {
            state =
                tokio::time::timeout(bound, barrier::wait_for_round(&self.session, Some(state)))
                    .await
                    .with_context(|| {
                        format!("no round after {} within {bound:?} (a hang)", state.round)
                    })??;
        }
        Ok(())
    }

    /// Stops device `id` (SIGTERM) at a random point of the period and starts it again from
    /// `to`; prints the commit gap.
    async fn replace(&mut self, id: &str, to: Build) -> Result<()> {
        let index = IDS.iter().position(|i| *i == id).unwrap();
        let from = self.runs[index];
        tokio::time::sleep(self.period.mul_f64(rand::random_range(0.1..0.9))).await;
        let leader = self.leader().await? == id;
        let client = self.client().await?;
        let config = self.config.clone();
        let mut child = self.agents(from).signal(id, "TERM")?;
        child.wait()?;
        let (before, committed_at) = barrier::current_released(&client)
            .await?
            .context("no round")?;
        self.agents(to).spawn(id, &config, &[])?;
        self.runs[index] = to;
        let bound = (self.period + self.timeout) * 4;
        tokio::time::timeout(bound, barrier::wait_for_round(&self.session, Some(before)))
            .await
            .context("no commit after the replacement (a hang)")??;
        let (_, next_at) = barrier::current_released(&client)
            .await?
            .context("no round")?;
        let gap = Duration::from_millis(u64::try_from(next_at - committed_at).unwrap_or(0));
        let lost =
            ((gap.as_secs_f64() / self.period.as_secs_f64()).round() as u64).saturating_sub(1);
        let successor = self.leader().await?;
        let successor_runs = self.runs[IDS.iter().position(|i| *i == successor).unwrap()];
        println!(
            "device {id} {from:?} -> {to:?}{}: round {} committed {:.0} ms after the previous ({lost} period(s) lost){}",
            if leader { " (the leader)" } else { "" },
            before.round,
            gap.as_secs_f64() * 1000.0,
            if leader {
                format!("; taken over by device {successor} ({successor_runs:?})")
            } else {
                String::new()
            }
        );
        Ok(())
    }

    /// Replaces every device with `to`, the leader `leader_last` or first.
    async fn roll(&mut self, to: Build, leader_last: bool, rounds: u64) -> Result<()> {
        let leader = self.leader().await?;
        let mut order: Vec<&str> = IDS.iter().copied().filter(|i| *i != leader).collect();
        if leader_last {
            order.push(IDS[IDS.iter().position(|i| *i == leader).unwrap()]);
        } else {
            order.insert(0, IDS[IDS.iter().position(|i| *i == leader).unwrap()]);
        }
        println!(
            "-- to {to:?}, the leader ({leader}) {}",
            if leader_last { "last" } else { "first" }
        );
        for id in order {
            self.replace(id, to).await?;
            self.settle(rounds).await?;
        }
        Ok(())
    }
}

fn start_api(binary: &Path, port: u16, redis: &str, log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new(binary)
        .env("API_LISTEN", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", redis)
        .env("API_ALLOW_ANONYMOUS_WRITES", "true")
        .env_remove("API_TOKEN")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let here = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .context("the example lives in target/<profile>/examples")?
        .to_owned();
    let current = args.current.unwrap_or_else(|| here.join("fleetmeter"));
    let api = args.api.unwrap_or_else(|| {
        current.parent().map_or_else(
            || PathBuf::from("fleetmeter-api"),
            |d| d.join("fleetmeter-api"),
        )
    });
    for binary in [&args.previous, &current, &api] {
        ensure!(binary.is_file(), "{} not found", binary.display());
    }
    let version = |binary: &Path| -> Result<String> {
        let out = Command::new(binary).arg("--version").output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    println!(
        "previous: {} ({}); current: {} ({})",
        version(&args.previous)?,
        args.previous.display(),
        version(&current)?,
        current.display()
    );

    let work = tempfile::tempdir()?;
    let zk = ZkServer::start();
    let redis = RedisServer::start();
    let api_port = free_port();
    let mut api_child = start_api(&api, api_port, &redis.url(), &work.path().join("api.log"))?;
    let api_url = format!("http://127.0.0.1:{api_port}/");
    let config = work.path().join("agent.toml");
    std::fs::write(
        &config,
        agent_toml(
            args.session_timeout,
            args.period,
            "[publish]\nretry_initial = 0.2\nretry_max = 1.0\n",
            &std::path::absolute(&args.plugin_dir)?,
            &work.path().join("cache"),
            "",
        ),
    )?;
    let logs = |name: &str| -> Result<PathBuf> {
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    };
    let agents = |binary: &Path, dir: PathBuf| {
        Agents::new(binary, dir)
            .env("ZK_HOST", zk.hosts())
            .env("API_URL", api_url.clone())
            .env("FLEETMETER_METRICS_LISTEN", "off")
    };
    let session = Session::connect(ZkSettings {
        session_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(30),
        ..ZkSettings::new(zk.hosts(), "/fleetmeter")
    })
    .await?;
    let mut fleet = Fleet {
        previous: agents(&args.previous, logs("previous")?),
        current: agents(&current, logs("current")?),
        config: config.clone(),
        runs: [Build::Previous; 3],
        session,
        period: Duration::from_secs_f64(args.period),
        timeout: Duration::from_secs_f64(args.session_timeout),
    };
    println!("logs in {}", work.path().display());
    for id in IDS {
        fleet.previous.spawn(id, &config, &[])?;
    }
    let client = fleet.client().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while barrier::current(&client).await?.is_none() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the previous release started no round within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.settle(args.rounds).await?;
    fleet.roll(Build::Current, true, args.rounds).await?;
    fleet.roll(Build::Previous, false, args.rounds).await?;
    fleet.roll(Build::Current, false, args.rounds).await?;

    // The stored series, once the outbox drained (with the agents running: only a leader
    // publishes), plus what was committed in the last moments before they stopped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !client
        .list_children(paths::RESULTS)
        .await
        .unwrap_or_default()
        .is_empty()
    {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the outbox did not drain within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in IDS {
        let build = fleet.runs[IDS.iter().position(|i| *i == id).unwrap()];
        fleet.agents(build).signal(id, "TERM")?.wait()?;
    }
    let http = reqwest::Client::new();
    let rounds: Vec<serde_json::Value> = http
        .get(format!("{api_url}api/v1/rounds?limit=1000"))
        .send()
        .await?
        .json()
        .await?;
    let mut numbers: Vec<u64> = rounds.iter().filter_map(|r| r["round"].as_u64()).collect();
    numbers.reverse();
    let mut readings: i64 = rounds.iter().filter_map(|r| r["count"].as_i64()).sum();
    // Committed as the agents stopped: each must be readable by the current build (no
    // newer version left behind) and is counted once.
    let mut waiting = Vec::new();
    for name in client
        .list_children(paths::RESULTS)
        .await
        .unwrap_or_default()
    {
        let (data, _) = client
            .get_data(&format!("{}/{name}", paths::RESULTS))
            .await?;
        let round: serde_json::Value = serde_json::from_slice(&data)?;
        let n = round["round"]
            .as_u64()
            .context("an outbox entry has a round")?;
        ensure!(
            round["version"].as_u64().unwrap_or(1) <= u64::from(fleetmeter::wire::VERSION),
            "round {n} waits in a version the current build cannot read"
        );
        if !numbers.contains(&n) {
            readings += round["count"].as_i64().context("a round has a count")?;
            waiting.push(n);
        }
    }
    waiting.sort_unstable();
    let counted = counter::read(&client).await?.value;
    let rejected = client
        .list_children(paths::REJECTED)
        .await
        .unwrap_or_default();
    let given_up = client.check_stat(paths::GIVEN_UP).await?.is_some();
    let versions: std::collections::BTreeSet<u64> = rounds
        .iter()
        .map(|r| r["version"].as_u64().unwrap_or(1))
        .collect();
    println!(
        "stored: rounds {}..={} ({} rounds, wire versions {versions:?}); committed as the agents stopped: {waiting:?}; counter {counted}, readings {readings}; {} refused",
        numbers.first().copied().unwrap_or(0),
        numbers.last().copied().unwrap_or(0),
        numbers.len(),
        rejected.len()
    );
    numbers.extend(&waiting);
    let _ = api_child.kill();
    let _ = api_child.wait();
    ensure!(!numbers.is_empty(), "nothing stored");
    let expected: Vec<u64> = (numbers[0]..=*numbers.last().unwrap()).collect();
    ensure!(
        numbers == expected,
        "round numbers lost or doubled: {numbers:?}"
    );
    ensure!(counted == readings, "the counter differs from the readings");
    ensure!(rejected.is_empty(), "results refused: {rejected:?}");
    ensure!(!given_up, "a round was given up");
    println!("upgrade-check: passed");
    Ok(())
}
