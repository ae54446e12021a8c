//! Failover time of a real fleet: a ZooKeeper from Debian's package and three release
//! `fleetmeter run` processes with the bundled plugins. The leader is stopped again and
//! again, alternately with SIGKILL (its session must time out) and SIGTERM (it closes its
//! session), and the time from the signal to the next committed round is measured, read
//! from ZooKeeper's `{root}/round`. The stopped device is started again before the next
//! trial, at a varying point of the period. At the end, `counter` is checked against every
//! committed result (no API runs, so they all stay in the outbox): nothing lost or doubled.
//!
//! `scripts/bench-failover [--trials N] [--period S] [--session-timeout S]`

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use fleetmeter::coord::{
    Session, ZkSettings, barrier, barrier::RoundState, counter, election, paths,
};
use fleetmeter_testkit::{
    fleet::{Agents, agent_toml},
    zk::ZkServer,
};

/// Measures how long a fleet of three agents goes without a committed round when its
/// leader is stopped by SIGKILL or SIGTERM.
#[derive(Parser)]
struct Args {
    /// Trials per signal.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// The fleet's sampling period, seconds.
    #[arg(long, default_value_t = 1.0)]
    period: f64,
    /// The agents' ZooKeeper session timeout, seconds (1 to 10 with the test server's
    /// 500 ms tick). The agent's default is 4.
    #[arg(long, default_value_t = 4.0)]
    session_timeout: f64,
    /// The `fleetmeter` binary; by default the one next to this example's directory
    /// (target/release/fleetmeter).
    #[arg(long)]
    fleetmeter: Option<PathBuf>,
    /// The bundled plugins.
    #[arg(long, default_value = "plugins/dist")]
    plugin_dir: PathBuf,
}

/// Waits, on a ZooKeeper watch, for a round committed after round `after` opened.
async fn next_round(observer: &Session, after: RoundState, deadline: Duration) -> Result<()> {
    tokio::time::timeout(deadline, barrier::wait_for_round(observer, Some(after)))
        .await
        .with_context(|| format!("no round after {} within {deadline:?}", after.round))??;
    Ok(())
}

/// The fleet's round now.
async fn round_now(client: &fleetmeter::coord::FleetClient) -> Result<RoundState> {
    barrier::current(client)
        .await?
        .context("the fleet has no round yet")
}

fn summary(label: &str, mut times: Vec<Duration>, reference_text: &str, reference: Duration) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = times[times.len() / 2];
    println!(
        "{label:<8} n={:<3} min {:>7.0} ms   median {:>7.0} ms   max {:>7.0} ms   (reference: {reference_text} = {:.0} ms)",
        times.len(),
        ms(times[0]),
        ms(median),
        ms(*times.last().unwrap()),
        ms(reference),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.trials > 0, "--trials must be at least 1");
    let binary = match args.fleetmeter {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("the example lives in target/<profile>/examples")?
            .join("fleetmeter"),
    };
    ensure!(
        binary.is_file(),
        "{} not found: build it with `cargo build --release -p fleetmeter` or pass --fleetmeter",
        binary.display()
    );
    for plugin in ["random-temperature", "mean"] {
        let path = args.plugin_dir.join(format!("{plugin}.wasm"));
        ensure!(
            path.is_file(),
            "{} not found: run scripts/build-plugins",
            path.display()
        );
    }
    let period = Duration::from_secs_f64(args.period);
    let session_timeout = Duration::from_secs_f64(args.session_timeout);

    let work = tempfile::tempdir()?;
    let zk = ZkServer::start();
    let config = work.path().join("agent.toml");
    // No API: results stay in the outbox, where the final check counts them.
    std::fs::write(
        &config,
        agent_toml(
            args.session_timeout,
            args.period,
            "[publish]\napi_url = \"http://127.0.0.1:9/\"\nretry_initial = 1.0\nretry_max = 10.0\n",
            &std::path::absolute(&args.plugin_dir)?,
            &work.path().join("cache"),
            "",
        ),
    )?;
    let mut fleet = Agents::new(binary, work.path())
        .env("ZK_HOST", zk.hosts())
        .env("FLEETMETER_METRICS_LISTEN", "off");
    // With FLEETMETER_ZK_AUTH set (the agents inherit it), the fleet runs with credentials
    // and ACLs: the observer creates the root secured.
    let auth: Option<fleetmeter::coord::ZkAuth> = std::env::var("FLEETMETER_ZK_AUTH")
        .ok()
        .map(|raw| raw.parse())
        .transpose()
        .context("FLEETMETER_ZK_AUTH")?;
    if let Some(auth) = &auth {
        println!(
            "with ZooKeeper credentials (user {:?}) and ACLs",
            auth.user()
        );
    }
    let observer = Session::connect(ZkSettings {
        session_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(30),
        auth,
        ..ZkSettings::new(zk.hosts(), "/fleetmeter")
    })
    .await?;
    let client = observer.client()?;
    // No API to ask where round numbers continue: the fleet's state is started by hand.
    barrier::ensure(&client).await?;

    println!(
        "fleet of 3 agents, period {:?}, session timeout {:?}, {} trials per signal; logs in {}",
        period,
        session_timeout,
        args.trials,
        work.path().display()
    );
    for id in ["1", "2", "3"] {
        fleet.spawn(id, &config, &[])?;
    }
    let mut times: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for trial in 0..2 * args.trials {
        // A full fleet, a few rounds in, then a stop at a varying point of the period.
        let deadline = Instant::now() + Duration::from_secs(60);
        while election::contenders(&client).await?.len() < 3 {
            ensure!(
                Instant::now() < deadline,
                "the fleet is not back to 3 agents after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let start = round_now(&client).await?;
        let opened = barrier::wait_for_round(&observer, Some(start)).await?;
        next_round(&observer, opened, 10 * period + session_timeout).await?;
        tokio::time::sleep(period.mul_f64(rand::random_range(0.0..1.0))).await;

        let signal = if trial % 2 == 0 { "KILL" } else { "TERM" };
        let leader = election::contenders(&client)
            .await?
            .first()
            .cloned()
            .context("no leader")?;
        let mut child = fleet.signal(&leader, signal)?;
        let signalled = Instant::now();
        child.wait()?;
        // A dead process commits nothing more: the next round is the new leader's.
        let last = round_now(&client).await?;
        next_round(&observer, last, 4 * (session_timeout + period)).await?;
        let took = signalled.elapsed();
        let now_leading = election::contenders(&client).await?;
        println!(
            "trial {:>2}: SIG{signal:<4} to leader {leader}: next round committed after {:>6.0} ms (now led by {})",
            trial + 1,
            took.as_secs_f64() * 1000.0,
            now_leading.first().map_or("nobody", String::as_str),
        );
        times.entry(signal).or_default().push(took);
        fleet.spawn(&leader, &config, &[])?;
    }

    // Exactly once across every failover: counter == the readings of every committed round.
    for id in ["1", "2", "3"] {
        let mut child = fleet.signal(id, "TERM")?;
        child.wait()?;
    }
    let mut committed = 0i64;
    let results = client.list_children(paths::RESULTS).await?;
    for name in &results {
        let (data, _) = client
            .get_data(&format!("{}/{name}", paths::RESULTS))
            .await?;
        let entry: serde_json::Value = serde_json::from_slice(&data)?;
        // A fleet with credentials marks its entries: {"mark":…,"round":{…}}.
        let result = entry
            .get("round")
            .filter(|r| r.is_object())
            .unwrap_or(&entry);
        committed += result["count"].as_i64().context("a result has a count")?;
    }
    let counted = counter::read(&client).await?.value;
    drop(client);
    observer.close().await;

    println!();
    summary(
        "SIGKILL",
        times.remove("KILL").unwrap(),
        "session timeout + period",
        session_timeout + period,
    );
    summary("SIGTERM", times.remove("TERM").unwrap(), "period", period);
    println!(
        "exactly once: counter {counted}, readings in the {} committed rounds {committed}: {}",
        results.len(),
        if counted == committed {
            "equal"
        } else {
            "DIFFERENT"
        }
    );
    ensure!(
        counted == committed,
        "counter and committed readings differ"
    );
    Ok(())
}
