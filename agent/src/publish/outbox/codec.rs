//! The three forms an outbox entry's data takes, and the sizes the ledger counts.
//!
//! - a round's JSON itself (a fleet without a secret);
//! - `{"mark", "round"}`: the round with the leader's commit mark ([`super::mark`]);
//! - `{"parts": {"dir", "count", "bytes", "sha256"}, "mark"?}`: a round larger than
//!   [`INLINE_MAX`], whose JSON is in parts of at most [`PART_SIZE`] bytes under `/parts`.
//!
//! And the record of a round set aside in `/rejected` ([`Rejected`]).
//!
//! Pure: encoding and parsing only; reading parts from ZooKeeper is the store's.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::mark::MarkKey;
use crate::{
    coord::paths::{PARTS, REJECTED, RESULTS},
    wire::Round,
};

/// The longest API answer kept with a refused round.
const MAX_KEPT_ANSWER: usize = 4 * 1024;

/// The largest round JSON stored in the entry itself.
pub const INLINE_MAX: usize = 256 * 1024;
/// The size of each part of a larger round.
pub const PART_SIZE: usize = 256 * 1024;

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
pub(super) struct PartsEntry {
    pub(super) parts: PartsRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mark: Option<String>,
}

/// A round stored in its entry with the leader's commit mark (a fleet with credentials);
/// without credentials the entry is the round's JSON itself.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MarkedEntry {
    pub(super) mark: String,
    pub(super) round: Round,
}

/// A round ready to commit: the entry's data, and the parts to write before the commit.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    pub entry: Vec<u8>,
    pub parts: Vec<(String, Vec<u8>)>,
    /// The round's JSON size (what the ledger counts).
    pub bytes: u64,
}

/// Encodes `round` for the outbox; `term` names the leader's term (its election node).
/// With `mark` (a fleet with a secret) the entry carries the leader's commit mark of the
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
            sha256: hex::encode(digest),
        },
        mark: mark.map(|key| key.mark(&digest)),
    };
    Encoded {
        entry: serde_json::to_vec(&entry).expect("a parts entry serializes"),
        parts,
        bytes,
    }
}

/// An entry's data as parsed, before any part is read or any mark checked.
pub(super) enum Parsed {
    Parts {
        parts: PartsRef,
        mark: Option<String>,
    },
    Marked {
        mark: String,
        /// Boxed: a round is far larger than the other variants.
        round: Box<Round>,
    },
    /// Anything else: the round's JSON, if it is one.
    Plain,
}

pub(super) fn parse(data: &[u8]) -> Parsed {
    if let Ok(PartsEntry { parts, mark }) = serde_json::from_slice::<PartsEntry>(data) {
        return Parsed::Parts { parts, mark };
    }
    if let Ok(MarkedEntry { mark, round }) = serde_json::from_slice::<MarkedEntry>(data) {
        return Parsed::Marked {
            mark,
            round: Box::new(round),
        };
    }
    Parsed::Plain
}

/// The contract version a round's JSON declares (1 when it says none), read without the rest
/// of the contract: a newer agent's round may hold fields this one does not know. `None`
/// when it is not a JSON object with a `round`.
pub(super) fn declared_version(json: &[u8]) -> Option<u32> {
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    version_of(&value)
}

fn version_of(round: &serde_json::Value) -> Option<u32> {
    let object = round.as_object()?;
    object.get("round")?;
    let version = match object.get("version") {
        None => 1,
        Some(v) => v.as_u64()?,
    };
    Some(u32::try_from(version).unwrap_or(u32::MAX))
}

/// The contract version the entry `data` (a round, or a marked round) declares, and its
/// round number; see [`declared_version`].
pub(super) fn declared_entry_version(data: &[u8]) -> Option<(u32, Option<u64>)> {
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    let round = match value.get("round") {
        Some(inner @ serde_json::Value::Object(_)) if value.get("mark").is_some() => inner,
        _ => &value,
    };
    let version = version_of(round)?;
    let number = round.get("round").and_then(serde_json::Value::as_u64);
    Some((version, number))
}

/// A round that parses and passes the wire contract: what the leader commits. Anything else
/// in the outbox was not written by a leader and is never sent.
pub(super) fn checked_round(json: &[u8]) -> Result<Round, String> {
    let round: Round = serde_json::from_slice(json).map_err(|e| format!("a round: {e}"))?;
    round
        .validate()
        .map_err(|e| format!("a valid round: {e}"))?;
    Ok(round)
}

/// The digest a commit mark covers: SHA-256 of the round's JSON as it serializes
/// (serde_json's output is the same for the same round).
pub(super) fn digest_of(round: &Round) -> [u8; 32] {
    Sha256::digest(serde_json::to_vec(round).expect("a round serializes")).into()
}

/// The entry `data` re-marked with `key`: what an operator's resend puts back.
pub(super) fn remark(data: &[u8], round: &Round, digest: &[u8; 32], key: &MarkKey) -> Vec<u8> {
    let mark = key.mark(digest);
    match serde_json::from_slice::<PartsEntry>(data) {
        Ok(PartsEntry { parts, .. }) => serde_json::to_vec(&PartsEntry {
            parts,
            mark: Some(mark),
        })
        .expect("a parts entry serializes"),
        Err(_) => serde_json::to_vec(&MarkedEntry {
            mark,
            round: round.clone(),
        })
        .expect("a round serializes"),
    }
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

/// The parts directory an entry (as kept in a rejection record) refers to, if any.
pub(super) fn parts_dir(entry: &serde_json::Value) -> Option<String> {
    PartsEntry::deserialize(entry).ok().map(|e| e.parts.dir)
}

/// The parts directory an entry's data refers to, if any.
pub(super) fn parts_dir_of(data: &[u8]) -> Option<String> {
    serde_json::from_slice::<PartsEntry>(data)
        .ok()
        .map(|e| e.parts.dir)
}

/// The round JSON size an entry's data stands for (in `/results` or `/rejected`).
pub(super) fn entry_bytes(dir: &str, data: &[u8]) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_round_is_recognised_by_its_declared_version_alone() {
        // A round of the next version with a field this version does not know, plain and
        // marked.
        let newer = br#"{"round":9,"value":1,"count":1,"devices":["1"],"aggregator":"a","leader":"1","ts":1,"version":4,"quantities":{}}"#;
        assert_eq!(declared_entry_version(newer), Some((4, Some(9))));
        let marked = format!(
            r#"{{"mark":"m","round":{}}}"#,
            std::str::from_utf8(newer).unwrap()
        );
        assert_eq!(
            declared_entry_version(marked.as_bytes()),
            Some((4, Some(9)))
        );
        // No `version`: 1. Not a round: nothing.
        assert_eq!(
            declared_entry_version(br#"{"round":4,"value":1}"#),
            Some((1, Some(4)))
        );
        assert_eq!(declared_entry_version(b"[1,2]"), None);
        assert_eq!(declared_entry_version(br#"{"parts":{}}"#), None);
    }

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
            shadow: None,
            rollout: None,
            quantities: None,
        }
        .one_quantity("t")
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
    fn a_marked_entry_counts_its_rounds_json() {
        let key = MarkKey::from_token("t");
        let small = round(3, 1);
        let encoded = encode(&small, "/election/x__lock__0000000001", Some(&key));
        let Parsed::Marked { mark, round } = parse(&encoded.entry) else {
            panic!("not a marked entry");
        };
        assert!(key.verify(&digest_of(&round), &mark));
        assert_eq!(entry_bytes(RESULTS, &encoded.entry), encoded.bytes);
    }
}
