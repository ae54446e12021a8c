//! The fleet simulator: N devices in one process (see `sim.rs`) against a real ZooKeeper
//! and the real API, measured round by round.
//!
//! `scripts/bench-fleet N [--period S] [--seconds T] [--zk HOSTS]`
//!
//! It starts ZooKeeper (Debian's package; `maxClientCnxns=0` lifts the cap of 60 sessions
//! from one address), Redis and the release `fleetmeter-api` binary, starts every device at
//! once, waits until all of them joined and a round had every reading, then measures for
//! `--seconds`: the leader's "round committed" log events (readings, members, collection
//! and commit times), ZooKeeper's `mntr` counters (reads, writes, watch events, packets,
//! bytes), ZooKeeper's and this process's CPU time and memory. It checks the stored rounds
//! against the API at the end and prints a table, then one JSON line.

#[path = "sim.rs"]
mod sim;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use fleetmeter::coord::{Session, ZkSettings, paths};
use fleetmeter_testkit::{api::ApiServer, redis::RedisServer, zk::ZkServer};
use sim::{Sim, Spec};
use tracing::field::{Field, Visit};
use tracing_subscriber::{Layer, layer::SubscriberExt};

/// Runs N simulated devices against a real ZooKeeper and the real API and measures rounds.
#[derive(Parser)]
struct Args {
    /// Devices to simulate.
    devices: usize,
    /// Sampling period, seconds.
    #[arg(long, default_value_t = 1.0)]
    period: f64,
    /// How long to measure once every device joined, seconds.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// An existing ZooKeeper (`host:port,...`) instead of starting one; its CPU and memory
    /// are then not reported.
    #[arg(long)]
    zk: Option<String>,
    /// The ZooKeeper heap when this program starts it, MiB.
    #[arg(long, default_value_t = 1024)]
    zk_heap: u32,
    /// Devices' ZooKeeper session timeout, seconds (1 to 10 with the started server).
    #[arg(long, default_value_t = 4.0)]
    session_timeout: f64,
    /// How long a device may take to connect and start before it gives up, seconds (the
    /// agent's `connect_timeout`; a storm of thousands of sessions on a small machine may
    /// need more than the default).
    #[arg(long, default_value_t = 60.0)]
    connect_timeout: f64,
    /// How long every device may take to join, seconds.
    #[arg(long, default_value_t = 120.0)]
    join_within: f64,
    /// The plugins.
    #[arg(long, default_value = "plugins/dist")]
    plugin_dir: PathBuf,
}

/// One "round committed" event of a leader.
#[derive(Clone, Debug, Default)]
struct Committed {
    round: u64,
    readings: u64,
    members: u64,
    collect_ms: f64,
    commit_ms: f64,
    at: Option<Instant>,
}

impl Visit for Committed {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "round" => self.round = value,
            "readings" => self.readings = value,
            "members" => self.members = value,
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_u64(field, u64::try_from(value).unwrap_or(0));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let parsed = || format!("{value:?}").parse::<f64>().unwrap_or(f64::NAN);
        match field.name() {
            "collect_ms" => self.collect_ms = parsed(),
            "commit_ms" => self.commit_ms = parsed(),
            _ => {}
        }
    }
}

/// What the simulated devices logged that matters here.
#[derive(Default)]
struct Seen {
    committed: Vec<Committed>,
    /// Warnings and errors, by message.
    problems: BTreeMap<String, u64>,
}

struct Recorder(Arc<Mutex<Seen>>);

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let level = *event.metadata().level();
        let mut message = Message(String::new());
        event.record(&mut message);
        if message.0 == "round committed; next round released" {
            let mut committed = Committed {
                at: Some(Instant::now()),
                ..Committed::default()
            };
            event.record(&mut committed);
            self.0.lock().unwrap().committed.push(committed);
        } else if level <= tracing::Level::WARN {
            *self
                .0
                .lock()
                .unwrap()
                .problems
                .entry(format!("{level} {}", message.0))
                .or_default() += 1;
        }
    }
}

/// CPU seconds (user + system) and resident MiB of a process.
fn cpu_and_rss(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((ticks / clock_ticks(), rss_kib / 1024.0))
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// ZooKeeper's `mntr` counters.
fn mntr(hosts: &str) -> BTreeMap<String, f64> {
    let Some(port) = hosts
        .split(',')
        .next()
        .and_then(|h| h.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
    else {
        return BTreeMap::new();
    };
    fleetmeter_testkit::zk::four_letter(port, "mntr")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The `fleetmeter-api` binary built next to this example (target/release).
fn api_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .context("where this example lives")?;
    Ok(dir.join("fleetmeter-api"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.devices > 0, "give at least one device");
    ensure!(
        args.period >= 0.1 && args.seconds >= args.period,
        "--period must be at least 0.1 s and --seconds at least one period"
    );
    // Each device's two plugin instances take ~14 memory mappings; Linux's default limit
    // (65,530) ends a simulation near 4,600 devices with "Cannot allocate memory".
    let maps_needed = args.devices * 14 + 10_000;
    if let Some(limit) = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|limit| *limit < maps_needed)
    {
        eprintln!(
            "bench-fleet: vm.max_map_count is {limit}; {} devices need about {maps_needed} \
             memory mappings: `sysctl -w vm.max_map_count={}` first",
            args.devices,
            maps_needed.next_power_of_two()
        );
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(Recorder(seen.clone()).with_filter(filter)),
    )?;

    let plugin_dir = std::fs::canonicalize(&args.plugin_dir)
        .with_context(|| format!("plugin directory {}", args.plugin_dir.display()))?;
    let work = tempfile::tempdir()?;
    let (zk, zk_hosts) = match &args.zk {
        Some(hosts) => (None, hosts.clone()),
        None => {
            let zk = ZkServer::start_for_fleet(args.zk_heap);
            let hosts = zk.hosts();
            (Some(zk), hosts)
        }
    };
    let redis = RedisServer::start();
    let token = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let api = ApiServer::start(
        &api_binary()?,
        &redis.url(),
        &token,
        &work.path().join("api.log"),
    );
    let spec = Spec {
        devices: args.devices,
        period: args.period,
        session_timeout: args.session_timeout,
        connect_timeout: args.connect_timeout,
        zk_hosts: zk_hosts.clone(),
        root: format!("/bench-fleet-{}", uuid::Uuid::new_v4().simple()),
        api_url: api.url(),
        token,
        plugin_dir,
        cache_dir: work.path().join("cache"),
    };
    println!(
        "bench-fleet: {} devices, period {} s, ZooKeeper {} ({}, root {}), API {}",
        spec.devices,
        spec.period,
        zk_hosts,
        if zk.is_some() {
            "started here, maxClientCnxns=0"
        } else {
            "given"
        },
        spec.root,
        spec.api_url
    );
    let engine = sim::engine(&spec)?;
    let loading = Instant::now();
    let fleet = Sim::start(&spec, &engine).await?;
    println!(
        "loaded {} devices' plugins in {:.1} s; all of them connect now",
        spec.devices,
        loading.elapsed().as_secs_f64()
    );
    let result = measure(&args, &spec, zk.as_ref(), &api, &fleet, &seen).await;
    let stopping = Instant::now();
    let errors = fleet.stop(Duration::from_secs(30)).await;
    println!(
        "stopped every device in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    for error in errors.iter().take(5) {
        println!("device error: {error}");
    }
    let report = result?;
    ensure!(
        errors.is_empty(),
        "{} devices failed (first: {})",
        errors.len(),
        errors[0]
    );
    println!("{report}");
    Ok(())
}

async fn measure(
    args: &Args,
    spec: &Spec,
    zk: Option<&ZkServer>,
    api: &ApiServer,
    fleet: &Sim,
    seen: &Arc<Mutex<Seen>>,
) -> Result<String> {
    let observer = Session::connect(ZkSettings {
        connect_timeout: Duration::from_secs(60),
        ..ZkSettings::new(&spec.zk_hosts, &spec.root)
    })
    .await?;
    // A fresh client for each look: the observer's session may be rebuilt under load.
    let joined = || async {
        match observer.client() {
            Ok(client) => client
                .check_stat(paths::DEVICES)
                .await
                .ok()
                .flatten()
                .map_or(0, |s| s.num_children as u64),
            Err(_) => 0,
        }
    };
    let zk_hosts = spec.zk_hosts.as_str();
    let n = spec.devices as u64;

    // Joining: every device has its node, and a round was committed with every reading.
    let started = Instant::now();
    let mut last_print = Instant::now();
    let warm_round = loop {
        let joined = joined().await;
        let full = seen
            .lock()
            .unwrap()
            .committed
            .iter()
            .rev()
            .find(|c| c.readings == n)
            .map(|c| c.round);
        if let Some(round) = full
            && joined == n
        {
            println!(
                "every device joined and round {round} had every reading after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            break round;
        }
        if fleet.exited() > 0 {
            bail!("{} devices exited while joining", fleet.exited());
        }
        if started.elapsed() > Duration::from_secs_f64(args.join_within) {
            bail!(
                "only {joined} of {n} devices joined within {} s",
                args.join_within
            );
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            let last = seen.lock().unwrap().committed.last().cloned();
            let last = last.unwrap_or_default();
            println!(
                "  {:>5.1} s: {joined}/{n} devices joined, last round committed {} with {} readings",
                started.elapsed().as_secs_f64(),
                last.round,
                last.readings
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let me = std::process::id().to_string();
    let zk_pid = zk.and_then(ZkServer::pid).map(|p| p.to_string());
    let before_cpu = cpu_and_rss(&me);
    let before_zk = zk_pid.as_deref().and_then(cpu_and_rss);
    let before_mntr = mntr(zk_hosts);
    let measured = Instant::now();
    let mut printed = Instant::now();
    while measured.elapsed() < Duration::from_secs_f64(args.seconds) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if printed.elapsed() >= Duration::from_secs(10) {
            let seen = seen.lock().unwrap();
            let last = seen.committed.last().cloned().unwrap_or_default();
            println!(
                "  {:>5.1} s: round {} committed, {}/{} readings, collect {:.1} ms, commit {:.1} ms",
                measured.elapsed().as_secs_f64(),
                last.round,
                last.readings,
                n,
                last.collect_ms,
                last.commit_ms
            );
            printed = Instant::now();
        }
        if fleet.exited() > 0 {
            bail!("{} devices exited while measuring", fleet.exited());
        }
    }
    let elapsed = measured.elapsed().as_secs_f64();
    let after_cpu = cpu_and_rss(&me);
    let after_zk = zk_pid.as_deref().and_then(cpu_and_rss);
    let after_mntr = mntr(zk_hosts);
    let members_now = joined().await;
    observer.close().await;

    let rounds: Vec<Committed> = seen
        .lock()
        .unwrap()
        .committed
        .iter()
        .filter(|c| c.round > warm_round && c.at.is_some_and(|at| at >= measured))
        .cloned()
        .collect();
    ensure!(!rounds.is_empty(), "no round was committed while measuring");
    let fractions: Vec<f64> = rounds
        .iter()
        .map(|c| c.readings as f64 / n as f64)
        .collect();
    let mean_fraction = fractions.iter().sum::<f64>() / fractions.len() as f64;
    let min_fraction = fractions.iter().copied().fold(f64::INFINITY, f64::min);
    let below = fractions.iter().filter(|f| **f < 0.99).count();
    let min_members = rounds.iter().map(|c| c.members).min().unwrap_or(0);
    let mut close: Vec<f64> = rounds.iter().map(|c| c.collect_ms + c.commit_ms).collect();
    let mut collect: Vec<f64> = rounds.iter().map(|c| c.collect_ms).collect();
    let mut commit: Vec<f64> = rounds.iter().map(|c| c.commit_ms).collect();
    for v in [&mut close, &mut collect, &mut commit] {
        v.sort_by(f64::total_cmp);
    }
    let first = rounds.iter().map(|c| c.round).min().unwrap_or(0);
    let last = rounds.iter().map(|c| c.round).max().unwrap_or(0);
    let distinct: std::collections::BTreeSet<u64> = rounds.iter().map(|c| c.round).collect();

    // The API stored what the leader committed, once each, in order.
    let stored = stored_counts(&api.url(), first, last).await?;
    let stored_match = rounds
        .iter()
        .filter(|c| stored.get(&c.round) == Some(&c.readings))
        .count();

    let rate = |key: &str| {
        let (a, b) = (before_mntr.get(key), after_mntr.get(key));
        match (a, b) {
            (Some(a), Some(b)) => Some((b - a) / elapsed),
            _ => None,
        }
    };
    let kinds = [
        ("reads", "zk_cnt_readlatency"),
        ("writes", "zk_cnt_updatelatency"),
        ("packets_in", "zk_packets_received"),
        ("packets_out", "zk_packets_sent"),
        ("bytes_in", "zk_bytes_received_count"),
        ("data_watch_events", "zk_sum_node_changed_watch_count"),
        ("created_watch_events", "zk_sum_node_created_watch_count"),
        ("deleted_watch_events", "zk_sum_node_deleted_watch_count"),
        ("children_watch_events", "zk_sum_node_children_watch_count"),
    ];
    let zk_rates: BTreeMap<&str, f64> = kinds
        .iter()
        .filter_map(|(name, key)| rate(key).map(|r| (*name, (r * 10.0).round() / 10.0)))
        .collect();
    let watches = after_mntr.get("zk_watch_count").copied();
    let cpu = |a: Option<(f64, f64)>, b: Option<(f64, f64)>| match (a, b) {
        (Some(a), Some(b)) => Some(((b.0 - a.0) / elapsed, b.1)),
        _ => None,
    };
    let sim_cpu = cpu(before_cpu, after_cpu);
    let zk_cpu = cpu(before_zk, after_zk);

    let problems = seen.lock().unwrap().problems.clone();
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| devices | {n} (members at the end: {members_now}; fewest a round saw: {min_members}) |"
    );
    println!(
        "| rounds measured | {} ({first}..{last}, {} distinct; {} stored by the API with the same count) |",
        rounds.len(),
        distinct.len(),
        stored_match
    );
    println!(
        "| readings per round | mean {:.2} %, min {:.2} %, rounds under 99 %: {below} |",
        mean_fraction * 100.0,
        min_fraction * 100.0
    );
    println!(
        "| round close (opened → all collected → committed) | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
        percentile(&close, 50.0),
        percentile(&close, 99.0),
        close.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| collection / commit | p50 {:.1} / {:.1} ms, p99 {:.1} / {:.1} ms |",
        percentile(&collect, 50.0),
        percentile(&commit, 50.0),
        percentile(&collect, 99.0),
        percentile(&commit, 99.0)
    );
    for (name, per_second) in &zk_rates {
        println!("| ZooKeeper {name} per second | {per_second} |");
    }
    if let Some(watches) = watches {
        println!("| ZooKeeper watches held | {watches} |");
    }
    if let Some((cpu, rss)) = zk_cpu {
        println!(
            "| ZooKeeper CPU, RSS | {:.1} % of a core, {rss:.0} MiB |",
            cpu * 100.0
        );
    }
    if let Some((cpu, rss)) = sim_cpu {
        println!(
            "| simulator CPU, RSS | {:.1} % of a core ({:.3} ms per device per round), {rss:.0} MiB |",
            cpu * 100.0,
            cpu * 1000.0 * spec.period / n as f64
        );
    }
    let mut top: Vec<(&String, &u64)> = problems.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    for (message, count) in top.iter().take(5) {
        println!(
            "| logged {count}× | {} |",
            message.chars().take(120).collect::<String>()
        );
    }
    println!();
    let ok =
        below == 0 && min_members == n && members_now == n && percentile(&close, 99.0) <= 300.0;
    // JSON keeps what was measured, at the precision it was measured (0.1 ms, 0.1 MiB,
    // 0.001 core, 0.01 % of readings), without binary-float noise.
    let r = |x: f64, places: i32| {
        let scale = 10f64.powi(places);
        (x * scale).round() / scale
    };
    let json = serde_json::json!({
        "devices": n,
        "period_s": spec.period,
        "rounds": rounds.len(),
        "readings_fraction": {"mean": r(mean_fraction, 4), "min": r(min_fraction, 4)},
        "rounds_under_99pct": below,
        "members_min": min_members,
        "members_end": members_now,
        "stored_matching": stored_match,
        "close_ms": {"p50": r(percentile(&close, 50.0), 1), "p99": r(percentile(&close, 99.0), 1)},
        "collect_ms": {"p50": r(percentile(&collect, 50.0), 1), "p99": r(percentile(&collect, 99.0), 1)},
        "commit_ms": {"p50": r(percentile(&commit, 50.0), 1), "p99": r(percentile(&commit, 99.0), 1)},
        "zk_per_second": zk_rates,
        "zk_watches": watches,
        "zk_cpu_cores": zk_cpu.map(|c| r(c.0, 3)),
        "zk_rss_mib": zk_cpu.map(|c| r(c.1, 1)),
        "sim_cpu_cores": sim_cpu.map(|c| r(c.0, 3)),
        "sim_rss_mib": sim_cpu.map(|c| r(c.1, 1)),
        "meets_bar": ok,
    });
    Ok(json.to_string())
}

/// The readings count of each stored round in `first..=last`, from the API.
async fn stored_counts(api: &str, first: u64, last: u64) -> Result<BTreeMap<u64, u64>> {
    // Newest first, at most 1,000: the measured rounds are the newest ones.
    let url = format!("{api}api/v1/rounds?limit=1000");
    let rounds: Vec<serde_json::Value> = reqwest::get(&url).await?.json().await?;
    Ok(rounds
        .iter()
        .filter_map(|r| Some((r.get("round")?.as_u64()?, r.get("count")?.as_u64()?)))
        .filter(|(round, _)| (first..=last).contains(round))
        .collect())
}
