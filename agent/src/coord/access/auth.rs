//! ZooKeeper credentials: `digest:USER:PASSWORD` or `sasl:USER:PASSWORD`, parsed strictly
//! and never shown.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zookeeper_client::Acl;

/// The most bytes of a credential line (user and password together).
const MAX_AUTH_BYTES: usize = 1024;

/// ZooKeeper credentials: `digest:USER:PASSWORD` (ZooKeeper's digest scheme, sent with
/// `addauth`) or `sasl:USER:PASSWORD` (SASL DIGEST-MD5, checked by the server against its
/// JAAS configuration). `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkAuth {
    scheme: AuthScheme,
    user: String,
    password: String,
}

/// How the credentials are presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthScheme {
    /// `addauth digest USER:PASSWORD`: the identity `digest:USER:<hash>`.
    Digest,
    /// SASL DIGEST-MD5 at connect: the identity `sasl:USER`.
    Sasl,
}

impl AuthScheme {
    pub fn name(self) -> &'static str {
        match self {
            AuthScheme::Digest => "digest",
            AuthScheme::Sasl => "sasl",
        }
    }
}

/// Credentials not of the form `digest:USER:PASSWORD`. The message never quotes the value: it
/// holds a password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadAuth {
    #[error(
        "must be digest:USER:PASSWORD or sasl:USER:PASSWORD (a scheme, a user without `:`, a password), got a value of another form"
    )]
    Form,
    #[error(
        "the scheme must be `digest` (ZooKeeper's user:password scheme) or `sasl` (SASL DIGEST-MD5), got {0:?}"
    )]
    Scheme(String),
    #[error("is longer than {MAX_AUTH_BYTES} bytes")]
    TooLong,
    #[error("user and password must be printable characters without spaces")]
    Characters,
}

impl std::str::FromStr for ZkAuth {
    type Err = BadAuth;

    /// `digest:USER:PASSWORD`; surrounding whitespace (a file's newline) is ignored.
    fn from_str(raw: &str) -> Result<Self, BadAuth> {
        let raw = raw.trim();
        if raw.len() > MAX_AUTH_BYTES {
            return Err(BadAuth::TooLong);
        }
        let (scheme, rest) = raw.split_once(':').ok_or(BadAuth::Form)?;
        let scheme = match scheme {
            "digest" => AuthScheme::Digest,
            "sasl" => AuthScheme::Sasl,
            other => {
                // Cut, so that a password pasted in the scheme's place is not shown.
                let shown: String = other.chars().take(16).collect();
                return Err(BadAuth::Scheme(shown));
            }
        };
        let (user, password) = rest.split_once(':').ok_or(BadAuth::Form)?;
        if user.is_empty() || password.is_empty() {
            return Err(BadAuth::Form);
        }
        let printable = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_graphic() || (!c.is_ascii() && !c.is_control()))
        };
        if !printable(user) || !printable(password) {
            return Err(BadAuth::Characters);
        }
        Ok(Self {
            scheme,
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }
}

impl ZkAuth {
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn scheme(&self) -> AuthScheme {
        self.scheme
    }

    /// What `addauth digest` takes: `USER:PASSWORD`.
    pub(crate) fn digest_bytes(&self) -> Vec<u8> {
        format!("{}:{}", self.user, self.password).into_bytes()
    }

    /// A connector that presents these credentials.
    pub fn apply(&self, connector: zookeeper_client::Connector) -> zookeeper_client::Connector {
        match self.scheme {
            AuthScheme::Digest => connector.with_auth("digest", &self.digest_bytes()),
            AuthScheme::Sasl => connector.with_sasl(zookeeper_client::SaslOptions::digest_md5(
                self.user.clone(),
                self.password.clone(),
            )),
        }
    }

    /// Whether `acl` names this identity (`digest:USER:<hash>` or `sasl:USER`).
    pub(super) fn is_ours(&self, acl: &Acl) -> bool {
        match self.scheme {
            AuthScheme::Digest => {
                acl.scheme() == "digest"
                    && acl.id().split_once(':').map(|(u, _)| u) == Some(self.user.as_str())
            }
            AuthScheme::Sasl => acl.scheme() == "sasl" && acl.id() == self.user,
        }
    }

    /// A key only holders of these credentials can derive: HMAC-SHA256 of `label` and the
    /// user, keyed by the password (the outbox's commit marks, `publish::outbox::mark`).
    /// The password itself never leaves this module.
    pub fn derive_key(&self, label: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.password.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(label);
        mac.update(self.user.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for ZkAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:<redacted>", self.scheme.name(), self.user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_and_never_show_the_password() {
        let auth: ZkAuth = "digest:fleet:s3cr3t!\n".parse().unwrap();
        assert_eq!(auth.user(), "fleet");
        assert_eq!(auth.digest_bytes(), b"fleet:s3cr3t!");
        assert_eq!(auth.scheme(), AuthScheme::Digest);
        let sasl: ZkAuth = "sasl:fleet:s3cr3t!".parse().unwrap();
        assert_eq!(sasl.scheme(), AuthScheme::Sasl);
        assert!(!format!("{sasl:?}").contains("s3cr3t"));
        assert!(!format!("{auth:?}").contains("s3cr3t"));
        for bad in [
            "fleet:s3cr3t",
            "digest:fleet",
            "digest::pw",
            "digest:fleet:",
            "kerberos:fleet:pw",
            "digest:fle et:pw",
            "digest:fleet:pw\u{1b}",
        ] {
            let err = bad.parse::<ZkAuth>().unwrap_err().to_string();
            assert!(
                !err.contains("pw") || bad.starts_with("sasl"),
                "{bad}: {err}"
            );
        }
        let err = "hunter2hunter2hunter2:x:y"
            .parse::<ZkAuth>()
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2hunter2hunter2"), "{err}");
        assert!(
            "digest:a:"
                .to_owned()
                .repeat(200)
                .parse::<ZkAuth>()
                .is_err(),
            "too long"
        );
    }
}
