//! The artifact store in the fleet's own ZooKeeper: plugin components, content-addressed.
//!
//! ```text
//! {root}/artifacts/sha256-HEX         data: the manifest (JSON), empty until complete
//! {root}/artifacts/sha256-HEX/c0000   the first CHUNK_BYTES of the component
//! {root}/artifacts/sha256-HEX/c0001   ...
//! ```
//!
//! Every node has the root's ACL. An artifact exists for readers once its node holds a
//! manifest: the manifest is written by the same transaction as the last chunks, so a
//! reader never sees a manifest whose chunks are not all there. A plugin up to
//! [`TXN_BYTES`] (every bundled plugin) is written in one transaction; a larger one in
//! several, the manifest last, and what a failed publication wrote is deleted (what a
//! crashed one left, `fleetmeter plugin gc` deletes).
//!
//! Nothing read here is trusted: the manifest's digest must be the node's name, the
//! chunk list must be complete and each chunk must match its digest in the manifest, the
//! whole must match the name's digest, and an artifact larger than the reader's bound is
//! refused before any chunk is read.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zookeeper_client::Error as ZkError;

use crate::coord::{
    CoordError, FleetClient,
    paths::ARTIFACTS,
    txn::{Label, Txn, TxnError},
};

/// Bytes per chunk node: well under ZooKeeper's default packet limit (`jute.maxbuffer`,
/// 1 MiB), which bounds a node's data and a whole transaction.
pub const CHUNK_BYTES: usize = 128 * 1024;
/// Chunk bytes per transaction (with the manifest and the operations' own bytes, still
/// under the packet limit).
pub const TXN_BYTES: usize = 6 * CHUNK_BYTES;
/// The largest artifact the store takes, whatever an agent's own bound: every byte lives
/// in each ZooKeeper server's memory and snapshots, and every device fetches it.
pub const MAX_ARTIFACT_BYTES: u64 = 16 << 20;
/// The largest manifest read.
const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// The manifest format written here.
const FORMAT: u32 = 1;

/// What an artifact is, as its publisher checked it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// The plugin's metadata name and version.
    pub name: String,
    pub version: String,
    /// `sensor` or `aggregator`.
    pub kind: String,
    /// The WIT contract version it was built for.
    pub contract: String,
    #[serde(default)]
    pub unit: String,
    /// Hex SHA-256 of the component: also the node's name.
    pub sha256: String,
    pub size: u64,
    pub chunk_bytes: u32,
    /// Hex SHA-256 of each chunk, in order.
    pub chunks: Vec<String>,
    /// The minisign signature (the `.minisig` file's text), when published with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The key id the signature names (unchecked here: agents check it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// When it was published, ms since the Unix epoch.
    pub published_at: u64,
}

impl Manifest {
    /// `NAME@VERSION`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Why an artifact is refused.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{0:?} is not a sha256 digest (64 lower-case hex digits, as `sha256:HEX`)")]
    BadDigest(String),
    #[error("no artifact sha256:{0} in the fleet's store (see `fleetmeter plugin list`)")]
    Unknown(String),
    #[error("artifact sha256:{digest} is incomplete (its publication did not finish)")]
    Incomplete { digest: String },
    #[error("artifact sha256:{digest}: its manifest is not valid: {problem}")]
    BadManifest { digest: String, problem: String },
    #[error(
        "artifact sha256:{digest} is {size} bytes, more than this agent fetches ({max} bytes, [plugins] max_artifact_mib)"
    )]
    TooLarge { digest: String, size: u64, max: u64 },
    #[error("artifact sha256:{digest}: chunk {index} {problem}")]
    BadChunk {
        digest: String,
        index: usize,
        problem: String,
    },
    #[error("artifact sha256:{digest}: the assembled bytes hash to sha256:{found}")]
    DigestMismatch { digest: String, found: String },
    #[error(transparent)]
    Coord(#[from] CoordError),
}

impl ArtifactError {
    /// The metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            ArtifactError::BadDigest(_) => "bad_digest",
            ArtifactError::Unknown(_) => "unknown",
            ArtifactError::Incomplete { .. } => "incomplete",
            ArtifactError::BadManifest { .. } => "bad_manifest",
            ArtifactError::TooLarge { .. } => "too_large",
            ArtifactError::BadChunk { .. } => "bad_chunk",
            ArtifactError::DigestMismatch { .. } => "digest_mismatch",
            ArtifactError::Coord(_) => "zookeeper",
        }
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A digest from `sha256:HEX` or `HEX`, checked.
pub fn parse_digest(raw: &str) -> Result<String, ArtifactError> {
    let hex = raw.trim().strip_prefix("sha256:").unwrap_or(raw.trim());
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(hex.to_owned())
    } else {
        Err(ArtifactError::BadDigest(crate::text::one_line_bounded(
            raw, 80,
        )))
    }
}

pub fn node(digest: &str) -> String {
    format!("{ARTIFACTS}/sha256-{digest}")
}

fn chunk_node(digest: &str, index: usize) -> String {
    format!("{}/c{index:04}", node(digest))
}

/// A manifest for `bytes` (its chunk digests and size filled in).
pub fn describe(bytes: &[u8], mut manifest: Manifest) -> Manifest {
    manifest.format = FORMAT;
    manifest.sha256 = sha256_hex(bytes);
    manifest.size = bytes.len() as u64;
    manifest.chunk_bytes = CHUNK_BYTES as u32;
    manifest.chunks = bytes.chunks(CHUNK_BYTES).map(sha256_hex).collect();
    manifest
}

/// What a publication did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Stored {
        transactions: usize,
        bytes: u64,
    },
    /// The same bytes were already stored: nothing written.
    AlreadyThere,
}

/// Stores `bytes` with `manifest` (from [`describe`]). Publishing the same bytes twice is a
/// no-op. A publication that fails deletes what it wrote.
pub async fn publish(
    client: &FleetClient,
    bytes: &[u8],
    manifest: &Manifest,
) -> Result<Published, ArtifactError> {
    let digest = &manifest.sha256;
    if bytes.len() as u64 > MAX_ARTIFACT_BYTES {
        return Err(ArtifactError::TooLarge {
            digest: digest.clone(),
            size: bytes.len() as u64,
            max: MAX_ARTIFACT_BYTES,
        });
    }
    let path = node(digest);
    match client.get_data(&path).await {
        Ok((data, _)) if !data.is_empty() => return Ok(Published::AlreadyThere),
        // An earlier publication that did not finish: start again.
        Ok(_) => remove(client, digest).await?,
        Err(ZkError::NoNode) => {}
        Err(e) => return Err(CoordError::zk("get", &path, e).into()),
    }
    client
        .mkdir(ARTIFACTS, &client.persistent())
        .await
        .map_err(|e| CoordError::zk("create", ARTIFACTS, e))?;
    let data = serde_json::to_vec(manifest).expect("a manifest serializes");
    let acl = client.acl().clone();
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
    let per_txn = TXN_BYTES / CHUNK_BYTES;
    let batches: Vec<&[&[u8]]> = chunks.chunks(per_txn).collect();
    let mut written = 0;
    let mut transactions = 0;
    for (b, batch) in batches.iter().enumerate() {
        let mut txn = Txn::new("publish an artifact (multi)", path.clone());
        if b == 0 {
            txn.create(Label::Artifact, &path, b"", &acl);
        }
        for (i, chunk) in batch.iter().enumerate() {
            txn.create(Label::Chunk, &chunk_node(digest, written + i), chunk, &acl);
        }
        if b + 1 == batches.len() {
            txn.set(Label::Artifact, &path, &data, Some(0));
        }
        let done = txn.commit(client).await;
        match done {
            Ok(()) => {}
            Err(err) if b == 0 && err.is_at(Label::Artifact, &ZkError::NodeExists) => {
                // Someone published the same bytes at the same moment.
                return Ok(Published::AlreadyThere);
            }
            Err(err) => {
                if b > 0 {
                    let _ = remove(client, digest).await;
                }
                return Err(txn_error(err).into());
            }
        }
        written += batch.len();
        transactions += 1;
    }
    Ok(Published::Stored {
        transactions,
        bytes: bytes.len() as u64 + data.len() as u64,
    })
}

fn txn_error(err: TxnError) -> CoordError {
    err.into_coord()
}

/// Deletes an artifact's chunks and node (absent parts are fine).
pub async fn remove(client: &FleetClient, digest: &str) -> Result<(), CoordError> {
    let path = node(digest);
    let children = match client.list_children(&path).await {
        Ok(children) => children,
        Err(ZkError::NoNode) => return Ok(()),
        Err(e) => return Err(CoordError::zk("list", &path, e)),
    };
    for child in children {
        let child = format!("{path}/{child}");
        match client.delete(&child, None).await {
            Ok(()) | Err(ZkError::NoNode) => {}
            Err(e) => return Err(CoordError::zk("delete", &child, e)),
        }
    }
    match client.delete(&path, None).await {
        Ok(()) | Err(ZkError::NoNode) => Ok(()),
        Err(e) => Err(CoordError::zk("delete", &path, e)),
    }
}

/// The manifest of artifact `digest`, checked against its name (`None`: absent).
pub async fn manifest(
    client: &FleetClient,
    digest: &str,
) -> Result<Option<Manifest>, ArtifactError> {
    let path = node(digest);
    let data = match client.get_data(&path).await {
        Ok((data, _)) => data,
        Err(ZkError::NoNode) => return Ok(None),
        Err(e) => return Err(CoordError::zk("get", &path, e).into()),
    };
    if data.is_empty() {
        return Err(ArtifactError::Incomplete {
            digest: digest.to_owned(),
        });
    }
    parse_manifest(digest, &data).map(Some)
}

fn parse_manifest(digest: &str, data: &[u8]) -> Result<Manifest, ArtifactError> {
    let bad = |problem: String| ArtifactError::BadManifest {
        digest: digest.to_owned(),
        problem,
    };
    if data.len() > MAX_MANIFEST_BYTES {
        return Err(bad(format!("{} bytes", data.len())));
    }
    let manifest: Manifest = serde_json::from_slice(data)
        .map_err(|e| bad(crate::text::one_line_bounded(&e.to_string(), 200)))?;
    if manifest.format != FORMAT {
        return Err(bad(format!(
            "format {} (this agent reads {FORMAT})",
            manifest.format
        )));
    }
    if let Err(problem) = crate::plugin::check_label(&manifest.name, &manifest.version) {
        return Err(bad(problem));
    }
    if !matches!(manifest.kind.as_str(), "sensor" | "aggregator") {
        return Err(bad(format!(
            "kind {:?}",
            crate::text::one_line_bounded(&manifest.kind, 40)
        )));
    }
    if manifest.unit.chars().count() > crate::plugin::MAX_UNIT_CHARS
        || manifest.unit.chars().any(char::is_control)
        || manifest.contract.len() > 32
        || manifest
            .signature
            .as_ref()
            .is_some_and(|s| s.len() > crate::rollout::signing::MAX_SIGNATURE_BYTES)
        || manifest.signer.as_ref().is_some_and(|s| s.len() > 32)
    {
        return Err(bad("a field is out of bounds".into()));
    }
    if manifest.sha256 != digest {
        return Err(bad(format!(
            "it names sha256:{} (altered, or copied from another artifact)",
            crate::text::one_line_bounded(&manifest.sha256, 80)
        )));
    }
    let chunk = u64::from(manifest.chunk_bytes);
    if !(1024..=512 * 1024).contains(&chunk) {
        return Err(bad(format!("chunk_bytes {chunk}")));
    }
    let expected = manifest.size.div_ceil(chunk);
    if manifest.chunks.len() as u64 != expected {
        return Err(bad(format!(
            "{} chunk digests for {} bytes in chunks of {chunk} ({expected} expected)",
            manifest.chunks.len(),
            manifest.size
        )));
    }
    Ok(manifest)
}

/// Fetches artifact `digest` and checks every byte of it; refuses one larger than `max`
/// before reading any chunk.
pub async fn fetch(
    client: &FleetClient,
    digest: &str,
    max: u64,
) -> Result<(Manifest, Vec<u8>), ArtifactError> {
    let manifest = manifest(client, digest)
        .await?
        .ok_or_else(|| ArtifactError::Unknown(digest.to_owned()))?;
    if manifest.size > max.min(MAX_ARTIFACT_BYTES) {
        return Err(ArtifactError::TooLarge {
            digest: digest.to_owned(),
            size: manifest.size,
            max: max.min(MAX_ARTIFACT_BYTES),
        });
    }
    let path = node(digest);
    let mut children = client
        .list_children(&path)
        .await
        .map_err(|e| CoordError::zk("list", &path, e))?;
    children.sort();
    let expected: Vec<String> = (0..manifest.chunks.len())
        .map(|i| format!("c{i:04}"))
        .collect();
    if children != expected {
        return Err(ArtifactError::BadChunk {
            digest: digest.to_owned(),
            index: children
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(children.len().min(expected.len())),
            problem: format!(
                "list is not the manifest's: {} chunk nodes for {} chunks",
                children.len(),
                expected.len()
            ),
        });
    }
    let size = usize::try_from(manifest.size).unwrap_or(usize::MAX);
    let mut bytes = Vec::with_capacity(size);
    let chunk_bytes = manifest.chunk_bytes as usize;
    for (index, want) in manifest.chunks.iter().enumerate() {
        let at = chunk_node(digest, index);
        let (data, _) = client
            .get_data(&at)
            .await
            .map_err(|e| CoordError::zk("get", &at, e))?;
        let bad = |problem: String| ArtifactError::BadChunk {
            digest: digest.to_owned(),
            index,
            problem,
        };
        let expected_len = chunk_bytes.min(size - bytes.len());
        if data.len() != expected_len {
            return Err(bad(format!(
                "is {} bytes, {expected_len} expected (truncated or padded)",
                data.len()
            )));
        }
        if &sha256_hex(&data) != want {
            return Err(bad(
                "does not match its digest in the manifest (altered)".into()
            ));
        }
        bytes.extend_from_slice(&data);
    }
    let found = sha256_hex(&bytes);
    if found != digest {
        return Err(ArtifactError::DigestMismatch {
            digest: digest.to_owned(),
            found,
        });
    }
    Ok((manifest, bytes))
}

/// One stored artifact, as `plugin list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Stored {
    pub sha256: String,
    /// `None`: incomplete or unreadable (`problem` says which).
    pub manifest: Option<Manifest>,
    pub problem: Option<String>,
    /// When its node was created, ms since the Unix epoch.
    pub created_ms: i64,
}

/// Every artifact under `{root}/artifacts`, oldest first.
pub async fn list(client: &FleetClient) -> Result<Vec<Stored>, CoordError> {
    let names = match client.list_children(ARTIFACTS).await {
        Ok(names) => names,
        Err(ZkError::NoNode) => return Ok(Vec::new()),
        Err(e) => return Err(CoordError::zk("list", ARTIFACTS, e)),
    };
    let mut stored = Vec::new();
    for name in names {
        let Some(digest) = name.strip_prefix("sha256-") else {
            continue;
        };
        let path = node(digest);
        let (data, stat) = match client.get_data(&path).await {
            Ok(found) => found,
            Err(ZkError::NoNode) => continue,
            Err(e) => return Err(CoordError::zk("get", &path, e)),
        };
        let (manifest, problem) = if data.is_empty() {
            (None, Some("incomplete".to_owned()))
        } else {
            match parse_manifest(digest, &data) {
                Ok(m) => (Some(m), None),
                Err(e) => (None, Some(e.to_string())),
            }
        };
        stored.push(Stored {
            sha256: digest.to_owned(),
            manifest,
            problem,
            created_ms: stat.ctime,
        });
    }
    stored.sort_by_key(|s| s.created_ms);
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked() {
        let d = "a".repeat(64);
        assert_eq!(parse_digest(&format!("sha256:{d}")).unwrap(), d);
        assert_eq!(parse_digest(&d).unwrap(), d);
        assert!(parse_digest("sha256:ABC").is_err());
        assert!(parse_digest(&"A".repeat(64)).is_err());
        assert!(parse_digest(&format!("{d}/../x")).is_err());
    }

    fn sample() -> (Vec<u8>, Manifest) {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let manifest = describe(
            &bytes,
            Manifest {
                format: 0,
                name: "x".into(),
                version: "1".into(),
                kind: "sensor".into(),
                contract: "0.1.0".into(),
                unit: String::new(),
                sha256: String::new(),
                size: 0,
                chunk_bytes: 0,
                chunks: vec![],
                signature: None,
                signer: None,
                published_at: 1,
            },
        );
        (bytes, manifest)
    }

    #[test]
    fn manifests_are_checked_against_their_name() {
        let (bytes, manifest) = sample();
        assert_eq!(manifest.chunks.len(), 3);
        let data = serde_json::to_vec(&manifest).unwrap();
        let digest = sha256_hex(&bytes);
        assert!(parse_manifest(&digest, &data).is_ok());
        let other = "0".repeat(64);
        let err = parse_manifest(&other, &data).unwrap_err();
        assert!(err.to_string().contains("altered"), "{err}");
        let mut short = manifest.clone();
        short.chunks.pop();
        let err = parse_manifest(&digest, &serde_json::to_vec(&short).unwrap()).unwrap_err();
        assert!(err.to_string().contains("chunk digests"), "{err}");
        assert!(parse_manifest(&digest, b"garbage").is_err());
        assert!(parse_manifest(&digest, &vec![b' '; MAX_MANIFEST_BYTES + 1]).is_err());
    }
}
