//! `fleetmeter plugin keygen|sign|publish|list|gc|rollout`: shipping a plugin to a running
//! fleet (`crate::rollout`).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use super::{
    FleetArgs,
    engine_args::{EngineArgs, engine, locate, parse_key_value},
};
use crate::{
    config::keys,
    coord::{FleetClient, dynconfig},
    plugin,
    rollout::{
        artifacts::{self, Manifest, Published},
        record::{ArtifactRef, Canary, Gates, Judged, Kind, Rollout, State},
        signing::{self, Signature, TrustPolicy, TrustedKey},
        store,
    },
    text::one_line_bounded,
    wire::now_ms,
};

/// Rounds announced ahead at least, and seconds: every agent fetches, checks and compiles
/// the artifact before the switch.
const MIN_LEAD_ROUNDS: u64 = 3;
const MIN_LEAD_SECS: f64 = 10.0;

#[derive(Debug, Subcommand)]
pub enum ShipCommand {
    /// Make a minisign key pair for signing plugin artifacts: DIR/fleetmeter.key (secret,
    /// mode 0600, unencrypted: keep it off the devices) and DIR/fleetmeter.pub. Prints the
    /// public key for the agents' [plugins] trusted_keys.
    Keygen {
        /// Where to write the two files.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Sign a plugin file: writes FILE.minisig, as `minisign -S -m FILE` does. A
    /// password-protected key (made by `minisign -G`) takes its password from
    /// FLEETMETER_SIGNING_PASSWORD.
    Sign {
        file: PathBuf,
        /// The secret key file.
        #[arg(long, value_name = "PATH", env = "FLEETMETER_SIGNING_KEY")]
        secret_key: PathBuf,
    },
    /// Store a plugin in the fleet's ZooKeeper, content-addressed: every load-time check
    /// first (world, contract, metadata, limits), then the component in chunks with its
    /// manifest and signature (FILE.minisig next to it, or --signature). The same bytes
    /// twice is a no-op. Prints the digest to roll out.
    Publish {
        /// A .wasm file, or the name of a plugin in --plugin-dir.
        file: String,
        /// The minisign signature [default: FILE.minisig when it exists].
        #[arg(long, value_name = "PATH")]
        signature: Option<PathBuf>,
        /// Check the signature against these keys before publishing (what agents will do).
        #[arg(long = keys::TRUSTED_KEYS.long(), env = keys::TRUSTED_KEYS.var(), value_name = "KEY", value_delimiter = ',')]
        trusted_keys: Vec<String>,
        /// A file of such keys, one per line (a minisign .pub file is one).
        #[arg(long = keys::TRUSTED_KEYS_FILE.long(), env = keys::TRUSTED_KEYS_FILE.var(), value_name = "PATH")]
        trusted_keys_file: Option<PathBuf>,
        #[command(flatten)]
        fleet: FleetArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// List the artifacts stored in the fleet, and what uses each.
    List {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete artifacts no rollout or assignment references, keeping the newest few, and
    /// publications that never finished.
    Gc {
        /// Unreferenced artifacts to keep (newest first).
        #[arg(long, default_value_t = 3)]
        keep: usize,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Roll a stored artifact out to the running fleet, see its state, promote or abort it.
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

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

pub(super) async fn run(command: ShipCommand) -> Result<ExitCode> {
    match command {
        ShipCommand::Keygen { out, force } => keygen(&out, force),
        ShipCommand::Sign { file, secret_key } => sign(&file, &secret_key),
        ShipCommand::Publish {
            file,
            signature,
            trusted_keys,
            trusted_keys_file,
            fleet,
            engine: args,
        } => {
            let mut keys = trusted_keys
                .iter()
                .filter(|k| !k.trim().is_empty())
                .map(|k| TrustedKey::parse(k))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(path) = &trusted_keys_file {
                keys.extend(TrustedKey::read_all(path)?);
            }
            publish(&file, signature, keys, &fleet, &args).await
        }
        ShipCommand::List { fleet, json } => {
            with_client(&fleet, |client| async move { list(&client, json).await }).await
        }
        ShipCommand::Gc { keep, fleet } => {
            with_client(&fleet, |client| async move { gc(&client, keep).await }).await
        }
        ShipCommand::Rollout(command) => rollout(command).await,
    }
}

/// Runs `f` on a short session on the fleet.
async fn with_client<F, Fut>(fleet: &FleetArgs, f: F) -> Result<ExitCode>
where
    F: FnOnce(FleetClient) -> Fut,
    Fut: Future<Output = Result<ExitCode>>,
{
    let session = fleet.connect().await?;
    let done = match session.client() {
        Ok(client) => f(client).await,
        Err(e) => Err(e.into()),
    };
    session.close().await;
    done
}

fn keygen(out: &Path, force: bool) -> Result<ExitCode> {
    let (secret, key, public) = signing::keygen()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let secret_path = out.join("fleetmeter.key");
    let public_path = out.join("fleetmeter.pub");
    for path in [&secret_path, &public_path] {
        if path.exists() && !force {
            bail!(
                "{} exists: keep it, or replace it with --force (agents trusting its key then refuse what the new key signs until they trust it)",
                path.display()
            );
        }
    }
    write_private(&secret_path, secret.as_bytes())?;
    std::fs::write(&public_path, public.as_bytes())
        .with_context(|| format!("writing {}", public_path.display()))?;
    eprintln!(
        "secret key: {} (keep it off the devices)\npublic key: {} (key id {})",
        secret_path.display(),
        public_path.display(),
        key.id()
    );
    println!("{}", key.text());
    Ok(ExitCode::SUCCESS)
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

fn sign(file: &Path, secret_key: &Path) -> Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let secret = std::fs::read_to_string(secret_key)
        .with_context(|| format!("reading the secret key {}", secret_key.display()))?;
    let password = std::env::var("FLEETMETER_SIGNING_PASSWORD").ok();
    if signing::is_encrypted(&secret) && password.is_none() {
        bail!(
            "{} is password-protected: set FLEETMETER_SIGNING_PASSWORD, or sign with `minisign -S -s {} -m {}`",
            secret_key.display(),
            secret_key.display(),
            file.display()
        );
    }
    let name = file
        .file_name()
        .map_or_else(|| "plugin".into(), |n| n.to_string_lossy().into_owned());
    let comment = format!(
        "file:{} sha256:{}",
        one_line_bounded(&name, 64),
        artifacts::sha256_hex(&bytes)
    );
    let signature = signing::sign(&secret, password, &bytes, &comment)?;
    let out = PathBuf::from(format!("{}.minisig", file.display()));
    std::fs::write(&out, signature).with_context(|| format!("writing {}", out.display()))?;
    println!("{}", out.display());
    Ok(ExitCode::SUCCESS)
}

async fn publish(
    file: &str,
    signature: Option<PathBuf>,
    keys: Vec<TrustedKey>,
    fleet: &FleetArgs,
    args: &EngineArgs,
) -> Result<ExitCode> {
    let path = locate(file, args)?;
    let size = std::fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size > artifacts::MAX_ARTIFACT_BYTES {
        bail!(
            "{} is {size} bytes; the fleet's store takes at most {} (every byte lives in each ZooKeeper server's memory and is fetched by every device)",
            path.display(),
            artifacts::MAX_ARTIFACT_BYTES
        );
    }
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let inspection = plugin::inspect(&engine(args, false)?, &path).await?;
    if let Some(problem) = &inspection.problem {
        bail!("{}: agents would refuse it: {problem}", path.display());
    }
    let (Some(kind), Some(metadata), Some(contract)) =
        (inspection.kind, inspection.metadata, inspection.contract)
    else {
        bail!("{}: not a plugin", path.display());
    };
    let signature_path = signature.or_else(|| {
        let default = PathBuf::from(format!("{}.minisig", path.display()));
        default.exists().then_some(default)
    });
    let (signature, signer) = match &signature_path {
        Some(sig_path) => {
            let text = std::fs::read_to_string(sig_path)
                .with_context(|| format!("reading the signature {}", sig_path.display()))?;
            let parsed = Signature::parse(&text)
                .with_context(|| format!("the signature {}", sig_path.display()))?;
            if keys.is_empty() {
                eprintln!(
                    "note: signature by key {} not checked here (no --trusted-key); agents check it",
                    parsed.key_id
                );
            } else {
                TrustPolicy {
                    trusted: keys,
                    allow_unsigned: false,
                }
                .check(&bytes, Some(&text))
                .with_context(|| format!("checking {}", sig_path.display()))?;
            }
            (Some(text), Some(parsed.key_id))
        }
        None => {
            eprintln!(
                "warning: publishing {} unsigned: agents with trusted keys refuse it (sign it with `fleetmeter plugin sign` or `minisign -S -m FILE`)",
                path.display()
            );
            (None, None)
        }
    };
    let manifest = artifacts::describe(
        &bytes,
        Manifest {
            format: 0,
            name: metadata.name.clone(),
            version: metadata.version.clone(),
            kind: kind.world().to_owned(),
            contract,
            unit: metadata.unit.clone(),
            sha256: String::new(),
            size: 0,
            chunk_bytes: 0,
            chunks: Vec::new(),
            signature,
            signer,
            published_at: now_ms(),
        },
    );
    let digest = manifest.sha256.clone();
    let published = with_client(fleet, |client| async move {
        let published = artifacts::publish(&client, &bytes, &manifest).await?;
        match published {
            Published::Stored {
                transactions,
                bytes,
            } => eprintln!(
                "stored {} {} ({} bytes in {} chunk(s), {bytes} bytes written in {transactions} transaction(s))",
                kind,
                manifest.label(),
                manifest.size,
                manifest.chunks.len()
            ),
            Published::AlreadyThere => eprintln!(
                "{} is already stored (same bytes): nothing written",
                manifest.label()
            ),
        }
        Ok(ExitCode::SUCCESS)
    })
    .await?;
    println!("{}@sha256:{digest}", metadata.name);
    eprintln!(
        "roll it out: fleetmeter plugin rollout {} {}@sha256:{digest}{}",
        kind,
        metadata.name,
        if kind == plugin::PluginKind::Sensor {
            " --canary DEVICE"
        } else {
            ""
        }
    );
    Ok(published)
}

/// What references each artifact: `(digest, what)`.
async fn references(client: &FleetClient) -> Result<Vec<(String, String)>> {
    let mut refs = Vec::new();
    if let Some(read) = store::read_rollout(client).await?
        && let Ok(r) = read.value
    {
        refs.push((
            r.artifact.sha256.clone(),
            format!("rollout {} ({} {})", r.id, r.kind.name(), r.state.name()),
        ));
        if let Some(p) = &r.previous {
            refs.push((
                p.artifact.sha256.clone(),
                format!("rollout {}'s previous {}", r.id, r.kind.name()),
            ));
        }
    }
    for kind in [Kind::Sensor, Kind::Aggregator] {
        if let Some(read) = store::read_assignment(client, kind).await?
            && let Ok(a) = read.value
        {
            refs.push((
                a.artifact.sha256.clone(),
                format!("the fleet's {} since round {}", kind.name(), a.since_round),
            ));
        }
    }
    Ok(refs)
}

async fn list(client: &FleetClient, json: bool) -> Result<ExitCode> {
    let stored = artifacts::list(client).await?;
    let refs = references(client).await?;
    if json {
        let rows: Vec<serde_json::Value> = stored
            .iter()
            .map(|s| {
                let used: Vec<&String> = refs
                    .iter()
                    .filter(|(d, _)| *d == s.sha256)
                    .map(|(_, w)| w)
                    .collect();
                serde_json::json!({"artifact": s, "used_by": used})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if stored.is_empty() {
        println!("no artifacts stored (publish one with `fleetmeter plugin publish FILE`)");
    }
    for s in &stored {
        let used: Vec<&str> = refs
            .iter()
            .filter(|(d, _)| *d == s.sha256)
            .map(|(_, w)| w.as_str())
            .collect();
        let what = match &s.manifest {
            Some(m) => format!(
                "{} {}  {} bytes  signed by {}",
                m.kind,
                one_line_bounded(&m.label(), 100),
                m.size,
                m.signer.as_deref().map_or("nobody", |k| k)
            ),
            None => format!(
                "({})",
                one_line_bounded(s.problem.as_deref().unwrap_or("?"), 200)
            ),
        };
        println!(
            "sha256:{}  {what}  used by: {}",
            s.sha256,
            if used.is_empty() {
                "nothing".to_owned()
            } else {
                used.join("; ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Publications older than this that never finished are deleted by `gc`.
const STALE_MS: i64 = 10 * 60 * 1000;

async fn gc(client: &FleetClient, keep: usize) -> Result<ExitCode> {
    let stored = artifacts::list(client).await?;
    let refs = references(client).await?;
    let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
    let mut unreferenced: Vec<&artifacts::Stored> = stored
        .iter()
        .filter(|s| s.manifest.is_some() && !refs.iter().any(|(d, _)| *d == s.sha256))
        .collect();
    // Newest first; the first `keep` stay.
    unreferenced.sort_by_key(|s| std::cmp::Reverse(s.created_ms));
    let mut removed = 0;
    for s in unreferenced.iter().skip(keep) {
        artifacts::remove(client, &s.sha256).await?;
        println!("removed sha256:{}", s.sha256);
        removed += 1;
    }
    for s in stored
        .iter()
        .filter(|s| s.manifest.is_none() && now - s.created_ms > STALE_MS)
    {
        artifacts::remove(client, &s.sha256).await?;
        println!("removed sha256:{} (never finished)", s.sha256);
        removed += 1;
    }
    eprintln!(
        "{removed} artifact(s) removed; {} stored",
        stored.len() - removed
    );
    Ok(ExitCode::SUCCESS)
}

async fn rollout(command: RolloutCommand) -> Result<ExitCode> {
    match command {
        RolloutCommand::Sensor(args) => {
            let args = &args;
            with_client(&args.fleet, |client| async move {
                start(&client, Kind::Sensor, args).await
            })
            .await
        }
        RolloutCommand::Aggregator(args) => {
            let args = &args;
            with_client(&args.fleet, |client| async move {
                start(&client, Kind::Aggregator, args).await
            })
            .await
        }
        RolloutCommand::Status { fleet, json } => {
            with_client(&fleet, |client| async move { status(&client, json).await }).await
        }
        RolloutCommand::Promote { fleet } => {
            with_client(&fleet, |client| async move {
                decide(&client, State::Promoted, "promoted by an operator".into()).await
            })
            .await
        }
        RolloutCommand::Abort { reason, fleet } => {
            with_client(&fleet, |client| async move {
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

use store::Read;

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
