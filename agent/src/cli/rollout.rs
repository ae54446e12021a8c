//! `fleetmeter plugin rollout sensor|aggregator|status|promote|abort`: a stored artifact
//! rolled out to the running fleet (`crate::rollout`).

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use super::{FleetArgs, engine_args::parse_key_value};
use crate::{
    coord::{FleetClient, dynconfig},
    rollout::{
        artifacts,
        record::{ArtifactRef, Canary, Gates, Judged, Kind, Rollout, State},
        store::{self, Read},
    },
    text::one_line_bounded,
    wire::now_ms,
};

/// Rounds announced ahead at least, and seconds: every agent fetches, checks and compiles
/// the artifact before the switch.
const MIN_LEAD_ROUNDS: u64 = 3;
const MIN_LEAD_SECS: f64 = 10.0;

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Roll out a sensor: the canary devices switch at the announced round, the leader
    /// judges them every round by the gates, and the rollout is promoted (every device
    /// switches) after --rounds good rounds, or rolled back at the first failed gate.
    Sensor(RolloutArgs),
    /// Roll out an aggregator: the leader runs it in shadow on the same readings for
    /// --rounds rounds (recorded beside the published value), then promotes it, or rolls
    /// it back when it fails.
    Aggregator(RolloutArgs),
    /// Show the rollout: state, canaries, gates, what was judged, shadow values, history.
    Status {
        #[command(flatten)]
        fleet: FleetArgs,
        #[arg(long)]
        json: bool,
    },
    /// Promote the rollout now (or when it waits after --manual): every device switches two
    /// rounds from now.
    Promote {
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Roll back by hand: canaries return to the previous plugin two rounds from now.
    Abort {
        /// Why, for the history.
        #[arg(long, default_value = "aborted by an operator")]
        reason: String,
        #[command(flatten)]
        fleet: FleetArgs,
    },
}

#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// `NAME@sha256:HEX`, as `fleetmeter plugin publish` printed it.
    plugin: String,
    /// Plugin configuration for its `init` (repeatable): `--config min=70`. Limits and
    /// grants stay each agent's own.
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    config: Vec<(String, String)>,
    /// Canary devices: ids (`1,3`) or a share of the fleet (`10%`, picked by a hash of the
    /// device id: the same on every agent, for devices that join later too). Required for
    /// a sensor; an aggregator runs in shadow on the leader.
    #[arg(long, value_name = "IDS|N%")]
    canary: Option<String>,
    /// Canary rounds that must pass every gate before promotion.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// The round the canaries switch at [default: at least 3 rounds and 10 s from now].
    #[arg(long, value_name = "ROUND")]
    at_round: Option<u64>,
    /// After the gates pass, wait for `fleetmeter plugin rollout promote`.
    #[arg(long)]
    manual: bool,
    /// Plugin failures (trap, timeout, error, an artifact a canary cannot run) allowed over
    /// the canary.
    #[arg(long, default_value_t = 0)]
    max_failures: u32,
    /// Readings missing from canary devices allowed over the canary.
    #[arg(long, default_value_t = 0)]
    max_missing: u32,
    /// Roll back when a canary reading is further than this many median absolute
    /// deviations from the median of the other devices' readings (off by default: a
    /// heterogeneous fleet reads different values).
    #[arg(long, value_name = "M")]
    max_mad: Option<f64>,
    #[command(flatten)]
    fleet: FleetArgs,
}

pub(super) async fn run(command: RolloutCommand) -> Result<ExitCode> {
    match command {
        RolloutCommand::Sensor(args) => {
            let args = &args;
            args.fleet
                .with_client(|client| async move { start(&client, Kind::Sensor, args).await })
                .await
        }
        RolloutCommand::Aggregator(args) => {
            let args = &args;
            args.fleet
                .with_client(|client| async move { start(&client, Kind::Aggregator, args).await })
                .await
        }
        RolloutCommand::Status { fleet, json } => {
            fleet
                .with_client(|client| async move { status(&client, json).await })
                .await
        }
        RolloutCommand::Promote { fleet } => {
            fleet
                .with_client(|client| async move {
                    decide(&client, State::Promoted, "promoted by an operator".into()).await
                })
                .await
        }
        RolloutCommand::Abort { reason, fleet } => {
            fleet
                .with_client(|client| async move {
                    decide(&client, State::Aborted, one_line_bounded(&reason, 200)).await
                })
                .await
        }
    }
}

/// The fleet's sampling period, from `{root}/config/sampling_period`.
async fn period_secs(client: &FleetClient) -> f64 {
    let path = dynconfig::Key::SamplingPeriod.path();
    match client.get_data(&path).await {
        Ok((data, _)) => dynconfig::parse_period(&String::from_utf8_lossy(&data))
            .map_or(5.0, |p| p.as_secs_f64()),
        Err(_) => 5.0,
    }
}

async fn start(client: &FleetClient, kind: Kind, args: &RolloutArgs) -> Result<ExitCode> {
    let (name, digest) = args.plugin.rsplit_once('@').with_context(|| {
        format!(
            "{:?} is not NAME@sha256:HEX (as `fleetmeter plugin publish` printed it)",
            args.plugin
        )
    })?;
    let digest = artifacts::parse_digest(digest)?;
    let manifest = artifacts::manifest(client, &digest)
        .await?
        .ok_or_else(|| artifacts::ArtifactError::Unknown(digest.clone()))?;
    if manifest.kind != kind.name() {
        bail!(
            "sha256:{digest} is a {} ({}), not a {}",
            manifest.kind,
            manifest.label(),
            kind.name()
        );
    }
    if manifest.name != name {
        bail!(
            "sha256:{digest} is {}, not {name}: check the digest",
            manifest.label()
        );
    }
    let canary = match (&args.canary, kind) {
        (Some(raw), _) => Canary::parse(raw).map_err(anyhow::Error::msg)?,
        (None, Kind::Aggregator) => Canary::Devices(Vec::new()),
        (None, Kind::Sensor) => bail!(
            "which devices first? give --canary with device ids (`--canary 1,3`) or a share (`--canary 10%`)"
        ),
    };
    crate::rollout::record::check_config(&args.config).map_err(anyhow::Error::msg)?;
    if args.rounds == 0 || args.rounds > crate::rollout::record::MAX_ROUNDS {
        bail!(
            "--rounds must be 1 to {}",
            crate::rollout::record::MAX_ROUNDS
        );
    }
    if args.max_mad.is_some_and(|m| !m.is_finite() || m <= 0.0) {
        bail!("--max-mad must be a positive number of median absolute deviations");
    }
    let old = store::read_rollout(client).await?;
    if let Some(Read { value: Ok(r), .. }) = &old
        && r.state.is_active()
    {
        bail!(
            "rollout {} ({} {}) is still {}: promote or abort it first (`fleetmeter plugin rollout promote|abort`); two rollouts never run at once",
            r.id,
            r.kind.name(),
            r.artifact.label(),
            r.state.name()
        );
    }
    let now = store::current_round(client)
        .await?
        .context("the fleet has not started (no {root}/round): start its agents first")?;
    let period = period_secs(client).await;
    let lead = MIN_LEAD_ROUNDS.max((MIN_LEAD_SECS / period).ceil() as u64);
    let start_round = match args.at_round {
        Some(r) if r <= now + 1 => bail!(
            "round {r} is released or about to be (the fleet is at round {now}): give --at-round {} or later",
            now + 2
        ),
        Some(r) => r,
        None => now + lead,
    };
    let previous = store::read_assignment(client, kind)
        .await?
        .and_then(|r| r.value.ok());
    let id = old
        .as_ref()
        .and_then(|r| r.value.as_ref().ok())
        .map_or(1, |r| r.id + 1);
    let mut rollout = Rollout {
        id,
        kind,
        artifact: ArtifactRef {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            sha256: digest.clone(),
        },
        config: args.config.clone(),
        canary,
        rounds: args.rounds,
        gates: Gates {
            max_failures: args.max_failures,
            max_missing: args.max_missing,
            max_mad: args.max_mad,
        },
        manual: args.manual,
        state: State::Canary,
        start_round,
        end_round: None,
        judged: Judged::default(),
        shadow: Vec::new(),
        history: Vec::new(),
        previous,
    };
    rollout.transition(
        State::Canary,
        now,
        None,
        format!("started, canaries from round {start_round}"),
        &operator(),
        now_ms(),
    );
    store::write(client, &rollout, old.map(|r| r.version), None, None).await?;
    println!(
        "rollout {id}: {} {} (sha256:{}) — {} from round {start_round} (the fleet is at round {now}, ~{:.0} s away); promoted after {} good round(s){}",
        kind.name(),
        manifest.label(),
        &digest[..12],
        match kind {
            Kind::Sensor => rollout.canary.describe(),
            Kind::Aggregator => "in shadow on the leader".into(),
        },
        (start_round - now) as f64 * period,
        args.rounds,
        if args.manual {
            ", then waits for `promote`"
        } else {
            ""
        }
    );
    println!("watch it: fleetmeter plugin rollout status");
    Ok(ExitCode::SUCCESS)
}

fn operator() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    format!("cli:{}", one_line_bounded(&user, 32))
}

/// `promote` or `abort`, by hand; read again and retried when the leader wrote the record
/// meanwhile (it does every canary round).
async fn decide(client: &FleetClient, state: State, reason: String) -> Result<ExitCode> {
    for _ in 0..5 {
        match decide_once(client, state, reason.clone()).await {
            Err(err)
                if err
                    .downcast_ref::<store::WriteError>()
                    .is_some_and(|e| matches!(e, store::WriteError::Moved)) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            done => return done,
        }
    }
    bail!("the rollout record kept changing under this command; try again")
}

async fn decide_once(client: &FleetClient, state: State, reason: String) -> Result<ExitCode> {
    let Some(Read {
        value: Ok(mut r),
        version,
    }) = store::read_rollout(client).await?
    else {
        bail!("no readable rollout record in the fleet (see `fleetmeter plugin rollout status`)");
    };
    if !r.state.is_active() {
        bail!(
            "rollout {} is already {}: nothing to {}",
            r.id,
            r.state.name(),
            if state == State::Promoted {
                "promote"
            } else {
                "abort"
            }
        );
    }
    let now = store::current_round(client).await?.unwrap_or(0);
    let end = now + 2;
    r.transition(state, now, Some(end), reason, &operator(), now_ms());
    let assignment = (state == State::Promoted).then(|| crate::rollout::record::Assignment {
        artifact: r.artifact.clone(),
        config: r.config.clone(),
        rollout: r.id,
        since_round: end,
    });
    let assignment_version = match &assignment {
        Some(_) => store::read_assignment(client, r.kind)
            .await?
            .map(|a| a.version),
        None => None,
    };
    store::write(
        client,
        &r,
        Some(version),
        assignment.as_ref().map(|a| (a, assignment_version)),
        None,
    )
    .await?;
    println!(
        "rollout {} {}: from round {end} {}",
        r.id,
        r.state.name(),
        if state == State::Promoted {
            format!("every device runs {}", r.artifact.label())
        } else {
            "every device runs its previous plugin".into()
        }
    );
    Ok(ExitCode::SUCCESS)
}

async fn status(client: &FleetClient, json: bool) -> Result<ExitCode> {
    let Some(read) = store::read_rollout(client).await? else {
        println!("no rollout yet (`fleetmeter plugin rollout sensor|aggregator NAME@sha256:HEX`)");
        return Ok(ExitCode::SUCCESS);
    };
    let r = match read.value {
        Ok(r) => r,
        Err(problem) => bail!("{{root}}/rollout does not parse: {problem}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&r));
    Ok(ExitCode::SUCCESS)
}

/// The record, as `rollout status` prints it (escaped: it came from ZooKeeper).
pub fn render(r: &Rollout) -> String {
    use std::fmt::Write as _;
    let b = |s: &str| one_line_bounded(s, 120);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rollout {}: {} {} (sha256:{})\nstate: {}{}",
        r.id,
        r.kind.name(),
        b(&r.artifact.label()),
        b(&r.artifact.sha256),
        r.state.name(),
        r.end_round
            .map_or_else(String::new, |e| format!(" from round {e}"))
    );
    let _ = writeln!(
        out,
        "canary: {} from round {}; {} round(s) to pass; gates: failures <= {}, missing <= {}, band {}{}",
        match r.kind {
            Kind::Sensor => b(&r.canary.describe()),
            Kind::Aggregator => "shadow on the leader".into(),
        },
        r.start_round,
        r.rounds,
        r.gates.max_failures,
        r.gates.max_missing,
        r.gates
            .max_mad
            .map_or_else(|| "off".to_owned(), |m| format!("{m} MAD")),
        if r.manual { "; manual promotion" } else { "" }
    );
    let j = &r.judged;
    let _ = writeln!(
        out,
        "judged: {} round(s) (last {}), {} failure(s), {} missing, {} outside the band",
        j.rounds,
        j.last_round.map_or_else(|| "-".into(), |l| l.to_string()),
        j.failures,
        j.missing,
        j.outliers
    );
    if !r.config.is_empty() {
        let config: Vec<String> = r
            .config
            .iter()
            .map(|(k, v)| format!("{}={}", b(k), b(v)))
            .collect();
        let _ = writeln!(out, "config: {}", config.join(" "));
    }
    let _ = writeln!(
        out,
        "previous: {}",
        r.previous.as_ref().map_or_else(
            || "each agent's own configuration".into(),
            |p| b(&p.artifact.label())
        )
    );
    if !r.shadow.is_empty() {
        let _ = writeln!(out, "shadow (round: published | shadow):");
        let show =
            |v: Option<f64>| v.map_or_else(|| "none".into(), |v| crate::wire::Shown(v).to_string());
        for s in &r.shadow {
            let _ = writeln!(
                out,
                "  {}: {} | {}{}",
                s.round,
                show(s.published),
                show(s.shadow),
                s.error
                    .as_deref()
                    .map_or_else(String::new, |e| format!(" (failed: {})", b(e)))
            );
        }
    }
    let _ = writeln!(out, "history:");
    for t in &r.history {
        let _ = writeln!(
            out,
            "  round {} {}: {} — {} (by {})",
            t.round,
            i64::try_from(t.at_ms)
                .ok()
                .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
                .map_or_else(|| "?".to_owned(), |t| t.to_string()),
            t.state.name(),
            one_line_bounded(&t.reason, 300),
            b(&t.by)
        );
    }
    out
}
