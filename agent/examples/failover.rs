//! Failover of a real fleet: a ZooKeeper from Debian's package and three release
//! `fleetmeter run` processes with the bundled plugins. The leader is stopped again and
//! again with SIGTERM (it closes its session) and SIGKILL (its session must time out), at a
//! random point of the period, and three things are measured per stop: the time from the
//! signal to the process's exit, the time from the last commit before the signal to the next
//! one (both commit times are ZooKeeper's, the modification time of `{root}/round`), and so
//! the measurement periods with no committed round. The stopped device is started again
//! before the next trial. At the end, `counter` is checked against every committed result (no
//! API runs, so they all stay in the outbox): nothing lost or doubled.
//!
//! `scripts/bench-failover [--terms N] [--kills N] [--period S] [--session-timeout S]`

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
    /// Stops of the leader with SIGTERM.
    #[arg(long, default_value_t = 5)]
    terms: usize,
    /// Stops of the leader with SIGKILL.
    #[arg(long, default_value_t = 5)]
    kills: usize,
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

/// The fleet's round now, and when it was released (ZooKeeper's clock, ms).
async fn round_now(client: &fleetmeter::coord::FleetClient) -> Result<(RoundState, i64)> {
    barrier::current_released(client)
        .await?
        .context("the fleet has no round yet")
}

/// What one stop of the leader cost.
struct Trial {
    /// From the signal to the process's exit.
    exit: Duration,
    /// From the last commit before the signal to the next one.
    gap: Duration,
    /// Periods with no committed round.
    lost: u64,
}

fn summary(label: &str, trials: &[Trial], period: Duration, reference: &str) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let stats = |mut v: Vec<Duration>| {
        v.sort();
        (v[0], v[v.len() / 2], *v.last().unwrap())
    };
    let (emin, emed, emax) = stats(trials.iter().map(|t| t.exit).collect());
    let (gmin, gmed, gmax) = stats(trials.iter().map(|t| t.gap).collect());
    let lost: u64 = trials.iter().map(|t| t.lost).sum();
    let with_loss = trials.iter().filter(|t| t.lost > 0).count();
    println!(
        "{label:<8} n={:<3} exit min/median/max {:.1}/{:.1}/{:.1} ms   commit gap {:.0}/{:.0}/{:.0} ms (period {:.0} ms)   periods with no committed round: {lost} in total, {with_loss} of {} stops lost any (goal: {reference})",
        trials.len(),
        ms(emin),
        ms(emed),
        ms(emax),
        ms(gmin),
        ms(gmed),
        ms(gmax),
        ms(period),
        trials.len(),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.terms > 0 && args.kills > 0,
        "--terms and --kills must be at least 1"
    );
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
        "fleet of 3 agents, period {:?}, session timeout {:?}, {} SIGTERMs and {} SIGKILLs of the leader; logs in {}",
        period,
        session_timeout,
        args.terms,
        args.kills,
        work.path().display()
    );
    for id in ["1", "2", "3"] {
        fleet.spawn(id, &config, &[])?;
    }
    let mut trials: BTreeMap<&str, Vec<Trial>> = BTreeMap::new();
    let mut signals: Vec<&str> = std::iter::repeat_n("TERM", args.terms)
        .chain(std::iter::repeat_n("KILL", args.kills))
        .collect();
    // Interleaved: a SIGKILL's successor and a SIGTERM's meet every kind of predecessor.
    rand::seq::SliceRandom::shuffle(signals.as_mut_slice(), &mut rand::rng());
    for (trial, signal) in signals.into_iter().enumerate() {
        // A full fleet, a few rounds in, then a stop at a varying point of the period.
        let deadline = Instant::now() + Duration::from_secs(60);
        while election::contenders(&client).await?.len() < 3 {
            ensure!(
                Instant::now() < deadline,
                "the fleet is not back to 3 agents after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (start, _) = round_now(&client).await?;
        let opened = barrier::wait_for_round(&observer, Some(start)).await?;
        next_round(&observer, opened, 10 * period + session_timeout).await?;
        tokio::time::sleep(period.mul_f64(rand::random_range(0.0..1.0))).await;

        let leader = election::contenders(&client)
            .await?
            .first()
            .cloned()
            .context("no leader")?;
        let mut child = fleet.signal(&leader, signal)?;
        let signalled = Instant::now();
        child.wait()?;
        let exit = signalled.elapsed();
        // A dead process commits nothing more: the next round is the new leader's.
        // The last commit before the stop (the leader may have committed as the signal came).
        let (before, committed_at) = round_now(&client).await?;
        next_round(&observer, before, 4 * (session_timeout + period)).await?;
        let (after, next_at) = round_now(&client).await?;
        let gap = Duration::from_millis(u64::try_from(next_at - committed_at).unwrap_or(0));
        // Each period should see one commit: a gap of k periods lost k - 1 of them.
        let lost = ((gap.as_secs_f64() / period.as_secs_f64()).round() as u64).saturating_sub(1);
        let now_leading = election::contenders(&client).await?;
        println!(
            "trial {:>2}: SIG{signal:<4} to leader {leader}: exited in {:>5.1} ms; round {} committed {:>6.0} ms after round {} ({lost} period(s) lost; now led by {})",
            trial + 1,
            exit.as_secs_f64() * 1000.0,
            after.round - 1,
            gap.as_secs_f64() * 1000.0,
            before.round - 1,
            now_leading.first().map_or("nobody", String::as_str),
        );
        trials
            .entry(signal)
            .or_default()
            .push(Trial { exit, gap, lost });
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
        "SIGTERM",
        &trials.remove("TERM").unwrap(),
        period,
        "0 periods lost, exit <= 100 ms",
    );
    summary(
        "SIGKILL",
        &trials.remove("KILL").unwrap(),
        period,
        "no more periods than the session's expiry spans",
    );
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
