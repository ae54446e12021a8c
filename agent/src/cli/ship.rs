//! `fleetmeter plugin keygen|sign|publish|list|gc`: signing a plugin and keeping it in the
//! fleet's artifact store (`crate::rollout`); `rollout` is in `super::rollout`.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::{
    FleetArgs,
    engine_args::{EngineArgs, engine, locate},
};
use crate::{
    config::keys,
    coord::FleetClient,
    plugin,
    rollout::{
        artifacts::{self, Manifest, Published},
        record::Kind,
        signing::{self, Signature, TrustPolicy, TrustedKey},
        store,
    },
    text::one_line_bounded,
    wire::now_ms,
};

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
    Rollout(super::rollout::RolloutCommand),
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
            fleet
                .with_client(|client| async move { list(&client, json).await })
                .await
        }
        ShipCommand::Gc { keep, fleet } => {
            fleet
                .with_client(|client| async move { gc(&client, keep).await })
                .await
        }
        ShipCommand::Rollout(command) => super::rollout::run(command).await,
    }
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
    let published = fleet.with_client(|client| async move {
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
