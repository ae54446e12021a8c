//! Signatures of plugin artifacts, in minisign's format (Ed25519 over the file's BLAKE2b
//! hash, with a signed "trusted comment"): users sign with the standard `minisign -S` tool,
//! or with `fleetmeter plugin keygen` / `sign`, which write the same files.
//!
//! An agent lists the public keys it trusts (`[plugins] trusted_keys`, minisign's
//! `RW…` base64 form); [`TrustPolicy::check`] says whether an artifact may run.

use std::{io::Cursor, path::Path};

use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};

/// Longest signature file accepted (a minisign signature is ~300 bytes; the comments are
/// the rest).
pub const MAX_SIGNATURE_BYTES: usize = 4096;

/// A public key an agent trusts, with its key id as minisign prints it.
#[derive(Clone)]
pub struct TrustedKey {
    key: PublicKey,
    id: String,
    /// The `RW…` form, as configured.
    text: String,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKey").field("id", &self.id).finish()
    }
}

impl PartialEq for TrustedKey {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// Why a key or signature is refused.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "{shown:?} is not a minisign public key (the `RW…` line of a .pub file, or `fleetmeter plugin keygen`'s output)"
    )]
    BadKey { shown: String },
    #[error("the signature is not a minisign signature: {0}")]
    Malformed(String),
    #[error(
        "the signature was made with key {found}, which this agent does not trust (trusted: {trusted}); add its public key to [plugins] trusted_keys or sign with a trusted key"
    )]
    Untrusted { found: String, trusted: String },
    #[error(
        "the signature by key {key} does not match the artifact's bytes (altered, or signed another file)"
    )]
    Mismatch { key: String },
    #[error(
        "the artifact is unsigned and this agent trusts keys ({trusted}): sign it (`minisign -S -m FILE` or `fleetmeter plugin sign`) and publish it with --signature"
    )]
    Unsigned { trusted: String },
    #[error(
        "this agent trusts no signing key, so it refuses fleet rollouts: add the fleet's public key to [plugins] trusted_keys (FLEETMETER_TRUSTED_KEYS, --trusted-key), or set [plugins] allow_unsigned_rollouts = true to run artifacts nobody vouches for"
    )]
    NoTrustedKeys,
    #[error("signing: {0}")]
    Sign(String),
}

/// Key id as minisign shows it: the 8-byte key number, little-endian, in upper-case hex.
fn key_id(keynum: &[u8]) -> String {
    let mut bytes = [0u8; 8];
    let n = keynum.len().min(8);
    bytes[..n].copy_from_slice(&keynum[..n]);
    format!("{:016X}", u64::from_le_bytes(bytes))
}

impl TrustedKey {
    /// Parses minisign's `RW…` base64 public key (surrounding spaces ignored).
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let text = text.trim();
        let bad = || SignatureError::BadKey {
            shown: crate::text::one_line_bounded(text, 64),
        };
        if text.len() > 128 {
            return Err(bad());
        }
        let key = PublicKey::from_base64(text).map_err(|_| bad())?;
        let id = key_id(key.keynum());
        Ok(Self {
            key,
            id,
            text: text.to_owned(),
        })
    }

    /// Every key in a file: one per line, as bare `RW…` keys or minisign `.pub` files
    /// (their `untrusted comment:` lines, blank lines and `#` comments are skipped). A file
    /// that names no key is an error: an agent must not silently trust nothing.
    pub fn read_all(path: &Path) -> Result<Vec<Self>, SignatureError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SignatureError::Malformed(format!("{}: {e}", path.display())))?;
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty() && !l.starts_with('#') && !l.starts_with("untrusted comment:")
            })
            .map(Self::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(SignatureError::Malformed(format!(
                "{} holds no public key",
                path.display()
            )));
        }
        Ok(keys)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A signature, parsed but not yet checked.
#[derive(Clone)]
pub struct Signature {
    sig: SignatureBox,
    /// The key id it claims.
    pub key_id: String,
    /// The signed "trusted comment" (bounded and escaped for display).
    pub trusted_comment: String,
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signature")
            .field("key_id", &self.key_id)
            .field("trusted_comment", &self.trusted_comment)
            .finish_non_exhaustive()
    }
}

impl Signature {
    /// Parses a `.minisig` file's text.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        if text.len() > MAX_SIGNATURE_BYTES {
            return Err(SignatureError::Malformed(format!(
                "{} bytes, at most {MAX_SIGNATURE_BYTES}",
                text.len()
            )));
        }
        let sig = SignatureBox::from_string(text)
            .map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let key_id = key_id(sig.keynum());
        let trusted_comment = sig
            .trusted_comment()
            .map(|c| crate::text::one_line_bounded(&c, 128))
            .unwrap_or_default();
        Ok(Self {
            sig,
            key_id,
            trusted_comment,
        })
    }

    /// Checks the signature of `bytes` with `key` (prehashed signatures only, as minisign
    /// makes by default).
    pub fn verify(&self, key: &TrustedKey, bytes: &[u8]) -> Result<(), SignatureError> {
        minisign::verify(&key.key, &self.sig, Cursor::new(bytes), true, false, false).map_err(
            |_| SignatureError::Mismatch {
                key: key.id.clone(),
            },
        )
    }
}

/// What an agent accepts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrustPolicy {
    pub trusted: Vec<TrustedKey>,
    /// `[plugins] allow_unsigned_rollouts`: with no trusted keys, run any artifact.
    pub allow_unsigned: bool,
}

/// Who vouched for an artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vouched {
    /// Signed by this trusted key.
    Key(String),
    /// Accepted without a check (`allow_unsigned_rollouts`, no trusted keys).
    Unchecked,
}

impl TrustPolicy {
    fn trusted_ids(&self) -> String {
        self.trusted
            .iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether `bytes`, with `signature` (the `.minisig` text, if any), may run here.
    pub fn check(&self, bytes: &[u8], signature: Option<&str>) -> Result<Vouched, SignatureError> {
        if self.trusted.is_empty() {
            return if self.allow_unsigned {
                Ok(Vouched::Unchecked)
            } else {
                Err(SignatureError::NoTrustedKeys)
            };
        }
        let Some(signature) = signature else {
            return Err(SignatureError::Unsigned {
                trusted: self.trusted_ids(),
            });
        };
        let signature = Signature::parse(signature)?;
        let Some(key) = self.trusted.iter().find(|k| k.id == signature.key_id) else {
            return Err(SignatureError::Untrusted {
                found: signature.key_id,
                trusted: self.trusted_ids(),
            });
        };
        signature.verify(key, bytes)?;
        Ok(Vouched::Key(key.id.clone()))
    }
}

/// A new unencrypted key pair: the secret key file's text and the public key (`RW…`).
pub fn keygen() -> Result<(String, TrustedKey, String), SignatureError> {
    let pair =
        KeyPair::generate_unencrypted_keypair().map_err(|e| SignatureError::Sign(e.to_string()))?;
    let public = pair
        .pk
        .to_box()
        .map_err(|e| SignatureError::Sign(e.to_string()))?
        .into_string();
    let secret = pair
        .sk
        .to_box(Some("fleetmeter plugin signing key"))
        .map_err(|e| SignatureError::Sign(e.to_string()))?
        .into_string();
    let key = TrustedKey::parse(&pair.pk.to_base64())?;
    Ok((secret, key, public))
}

/// Signs `bytes` with the secret key file's text (minisign's format; unencrypted keys, or
/// encrypted ones with `password`); `comment` becomes the signed trusted comment.
pub fn sign(
    secret_key: &str,
    password: Option<String>,
    bytes: &[u8],
    comment: &str,
) -> Result<String, SignatureError> {
    let boxed =
        SecretKeyBox::from_string(secret_key).map_err(|e| SignatureError::Sign(e.to_string()))?;
    let sk = match password {
        Some(password) => SecretKey::from_box(boxed, Some(password)),
        None => boxed.into_unencrypted_secret_key(),
    }
    .map_err(|e| SignatureError::Sign(format!("reading the secret key: {e}")))?;
    let signature = minisign::sign(
        None,
        &sk,
        Cursor::new(bytes),
        Some(comment),
        Some("signature from fleetmeter plugin sign"),
    )
    .map_err(|e| SignatureError::Sign(e.to_string()))?;
    Ok(signature.into_string())
}

/// Whether `text` is a minisign secret key file that is password-protected.
pub fn is_encrypted(secret_key: &str) -> bool {
    SecretKeyBox::from_string(secret_key)
        .and_then(|b| b.into_unencrypted_secret_key())
        .is_ok_and(|k| k.is_encrypted())
}

/// The public key of a `.pub` file's text, for messages.
pub fn public_key_line(public_file: &str) -> Option<String> {
    PublicKeyBox::from_string(public_file)
        .and_then(PublicKeyBox::into_public_key)
        .ok()
        .map(|k| k.to_base64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_round_trip_and_every_refusal() {
        let (secret, key, public_file) = keygen().unwrap();
        assert_eq!(public_key_line(&public_file).unwrap(), key.text());
        let bytes = b"\0asm a plugin";
        let sig = sign(&secret, None, bytes, "name=x").unwrap();
        let policy = TrustPolicy {
            trusted: vec![key.clone()],
            allow_unsigned: false,
        };
        assert_eq!(
            policy.check(bytes, Some(&sig)).unwrap(),
            Vouched::Key(key.id().to_owned())
        );
        assert_eq!(Signature::parse(&sig).unwrap().trusted_comment, "name=x");
        // Altered bytes.
        assert!(matches!(
            policy.check(b"\0asm another", Some(&sig)),
            Err(SignatureError::Mismatch { .. })
        ));
        // Unsigned.
        assert!(matches!(
            policy.check(bytes, None),
            Err(SignatureError::Unsigned { .. })
        ));
        // Another key.
        let (other_secret, other, _) = keygen().unwrap();
        let other_sig = sign(&other_secret, None, bytes, "x").unwrap();
        let err = policy.check(bytes, Some(&other_sig)).unwrap_err();
        assert!(err.to_string().contains(other.id()), "{err}");
        // Garbage.
        assert!(matches!(
            policy.check(bytes, Some("not a signature")),
            Err(SignatureError::Malformed(_))
        ));
        // No keys.
        let none = TrustPolicy::default();
        let err = none.check(bytes, Some(&sig)).unwrap_err();
        assert!(err.to_string().contains("allow_unsigned_rollouts"), "{err}");
        assert!(err.to_string().contains("trusted_keys"), "{err}");
        let open = TrustPolicy {
            trusted: vec![],
            allow_unsigned: true,
        };
        assert_eq!(open.check(bytes, None).unwrap(), Vouched::Unchecked);
    }

    #[test]
    fn bad_keys_are_named() {
        let err = TrustedKey::parse("RWnot-a-key").unwrap_err();
        assert!(err.to_string().contains("RWnot-a-key"), "{err}");
        assert!(TrustedKey::parse(&"R".repeat(500)).is_err());
    }
}
