//! The outbox in ZooKeeper: the rounds the leader committed and the API has not accepted
//! yet, the rounds the API refused, and the ledger that bounds both.
//!
//! # Layout (under the fleet's root)
//! - `/results/{n:020}`: a committed round waiting for the API. Its data is the round's JSON
//!   ([`Round`]) when that is at most [`INLINE_MAX`] bytes. A larger round (thousands of
//!   devices with long ids) is written in parts of at most [`PART_SIZE`] bytes to
//!   `/parts/{n:020}-{term}/{k:04}` before the commit, and the entry holds
//!   `{"parts": {"dir", "count", "bytes", "sha256"}}`, so every request, the commit multi
//!   included, stays far below ZooKeeper's 1 MB packet limit (`jute.maxbuffer`). `term` is
//!   the leader's election node: two leaders racing over a round never share parts.
//! - `/rejected/{n:020}`: a round the API refused (a 4xx that retrying cannot fix), or an
//!   entry that cannot be read, with the status, the API's answer and the time
//!   ([`Rejected`]). Only an operator takes it out: `fleetmeter outbox resend|discard`.
//! - `/outbox`: the ledger, `{"rounds": R, "bytes": B}`: the entries in `/results` and
//!   `/rejected` together and the size of their rounds' JSON. Every write that adds or
//!   removes an entry updates it in the same multi, version-checked, so it is exact; a
//!   missing or unreadable ledger is recounted from the entries.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zookeeper_client::{Client, Error as ZkError, MultiReadResult, MultiWriteError, MultiWriter};

use crate::{
    coord::{
        CoordError, FleetClient, NodeAcl,
        access::MarkKey,
        paths::{OUTBOX, PARTS, REJECTED, RESULTS},
    },
    wire::Round,
};

/// The largest round JSON stored in the entry itself.
pub const INLINE_MAX: usize = 256 * 1024;
/// The size of each part of a larger round.
pub const PART_SIZE: usize = 256 * 1024;
/// The longest API answer kept with a refused round.
const MAX_KEPT_ANSWER: usize = 4 * 1024;

/// How many rounds the outbox holds and the size of their JSON; also its bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub rounds: u64,
    pub bytes: u64,
}

impl Ledger {
    /// Whether one more round of `bytes` fits within `max`.
    pub fn fits(&self, bytes: u64, max: &Ledger) -> bool {
        self.rounds < max.rounds && self.bytes.saturating_add(bytes) <= max.bytes
    }

    fn plus(self, bytes: u64) -> Ledger {
        Ledger {
            rounds: self.rounds + 1,
            bytes: self.bytes.saturating_add(bytes),
        }
    }

    fn minus(self, bytes: u64) -> Ledger {
        Ledger {
            rounds: self.rounds.saturating_sub(1),
            bytes: self.bytes.saturating_sub(bytes),
        }
    }
}

/// The ledger and the version of `/outbox` it was read at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerState {
    pub ledger: Ledger,
    version: i32,
}

/// Where a large round's parts are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartsRef {
    /// `/parts/{n:020}-{term}`.
    pub dir: String,
    pub count: u32,
    /// The round's JSON size.
    pub bytes: u64,
    /// SHA-256 of the round's JSON, hex.
    pub sha256: String,
}

/// A large round's entry: where its parts are, and (on a fleet with credentials) the
/// leader's commit mark of the round's digest.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartsEntry {
    parts: PartsRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mark: Option<String>,
}

/// A round stored in its entry with the leader's commit mark (a fleet with credentials);
/// without credentials the entry is the round's JSON itself.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkedEntry {
    mark: String,
    round: Round,
}

/// A round ready to commit: the entry's data, and the parts to write before the commit.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub entry: Vec<u8>,
    pub parts: Vec<(String, Vec<u8>)>,
    /// The round's JSON size (what the ledger counts).
    pub bytes: u64,
}

/// The outbox entry of round `round`. Zero-padded so that a plain sort is round order, like
/// sequential nodes.
pub fn result_path(round: u64) -> String {
    format!("{RESULTS}/{round:020}")
}

pub fn rejected_path(round: u64) -> String {
    format!("{REJECTED}/{round:020}")
}

/// Encodes `round` for the outbox; `term` names the leader's term (its election node).
/// With `mark` (a fleet with credentials) the entry carries the leader's commit mark of the
/// round's digest: entries without a valid one were not written by the fleet, and are set
/// aside instead of sent.
pub fn encode(round: &Round, term: &str, mark: Option<&MarkKey>) -> Encoded {
    let json = serde_json::to_vec(round).expect("a round serializes");
    let bytes = json.len() as u64;
    let digest = Sha256::digest(&json);
    if json.len() <= INLINE_MAX {
        let entry = match mark {
            Some(key) => serde_json::to_vec(&MarkedEntry {
                mark: key.mark(&digest),
                round: round.clone(),
            })
            .expect("a round serializes"),
            None => json,
        };
        return Encoded {
            entry,
            parts: Vec::new(),
            bytes,
        };
    }
    let term = term.rsplit('/').next().unwrap_or(term);
    let dir = format!("{PARTS}/{:020}-{term}", round.round);
    let parts: Vec<(String, Vec<u8>)> = json
        .chunks(PART_SIZE)
        .enumerate()
        .map(|(k, chunk)| (format!("{dir}/{k:04}"), chunk.to_vec()))
        .collect();
    let entry = PartsEntry {
        parts: PartsRef {
            dir,
            count: u32::try_from(parts.len()).expect("a round has few parts"),
            bytes,
            sha256: hex(&digest),
        },
        mark: mark.map(|key| key.mark(&digest)),
    };
    Encoded {
        entry: serde_json::to_vec(&entry).expect("a parts entry serializes"),
        parts,
        bytes,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes an encoded round's parts (overwriting what an earlier try of the same commit
/// wrote).
pub async fn write_parts(client: &FleetClient, encoded: &Encoded) -> Result<(), CoordError> {
    let Some((first, _)) = encoded.parts.first() else {
        return Ok(());
    };
    let dir = first.rsplit_once('/').map_or(PARTS, |(dir, _)| dir);
    mkdir(client, dir).await?;
    for (path, data) in &encoded.parts {
        match client.create(path, data, &client.persistent()).await {
            Ok(_) => {}
            Err(ZkError::NodeExists) => {
                client
                    .set_data(path, data, None)
                    .await
                    .map_err(|e| CoordError::zk("set", path, e))?;
            }
            Err(e) => return Err(CoordError::zk("create", path, e)),
        }
    }
    Ok(())
}

async fn mkdir(client: &FleetClient, dir: &str) -> Result<(), CoordError> {
    match client.mkdir(dir, &client.persistent()).await {
        Ok(()) | Err(ZkError::NodeExists) => Ok(()),
        Err(e) => Err(CoordError::zk("create", dir, e)),
    }
}

/// An entry, read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub round: Round,
    /// The entry as stored (the round's JSON, or the reference to its parts).
    pub data: Vec<u8>,
    /// The round's JSON size.
    pub bytes: u64,
    /// SHA-256 of the round's JSON (what a commit mark covers).
    pub digest: [u8; 32],
    /// Its parts' directory, for a large round.
    pub parts: Option<String>,
}

/// Why an entry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Taken care of meanwhile (published, moved or discarded by another process).
    #[error("gone")]
    Gone,
    /// It will never read: it goes to `/rejected` with the reason.
    #[error("{reason}")]
    Corrupt {
        reason: String,
        data: Vec<u8>,
        parts: Option<String>,
    },
    #[error(transparent)]
    Coord(#[from] CoordError),
}

/// Reads the entry at `path` (in `/results`).
pub async fn load(client: &FleetClient, path: &str) -> Result<Loaded, LoadError> {
    let data = match client.get_data(path).await {
        Ok((data, _)) => data,
        Err(ZkError::NoNode) => return Err(LoadError::Gone),
        Err(e) => return Err(CoordError::zk("read", path, e).into()),
    };
    decode(client, data).await
}

async fn decode(client: &FleetClient, data: Vec<u8>) -> Result<Loaded, LoadError> {
    let (loaded, mark) = decode_unchecked(client, data).await?;
    let Some(key) = client.mark_key() else {
        return Ok(loaded);
    };
    let valid = mark.is_some_and(|mark| key.verify(&loaded.digest, &mark));
    if !valid {
        return Err(LoadError::Corrupt {
            reason: "it has no valid commit mark: not written by this fleet's leader (or written before the fleet had credentials; `fleetmeter outbox resend` vouches for it)".into(),
            parts: loaded.parts,
            data: loaded.data,
        });
    }
    Ok(loaded)
}

/// Reads an entry of any form, with its mark (if any) unchecked.
async fn decode_unchecked(
    client: &FleetClient,
    data: Vec<u8>,
) -> Result<(Loaded, Option<String>), LoadError> {
    if let Ok(PartsEntry { parts, mark }) = serde_json::from_slice::<PartsEntry>(&data) {
        let json = match read_parts(client, &parts).await {
            Ok(json) => json,
            Err(reason) => {
                return Err(LoadError::Corrupt {
                    reason,
                    parts: Some(parts.dir),
                    data,
                });
            }
        };
        return match checked_round(&json) {
            Ok(round) => Ok((
                Loaded {
                    round,
                    bytes: parts.bytes,
                    digest: Sha256::digest(&json).into(),
                    parts: Some(parts.dir),
                    data,
                },
                mark,
            )),
            Err(reason) => Err(LoadError::Corrupt {
                reason: format!("its parts do not hold {reason}"),
                parts: Some(parts.dir),
                data,
            }),
        };
    }
    if let Ok(MarkedEntry { mark, round }) = serde_json::from_slice::<MarkedEntry>(&data) {
        // The digest the leader marked: the round's JSON as it serializes (serde_json's
        // output is the same for the same round).
        let json = serde_json::to_vec(&round).expect("a round serializes");
        return match checked_round(&json) {
            Ok(round) => Ok((
                Loaded {
                    round,
                    bytes: json.len() as u64,
                    digest: Sha256::digest(&json).into(),
                    parts: None,
                    data,
                },
                Some(mark),
            )),
            Err(reason) => Err(LoadError::Corrupt {
                reason: format!("not {reason}"),
                data,
                parts: None,
            }),
        };
    }
    match checked_round(&data) {
        Ok(round) => Ok((
            Loaded {
                // What a mark would cover: the round as it serializes (a record kept in
                // `/rejected` holds it re-serialized, with its keys in another order).
                digest: Sha256::digest(serde_json::to_vec(&round).expect("a round serializes"))
                    .into(),
                round,
                bytes: data.len() as u64,
                parts: None,
                data,
            },
            None,
        )),
        Err(reason) => Err(LoadError::Corrupt {
            reason: format!("not {reason}"),
            data,
            parts: None,
        }),
    }
}

/// A round that parses and passes the wire contract: what the leader commits. Anything else
/// in the outbox was not written by a leader and is never sent.
fn checked_round(json: &[u8]) -> Result<Round, String> {
    let round: Round = serde_json::from_slice(json).map_err(|e| format!("a round: {e}"))?;
    round
        .validate()
        .map_err(|e| format!("a valid round: {e}"))?;
    Ok(round)
}

/// The round's JSON from its parts, checked against the digest; `Err` says what is wrong.
async fn read_parts(client: &Client, parts: &PartsRef) -> Result<Vec<u8>, String> {
    if !parts.dir.starts_with(&format!("{PARTS}/")) || parts.dir[PARTS.len() + 1..].contains('/') {
        return Err(format!(
            "its parts directory {:?} is not under {PARTS}",
            parts.dir
        ));
    }
    if parts.bytes > fleetmeter_wire::MAX_ROUND_JSON as u64 {
        return Err(format!(
            "it claims {} bytes, more than any round",
            parts.bytes
        ));
    }
    let mut json = Vec::with_capacity(parts.bytes as usize);
    for k in 0..parts.count {
        let path = format!("{}/{k:04}", parts.dir);
        match client.get_data(&path).await {
            Ok((data, _)) => json.extend_from_slice(&data),
            Err(e) => return Err(format!("part {path} cannot be read: {e}")),
        }
        if json.len() as u64 > parts.bytes {
            break;
        }
    }
    if json.len() as u64 != parts.bytes || hex(&Sha256::digest(&json)) != parts.sha256 {
        return Err(format!(
            "its parts in {} do not match its size and digest",
            parts.dir
        ));
    }
    Ok(json)
}

/// Deletes a parts directory (best effort: what is left is collected later).
pub async fn delete_parts(client: &Client, dir: &str) {
    if let Ok(children) = client.list_children(dir).await {
        for child in children {
            let _ = client.delete(&format!("{dir}/{child}"), None).await;
        }
    }
    let _ = client.delete(dir, None).await;
}

/// The ledger, recounted from the entries when it is absent or unreadable.
pub async fn ledger(client: &FleetClient) -> Result<LedgerState, CoordError> {
    match client.get_data(OUTBOX).await {
        Ok((data, stat)) => match serde_json::from_slice::<Ledger>(&data) {
            Ok(ledger) => Ok(LedgerState {
                ledger,
                version: stat.version,
            }),
            Err(_) => recount(client).await,
        },
        Err(ZkError::NoNode) => recount(client).await,
        Err(e) => Err(CoordError::zk("read", OUTBOX, e)),
    }
}

/// The ledger as it is stored, without recounting: `None` when there is none.
pub async fn peek_ledger(client: &Client) -> Result<Option<Ledger>, CoordError> {
    match client.get_data(OUTBOX).await {
        Ok((data, _)) => Ok(serde_json::from_slice(&data).ok()),
        Err(ZkError::NoNode) => Ok(None),
        Err(e) => Err(CoordError::zk("read", OUTBOX, e)),
    }
}

/// Counts the entries in `/results` and `/rejected` and writes the ledger.
pub async fn recount(client: &FleetClient) -> Result<LedgerState, CoordError> {
    loop {
        let version = match client.check_stat(OUTBOX).await {
            Ok(stat) => stat.map(|s| s.version),
            Err(e) => return Err(CoordError::zk("stat", OUTBOX, e)),
        };
        let mut ledger = Ledger::default();
        for dir in [RESULTS, REJECTED] {
            for name in children(client, dir).await? {
                let path = format!("{dir}/{name}");
                let Ok((data, _)) = client.get_data(&path).await else {
                    continue;
                };
                ledger = ledger.plus(entry_bytes(dir, &data));
            }
        }
        let data = serde_json::to_vec(&ledger).expect("a ledger serializes");
        let written = match version {
            Some(version) => client
                .set_data(OUTBOX, &data, Some(version))
                .await
                .map(|stat| stat.version),
            None => client
                .create(OUTBOX, &data, &client.persistent())
                .await
                .map(|(stat, _)| stat.version),
        };
        match written {
            Ok(version) => {
                tracing::info!(
                    rounds = ledger.rounds,
                    bytes = ledger.bytes,
                    "outbox ledger recounted"
                );
                return Ok(LedgerState { ledger, version });
            }
            Err(ZkError::BadVersion | ZkError::NodeExists) => continue,
            Err(e) => return Err(CoordError::zk("write", OUTBOX, e)),
        }
    }
}

/// The round JSON size an entry's data stands for (in `/results` or `/rejected`).
fn entry_bytes(dir: &str, data: &[u8]) -> u64 {
    let data = if dir == REJECTED {
        match serde_json::from_slice::<Rejected>(data) {
            Ok(rejected) => return rejected.bytes,
            Err(_) => data,
        }
    } else {
        data
    };
    if let Ok(entry) = serde_json::from_slice::<PartsEntry>(data) {
        return entry.parts.bytes;
    }
    match serde_json::from_slice::<MarkedEntry>(data) {
        Ok(entry) => serde_json::to_vec(&entry.round).map_or(data.len(), |j| j.len()) as u64,
        Err(_) => data.len() as u64,
    }
}

async fn children(client: &Client, dir: &str) -> Result<Vec<String>, CoordError> {
    match client.list_children(dir).await {
        Ok(mut children) => {
            children.sort();
            Ok(children)
        }
        Err(ZkError::NoNode) => Ok(Vec::new()),
        Err(e) => Err(CoordError::zk("list", dir, e)),
    }
}

/// Adds the ledger's update to `new` to a multi (applies only if nobody changed it since
/// `state` was read).
pub fn add_ledger(
    writer: &mut MultiWriter<'_>,
    state: LedgerState,
    new: Ledger,
) -> Result<(), CoordError> {
    writer
        .add_set_data(
            OUTBOX,
            &serde_json::to_vec(&new).expect("a ledger serializes"),
            Some(state.version),
        )
        .map_err(|e| CoordError::zk("set (in multi)", OUTBOX, e))
}

/// Adds the creation of round `round`'s entry and the ledger's update to the commit multi;
/// returns the ledger after the commit.
pub fn add_entry(
    writer: &mut MultiWriter<'_>,
    acl: &NodeAcl,
    round: u64,
    encoded: &Encoded,
    state: LedgerState,
) -> Result<Ledger, CoordError> {
    let path = result_path(round);
    writer
        .add_create(&path, &encoded.entry, &acl.persistent())
        .map_err(|e| CoordError::zk("create (in multi)", &path, e))?;
    let after = state.ledger.plus(encoded.bytes);
    add_ledger(writer, state, after)?;
    Ok(after)
}

/// Whether a multi failed on its operation `index` with BadVersion (someone moved the
/// ledger: read it again and retry).
fn moved(err: &MultiWriteError) -> bool {
    matches!(
        err,
        MultiWriteError::OperationFailed {
            source: ZkError::BadVersion,
            ..
        }
    )
}

/// Removes a delivered entry, and its parts. `Ok` also when another process removed it.
pub async fn remove_delivered(
    client: &FleetClient,
    path: &str,
    loaded: &Loaded,
) -> Result<(), CoordError> {
    loop {
        let state = ledger(client).await?;
        let mut multi = client.new_multi_writer();
        multi
            .add_delete(path, None)
            .map_err(|e| CoordError::zk("delete (in multi)", path, e))?;
        add_ledger(&mut multi, state, state.ledger.minus(loaded.bytes))?;
        match multi.commit().await {
            Ok(_)
            | Err(MultiWriteError::OperationFailed {
                index: 0,
                source: ZkError::NoNode,
            }) => break,
            Err(err) if moved(&err) => continue,
            Err(err) => return Err(CoordError::zk("delete (multi)", path, err.into())),
        }
    }
    if let Some(dir) = &loaded.parts {
        delete_parts(client, dir).await;
    }
    Ok(())
}

/// A round in `/rejected`, and why it is there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// The API's HTTP status; `None` when the entry itself could not be read.
    pub status: Option<u16>,
    /// The API's answer (cut to 4 KiB), or what is wrong with the entry.
    pub answer: String,
    /// When it was refused, ms since the Unix epoch.
    pub at: u64,
    /// The API it was sent to.
    pub api: Option<String>,
    /// The round's JSON size (what the ledger counts).
    pub bytes: u64,
    /// The entry as it was in `/results` (a round, or a reference to its parts).
    pub entry: serde_json::Value,
}

impl Rejected {
    /// `data` is the entry as it was in `/results`; the ledger's size for it is derived
    /// from it, as when the entry was counted in.
    pub fn new(status: Option<u16>, answer: &str, api: Option<&str>, data: &[u8]) -> Self {
        let entry = match serde_json::from_slice(data) {
            Ok(value) if data.len() <= INLINE_MAX => value,
            _ => serde_json::Value::String(format!(
                "(unreadable entry of {} bytes, not kept)",
                data.len()
            )),
        };
        let mut end = answer.len().min(MAX_KEPT_ANSWER);
        while !answer.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            status,
            answer: answer[..end].to_owned(),
            at: crate::wire::now_ms(),
            api: api.map(str::to_owned),
            bytes: entry_bytes(RESULTS, data),
            entry,
        }
    }
}

/// Moves the entry `name` from `/results` to `/rejected` (replacing an older rejection of
/// the same round). `Ok` also when another process moved or removed it first.
pub async fn reject(
    client: &FleetClient,
    name: &str,
    rejected: &Rejected,
) -> Result<(), CoordError> {
    let from = format!("{RESULTS}/{name}");
    let to = format!("{REJECTED}/{name}");
    let data = serde_json::to_vec(rejected).expect("a rejection serializes");
    loop {
        let existing = client
            .check_stat(&to)
            .await
            .map_err(|e| CoordError::zk("stat", &to, e))?;
        let mut multi = client.new_multi_writer();
        let replaced = if existing.is_some() {
            // The older rejection leaves the ledger.
            let old = client
                .get_data(&to)
                .await
                .ok()
                .map(|(d, _)| entry_bytes(REJECTED, &d));
            multi
                .add_set_data(&to, &data, None)
                .map_err(|e| CoordError::zk("set (in multi)", &to, e))?;
            old
        } else {
            multi
                .add_create(&to, &data, &client.persistent())
                .map_err(|e| CoordError::zk("create (in multi)", &to, e))?;
            None
        };
        multi
            .add_delete(&from, None)
            .map_err(|e| CoordError::zk("delete (in multi)", &from, e))?;
        if let Some(old) = replaced {
            let state = ledger(client).await?;
            add_ledger(&mut multi, state, state.ledger.minus(old))?;
        }
        return match multi.commit().await {
            Ok(_) => Ok(()),
            Err(MultiWriteError::OperationFailed {
                index: 0,
                source: ZkError::NoNode,
            }) => {
                // /rejected does not exist yet.
                mkdir(client, REJECTED).await?;
                continue;
            }
            Err(MultiWriteError::OperationFailed {
                index: 0,
                source: ZkError::NodeExists,
            }) => continue,
            Err(MultiWriteError::OperationFailed {
                index: 1,
                source: ZkError::NoNode,
            }) => Ok(()),
            Err(err) if moved(&err) => continue,
            Err(err) => Err(CoordError::zk("move (multi)", &from, err.into())),
        };
    }
}

/// One entry as `fleetmeter outbox list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listed {
    pub round: u64,
    /// `waiting` (for the API) or `rejected`.
    pub state: &'static str,
    pub value: Option<f64>,
    pub count: Option<u32>,
    pub bytes: u64,
    /// For a rejected round: the status (absent when the entry was unreadable), the answer
    /// and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

/// Every entry, waiting ones first, each in round order. Every entry is read (a large round
/// with its parts): at most the outbox's bound.
pub async fn list(client: &FleetClient) -> Result<Vec<Listed>, CoordError> {
    let mut out = Vec::new();
    for name in children(client, RESULTS).await? {
        let Some(round) = parse_name(&name) else {
            continue;
        };
        let path = format!("{RESULTS}/{name}");
        let (value, count, bytes) = match load(client, &path).await {
            Ok(loaded) => (
                Some(loaded.round.value),
                Some(loaded.round.count),
                loaded.bytes,
            ),
            Err(LoadError::Gone) => continue,
            Err(LoadError::Corrupt { data, .. }) => (None, None, data.len() as u64),
            Err(LoadError::Coord(e)) => return Err(e),
        };
        out.push(Listed {
            round,
            state: "waiting",
            value,
            count,
            bytes,
            status: None,
            answer: None,
            at: None,
        });
    }
    for name in children(client, REJECTED).await? {
        let Some(round) = parse_name(&name) else {
            continue;
        };
        let path = format!("{REJECTED}/{name}");
        let Ok((data, _)) = client.get_data(&path).await else {
            continue;
        };
        let rejected: Option<Rejected> = serde_json::from_slice(&data).ok();
        let inline: Option<Round> = rejected.as_ref().and_then(|r| {
            serde_json::from_value(r.entry.clone()).ok().or_else(|| {
                let marked = r.entry.get("round")?;
                serde_json::from_value(marked.clone()).ok()
            })
        });
        out.push(Listed {
            round,
            state: "rejected",
            value: inline.as_ref().map(|r| r.value),
            count: inline.as_ref().map(|r| r.count),
            bytes: rejected.as_ref().map_or(data.len() as u64, |r| r.bytes),
            status: rejected.as_ref().and_then(|r| r.status),
            answer: rejected.as_ref().map(|r| r.answer.clone()),
            at: rejected.as_ref().map(|r| r.at),
        });
    }
    Ok(out)
}

fn parse_name(name: &str) -> Option<u64> {
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// What an operator's command did to one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    Done,
    /// No such rejected round.
    NotFound,
    /// A round with this number waits in `/results` already.
    AlreadyWaiting,
}

/// Puts a rejected round back in the outbox, where the leader sends it again.
pub async fn resend(client: &FleetClient, round: u64) -> Result<Handled, ResendError> {
    let from = rejected_path(round);
    let to = result_path(round);
    let (data, stat) = match client.get_data(&from).await {
        Ok(found) => found,
        Err(ZkError::NoNode) => return Ok(Handled::NotFound),
        Err(e) => return Err(CoordError::zk("read", &from, e).into()),
    };
    let rejected: Rejected = serde_json::from_slice(&data)
        .map_err(|e| ResendError::Unreadable(format!("not a rejection record: {e}")))?;
    let entry = serde_json::to_vec(&rejected.entry).expect("a JSON value serializes");
    let (loaded, _) = decode_unchecked(client, entry).await.map_err(|e| match e {
        LoadError::Coord(e) => ResendError::Coord(e),
        other => ResendError::Unreadable(other.to_string()),
    })?;
    // The operator vouches for the round: on a fleet with credentials it gets a fresh mark
    // (it may have been set aside for lacking one).
    let entry = vouch(client, &loaded);
    let mut multi = client.new_multi_writer();
    multi
        .add_create(&to, &entry, &client.persistent())
        .map_err(|e| CoordError::zk("create (in multi)", &to, e))?;
    multi
        .add_delete(&from, Some(stat.version))
        .map_err(|e| CoordError::zk("delete (in multi)", &from, e))?;
    match multi.commit().await {
        Ok(_) => Ok(Handled::Done),
        Err(MultiWriteError::OperationFailed {
            index: 0,
            source: ZkError::NodeExists,
        }) => Ok(Handled::AlreadyWaiting),
        Err(MultiWriteError::OperationFailed { index: 1, .. }) => Ok(Handled::NotFound),
        Err(err) => Err(CoordError::zk("move (multi)", &from, err.into()).into()),
    }
}

/// The entry for `loaded`, marked with the fleet's key when it has one.
fn vouch(client: &FleetClient, loaded: &Loaded) -> Vec<u8> {
    let Some(key) = client.mark_key() else {
        return loaded.data.clone();
    };
    let mark = key.mark(&loaded.digest);
    match serde_json::from_slice::<PartsEntry>(&loaded.data) {
        Ok(PartsEntry { parts, .. }) => serde_json::to_vec(&PartsEntry {
            parts,
            mark: Some(mark),
        })
        .expect("a parts entry serializes"),
        Err(_) => serde_json::to_vec(&MarkedEntry {
            mark,
            round: loaded.round.clone(),
        })
        .expect("a round serializes"),
    }
}

/// Why a rejected round cannot be sent again.
#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    #[error("its entry cannot be read ({0}); discard it")]
    Unreadable(String),
    #[error(transparent)]
    Coord(#[from] CoordError),
}

/// Deletes a rejected round for good.
pub async fn discard(client: &FleetClient, round: u64) -> Result<Handled, CoordError> {
    let path = rejected_path(round);
    loop {
        let (data, stat) = match client.get_data(&path).await {
            Ok(found) => found,
            Err(ZkError::NoNode) => return Ok(Handled::NotFound),
            Err(e) => return Err(CoordError::zk("read", &path, e)),
        };
        let state = ledger(client).await?;
        let mut multi = client.new_multi_writer();
        multi
            .add_delete(&path, Some(stat.version))
            .map_err(|e| CoordError::zk("delete (in multi)", &path, e))?;
        add_ledger(
            &mut multi,
            state,
            state.ledger.minus(entry_bytes(REJECTED, &data)),
        )?;
        match multi.commit().await {
            Ok(_) => {}
            Err(MultiWriteError::OperationFailed {
                index: 0,
                source: ZkError::NoNode,
            }) => return Ok(Handled::NotFound),
            Err(err) if moved(&err) => continue,
            Err(err) => return Err(CoordError::zk("delete (multi)", &path, err.into())),
        }
        if let Ok(rejected) = serde_json::from_slice::<Rejected>(&data)
            && let Ok(PartsEntry { parts, .. }) = serde_json::from_value(rejected.entry)
        {
            delete_parts(client, &parts.dir).await;
        }
        return Ok(Handled::Done);
    }
}

/// Rejected rounds' numbers.
pub async fn rejected_rounds(client: &Client) -> Result<Vec<u64>, CoordError> {
    Ok(children(client, REJECTED)
        .await?
        .iter()
        .filter_map(|n| parse_name(n))
        .collect())
}

/// The highest round number in `/results` or `/rejected`, if any.
pub async fn highest_round(client: &FleetClient) -> Result<Option<u64>, CoordError> {
    // Waiting entries: the highest that reads as the fleet's (a forged one, not yet set
    // aside, does not count).
    let mut waiting: Vec<u64> = children(client, RESULTS)
        .await?
        .iter()
        .filter_map(|n| parse_name(n))
        .collect();
    waiting.sort_unstable_by(|a, b| b.cmp(a));
    let mut highest = None;
    for round in waiting {
        match load(client, &result_path(round)).await {
            Ok(_) => {
                highest = Some(round);
                break;
            }
            Err(LoadError::Gone | LoadError::Corrupt { .. }) => {}
            Err(LoadError::Coord(e)) => return Err(e),
        }
    }
    // Refused entries: only those the API refused (it saw them: the fleet's); entries set
    // aside unread (`status` none: unreadable, invalid, no valid mark) do not count.
    let mut refused: Vec<u64> = children(client, REJECTED)
        .await?
        .iter()
        .filter_map(|n| parse_name(n))
        .collect();
    refused.sort_unstable_by(|a, b| b.cmp(a));
    for round in refused {
        let path = rejected_path(round);
        let Ok((data, _)) = client.get_data(&path).await else {
            continue;
        };
        if serde_json::from_slice::<Rejected>(&data).is_ok_and(|r| r.status.is_some()) {
            highest = highest.max(Some(round));
            break;
        }
    }
    Ok(highest)
}

/// Deletes parts directories no entry refers to: those of rounds before the current one (a
/// commit needs its round open, so none can refer to them any more) that neither `/results`
/// nor `/rejected` names, read in one multi-read so that a concurrent move between the two is
/// seen. Reads the round only when there are parts at all.
pub async fn collect_garbage(client: &FleetClient) -> Result<usize, CoordError> {
    let dirs = children(client, PARTS).await?;
    if dirs.is_empty() {
        return Ok(0);
    }
    let Some(current) = crate::coord::barrier::current(client)
        .await?
        .map(|s| s.round)
    else {
        return Ok(0);
    };
    let mut deleted = 0;
    for dir in dirs {
        let Some(round) = dir.get(..20).and_then(parse_name) else {
            continue;
        };
        if round >= current {
            continue;
        }
        let full = format!("{PARTS}/{dir}");
        let mut reader = client.new_multi_reader();
        for path in [result_path(round), rejected_path(round)] {
            reader
                .add_get_data(&path)
                .map_err(|e| CoordError::zk("read (in multi)", &path, e))?;
        }
        let results = reader
            .commit()
            .await
            .map_err(|e| CoordError::zk("read (multi)", &full, e))?;
        let referenced = results.into_iter().any(|result| match result {
            MultiReadResult::Data { data, .. } => {
                let data = serde_json::from_slice::<Rejected>(&data)
                    .ok()
                    .and_then(|r| serde_json::to_vec(&r.entry).ok())
                    .unwrap_or(data);
                serde_json::from_slice::<PartsEntry>(&data).is_ok_and(|e| e.parts.dir == full)
            }
            _ => false,
        });
        if !referenced {
            delete_parts(client, &full).await;
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(devices: usize, id_len: usize) -> Round {
        let count = devices;
        let devices: Vec<String> = (0..devices)
            .map(|i| format!("{i:0width$}", width = id_len))
            .collect();
        Round {
            round: 42,
            value: 1.5,
            count: devices.len() as u32,
            devices,
            aggregator: "mean@0.1.0".into(),
            leader: "0".into(),
            ts: 1,
            unit: None,
            counter: Some(3),
            version: crate::wire::VERSION,
            values: Some(vec![-1.7976931348623157e308; count]),
        }
    }

    #[test]
    fn a_small_round_is_stored_inline() {
        let encoded = encode(&round(3, 1), "/election/x__lock__0000000001", None);
        assert!(encoded.parts.is_empty());
        assert_eq!(
            serde_json::from_slice::<Round>(&encoded.entry).unwrap(),
            round(3, 1)
        );
        assert_eq!(encoded.bytes, encoded.entry.len() as u64);
    }

    #[test]
    fn the_largest_fleet_is_cut_into_parts_each_far_below_the_packet_limit() {
        let big = round(fleetmeter_wire::MAX_DEVICES, fleetmeter_wire::MAX_ID_BYTES);
        let encoded = encode(&big, "/election/x__lock__0000000001", None);
        assert!(encoded.bytes > 1_000_000, "{} bytes", encoded.bytes);
        assert!(encoded.entry.len() < 1024);
        assert_eq!(
            encoded.parts.len(),
            (encoded.bytes as usize).div_ceil(PART_SIZE)
        );
        assert!(encoded.parts.iter().all(|(_, p)| p.len() <= PART_SIZE));
        assert!(
            encoded.parts[0]
                .0
                .starts_with("/parts/00000000000000000042-x__lock__0000000001/"),
            "{}",
            encoded.parts[0].0
        );
        let joined: Vec<u8> = encoded.parts.iter().flat_map(|(_, p)| p.clone()).collect();
        assert_eq!(serde_json::from_slice::<Round>(&joined).unwrap(), big);
    }

    #[test]
    fn the_ledger_bounds_rounds_and_bytes() {
        let max = Ledger {
            rounds: 2,
            bytes: 100,
        };
        assert!(Ledger::default().fits(100, &max));
        assert!(!Ledger::default().fits(101, &max));
        assert!(
            !Ledger {
                rounds: 2,
                bytes: 0
            }
            .fits(1, &max)
        );
        assert_eq!(Ledger::default().plus(10).minus(10), Ledger::default());
        assert_eq!(
            Ledger::default().minus(10),
            Ledger::default(),
            "never below zero"
        );
    }

    #[test]
    fn a_kept_answer_is_cut_on_a_character_boundary() {
        let answer = "é".repeat(MAX_KEPT_ANSWER);
        let rejected = Rejected::new(Some(409), &answer, None, b"{}");
        assert!(rejected.answer.len() <= MAX_KEPT_ANSWER);
        assert_eq!(
            Rejected::new(None, "x", None, b"\xff").entry,
            serde_json::Value::String("(unreadable entry of 1 bytes, not kept)".into())
        );
    }

    #[test]
    fn only_outbox_names_parse() {
        assert_eq!(parse_name("00000000000000000042"), Some(42));
        assert_eq!(parse_name("42"), None);
        assert_eq!(parse_name("0000000000000000004x"), None);
    }
}
