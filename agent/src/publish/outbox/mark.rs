//! Commit marks: the proof that an outbox entry was written by the fleet's leader.
//!
//! On a fleet with a secret (ZooKeeper credentials, or an API token) the leader writes each
//! entry with a mark, HMAC-SHA256 of the round's JSON digest under a key derived from that
//! secret. An entry without a valid mark was written by someone with ZooKeeper access but
//! not the fleet's secret: the publisher sets it aside instead of sending it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::coord::ZkAuth;

/// The key that marks outbox entries as written by the fleet's leader. `Debug` does not
/// show it.
#[derive(Clone, PartialEq, Eq)]
pub struct MarkKey([u8; 32]);

impl MarkKey {
    /// The key of a fleet with ZooKeeper credentials: only their holders can derive it
    /// (HMAC-SHA256 of a fixed label and the user, keyed by the password).
    pub fn from_auth(auth: &ZkAuth) -> Self {
        MarkKey(auth.derive_key(b"fleetmeter outbox commit mark v1\0"))
    }

    /// The key of a fleet whose ZooKeeper is open but whose API takes a token: every agent
    /// has the token, an outsider with only ZooKeeper access does not.
    pub fn from_token(token: &str) -> Self {
        let mut mac = hmac(token.as_bytes());
        mac.update(b"fleetmeter outbox commit mark v1 (API token)");
        MarkKey(mac.finalize().into_bytes().into())
    }

    /// The fleet's key: from its ZooKeeper credentials, else from its API token; `None` for
    /// a fleet with neither (nothing to derive a secret from).
    pub fn for_fleet(auth: Option<&ZkAuth>, token: Option<&str>) -> Option<Self> {
        match (auth, token) {
            (Some(auth), _) => Some(Self::from_auth(auth)),
            (None, Some(token)) if !token.is_empty() => Some(Self::from_token(token)),
            _ => None,
        }
    }

    /// The mark of a round whose JSON has SHA-256 `digest`: hex HMAC-SHA256.
    pub fn mark(&self, digest: &[u8]) -> String {
        let mut mac = hmac(&self.0);
        mac.update(digest);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `mark` is this key's mark of `digest` (compared in constant time).
    pub fn verify(&self, digest: &[u8], mark: &str) -> bool {
        let mut bytes = [0u8; 32];
        if hex::decode_to_slice(mark, &mut bytes).is_err() {
            return false;
        }
        let mut mac = hmac(&self.0);
        mac.update(digest);
        mac.verify_slice(&bytes).is_ok()
    }
}

impl std::fmt::Debug for MarkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MarkKey(<redacted>)")
    }
}

fn hmac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_need_the_fleets_credentials() {
        let fleet: ZkAuth = "digest:fleet:s3cr3t".parse().unwrap();
        let other: ZkAuth = "digest:fleet:guess".parse().unwrap();
        let digest = [7u8; 32];
        let key = MarkKey::from_auth(&fleet);
        let mark = key.mark(&digest);
        assert!(key.verify(&digest, &mark));
        assert!(
            !MarkKey::from_auth(&other).verify(&digest, &mark),
            "another password"
        );
        assert!(!key.verify(&[8u8; 32], &mark), "another round");
        assert!(!key.verify(&digest, "not hex"));
        assert!(!key.verify(&digest, &mark[..62]), "too short");
        assert!(!format!("{key:?}").contains(&mark[..8]));
    }

    #[test]
    fn the_key_is_the_one_earlier_versions_derived() {
        // Entries marked by an agent of the previous release must still verify: the
        // derivation is HMAC-SHA256(password, label || user), as it was.
        let auth: ZkAuth = "digest:fleet:s3cr3t".parse().unwrap();
        let mut mac = hmac(b"s3cr3t");
        mac.update(b"fleetmeter outbox commit mark v1\0");
        mac.update(b"fleet");
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(MarkKey::from_auth(&auth), MarkKey(expected));
    }
}
