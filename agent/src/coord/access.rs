//! Who may touch the fleet's nodes: ZooKeeper credentials, the ACL every node is created
//! with, and the check that refuses to run a credentialed agent on an open root.
//!
//! The fleet's root is its policy. A credentialed agent creates the root with "the fleet's
//! identity may do everything, everyone else nothing" (plus read for everyone with
//! `public_read`), and creates every other node with the root's ACL, so a tool or an agent
//! joining later follows whatever the root says. A root open to the world (created before
//! credentials were configured) is refused with the command that secures it
//! (`fleetmeter secure-root`), which sets the policy on every node under the root.

use std::{ops::Deref, sync::Arc};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zookeeper_client::{Acl, Acls, AuthId, Client, CreateMode, CreateOptions, Error, Permission};

use super::CoordError;

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
    fn is_ours(&self, acl: &Acl) -> bool {
        match self.scheme {
            AuthScheme::Digest => {
                acl.scheme() == "digest"
                    && acl.id().split_once(':').map(|(u, _)| u) == Some(self.user.as_str())
            }
            AuthScheme::Sasl => acl.scheme() == "sasl" && acl.id() == self.user,
        }
    }

    /// The key of the outbox's commit marks: only holders of these credentials can derive
    /// it (HMAC-SHA256 of a fixed label and the user, keyed by the password).
    pub fn mark_key(&self) -> MarkKey {
        let mut mac = hmac(self.password.as_bytes());
        mac.update(b"fleetmeter outbox commit mark v1\0");
        mac.update(self.user.as_bytes());
        MarkKey(mac.finalize().into_bytes().into())
    }
}

/// The key that marks outbox entries as written by the fleet's leader (see
/// `publish::outbox`). `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct MarkKey([u8; 32]);

impl MarkKey {
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
            (Some(auth), _) => Some(auth.mark_key()),
            (None, Some(token)) if !token.is_empty() => Some(Self::from_token(token)),
            _ => None,
        }
    }

    /// The mark of a round whose JSON has SHA-256 `digest`: hex HMAC-SHA256.
    pub fn mark(&self, digest: &[u8]) -> String {
        let mut mac = hmac(&self.0);
        mac.update(digest);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `mark` is this key's mark of `digest` (compared in constant time).
    pub fn verify(&self, digest: &[u8], mark: &str) -> bool {
        let Some(bytes) = unhex(mark) else {
            return false;
        };
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

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl std::fmt::Debug for ZkAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:<redacted>", self.scheme.name(), self.user)
    }
}

/// TLS to ZooKeeper: the CA that signs the servers' certificates and, when the servers ask
/// for one (`ssl.clientAuth=need`), this client's certificate and key. PEM text, read when
/// the configuration is read, so that a missing or unreadable file fails the start. `Debug`
/// does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkTls {
    ca: String,
    identity: Option<(String, String)>,
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BadTls {
    #[error("cannot read {path}: {error}")]
    Read {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("a client certificate needs its key, and a key its certificate: set both")]
    Half,
}

impl ZkTls {
    pub fn read(
        ca: &std::path::Path,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<Self, BadTls> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|error| BadTls::Read {
                path: path.to_owned(),
                error,
            })
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => return Err(BadTls::Half),
        };
        Ok(Self {
            ca: read(ca)?,
            identity,
        })
    }

    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// The client's TLS options; an error names what does not parse as PEM.
    pub fn options(&self) -> Result<zookeeper_client::TlsOptions, CoordError> {
        let options = zookeeper_client::TlsOptions::new()
            .with_pem_ca(&self.ca)
            .map_err(|e| {
                CoordError::Settings(format!("the ZooKeeper TLS CA is not PEM certificates: {e}"))
            })?;
        match &self.identity {
            Some((cert, key)) => options.with_pem_identity(cert, key).map_err(|e| {
                CoordError::Settings(format!(
                    "the ZooKeeper TLS client certificate or key is not PEM: {e}"
                ))
            }),
            None => Ok(options),
        }
    }
}

impl std::fmt::Debug for ZkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

/// The ACL of every node this agent creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAcl(Arc<Vec<Acl>>);

impl NodeAcl {
    /// Anyone may do anything: a fleet without credentials.
    pub fn open() -> Self {
        Self(Arc::new(vec![Acl::new(Permission::ALL, AuthId::anyone())]))
    }

    /// The policy a credentialed agent gives a new root: the creator's identity (ZooKeeper's
    /// `auth` scheme: the session's digest identity) may do everything; everyone else nothing,
    /// or read with `public_read`.
    pub fn secured(public_read: bool) -> Self {
        let mut acls = vec![Acl::new(Permission::ALL, AuthId::authed())];
        if public_read {
            acls.push(Acl::new(Permission::READ, AuthId::anyone()));
        }
        Self(Arc::new(acls))
    }

    fn from_root(acls: Vec<Acl>) -> Self {
        Self(Arc::new(acls))
    }

    pub fn acls(&self) -> &[Acl] {
        &self.0
    }

    pub fn persistent(&self) -> CreateOptions<'_> {
        CreateMode::Persistent.with_acls(Acls::new(&self.0))
    }

    pub fn ephemeral(&self) -> CreateOptions<'_> {
        CreateMode::Ephemeral.with_acls(Acls::new(&self.0))
    }

    pub fn ephemeral_sequential(&self) -> CreateOptions<'_> {
        CreateMode::EphemeralSequential.with_acls(Acls::new(&self.0))
    }
}

/// Whether an ACL lets anyone without credentials change something (anything beyond READ).
pub fn is_open(acls: &[Acl]) -> bool {
    acls.iter()
        .any(|acl| is_anyone(acl) && !Permission::READ.has(acl.permission()))
}

fn is_anyone(acl: &Acl) -> bool {
    acl.scheme() == "world" && acl.id() == "anyone"
}

/// `ALL|READ`-style rendering of an ACL for messages: `digest:fleet:… ALL, world:anyone READ`.
/// A digest id's hash is cut: it is a password hash.
pub fn describe(acls: &[Acl]) -> String {
    acls.iter()
        .map(|acl| {
            let id = match acl.scheme() {
                "digest" => format!(
                    "{}:…",
                    acl.id().split_once(':').map_or(acl.id(), |(user, _)| user)
                ),
                _ => acl.id().to_owned(),
            };
            format!("{}:{id} {}", acl.scheme(), acl.permission())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A client chrooted at the fleet's root, with the ACL its nodes are created with. Derefs to
/// the ZooKeeper client, so reads take it as they are.
#[derive(Clone, Debug)]
pub struct FleetClient {
    client: Client,
    acl: NodeAcl,
    mark: Option<Arc<MarkKey>>,
}

impl FleetClient {
    pub fn new(client: Client, acl: NodeAcl) -> Self {
        Self {
            client,
            acl,
            mark: None,
        }
    }

    /// With the key of the fleet's commit marks (a fleet with credentials).
    pub fn with_mark(mut self, mark: Option<MarkKey>) -> Self {
        self.mark = mark.map(Arc::new);
        self
    }

    /// The key outbox entries are marked and checked with; `None` on an open fleet.
    pub fn mark_key(&self) -> Option<&MarkKey> {
        self.mark.as_deref()
    }

    pub fn acl(&self) -> &NodeAcl {
        &self.acl
    }

    pub fn persistent(&self) -> CreateOptions<'_> {
        self.acl.persistent()
    }

    pub fn into_client(self) -> Client {
        self.client
    }
}

impl Deref for FleetClient {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// The command that secures an open root, for messages.
pub const SECURE_COMMAND: &str = "fleetmeter secure-root";

/// Creates `root` when absent (with the policy for `auth`), checks that this session may use
/// it, and returns the ACL to create nodes with: the root's own.
///
/// - With credentials: a root open to the world (or with an open child: partly secured) is
///   refused, naming [`SECURE_COMMAND`].
/// - Without: a root that is not open to the world is refused, naming the credential keys.
pub async fn adopt_root(
    base: &Client,
    root: &str,
    auth: Option<&ZkAuth>,
    public_read: bool,
) -> Result<NodeAcl, CoordError> {
    if root == "/" {
        return match auth {
            Some(_) => Err(CoordError::Settings(
                "a fleet with credentials needs its own root node (like /fleetmeter), not /".into(),
            )),
            None => Ok(NodeAcl::open()),
        };
    }
    let policy = if auth.is_some() {
        NodeAcl::secured(public_read)
    } else {
        NodeAcl::open()
    };
    match base.mkdir(root, &policy.persistent()).await {
        Ok(()) => {}
        Err(Error::NoAuth) => return Err(no_access(root, auth, "create")),
        Err(e) => return Err(CoordError::zk("create", root, e)),
    }
    let acls = match base.get_acl(root).await {
        Ok((acls, _)) => acls,
        Err(Error::NoAuth) => return Err(no_access(root, auth, "read")),
        Err(e) => return Err(CoordError::zk("read the ACL of", root, e)),
    };
    // Reading needs READ: a root secured for other credentials says so here.
    let children = match base.list_children(root).await {
        Ok(children) => children,
        Err(Error::NoAuth) => return Err(no_access(root, auth, "read")),
        Err(e) => return Err(CoordError::zk("list", root, e)),
    };
    match auth {
        None if !acls.iter().any(|acl| {
            is_anyone(acl)
                && acl.permission().has(
                    Permission::READ | Permission::WRITE | Permission::CREATE | Permission::DELETE,
                )
        }) =>
        {
            Err(no_access(root, None, "change"))
        }
        None => Ok(NodeAcl::from_root(acls)),
        Some(auth) => {
            if is_open(&acls) {
                return Err(CoordError::OpenRoot {
                    root: root.to_owned(),
                    what: root.to_owned(),
                    acl: describe(&acls),
                    user: auth.user().to_owned(),
                });
            }
            // Asked all at once (the client sends a request when it is made): one round
            // trip, not one per child.
            let asked: Vec<_> = children
                .iter()
                .map(|child| {
                    let path = format!("{root}/{child}");
                    let answer = base.get_acl(&path);
                    (path, answer)
                })
                .collect();
            for (path, answer) in asked {
                match answer.await {
                    Ok((child_acls, _)) if is_open(&child_acls) => {
                        return Err(CoordError::OpenRoot {
                            root: root.to_owned(),
                            what: path,
                            acl: describe(&child_acls),
                            user: auth.user().to_owned(),
                        });
                    }
                    Ok(_) | Err(Error::NoNode) => {}
                    Err(e) => return Err(CoordError::zk("read the ACL of", &path, e)),
                }
            }
            let ours = acls
                .iter()
                .any(|acl| acl.permission() == Permission::ALL && auth.is_ours(acl));
            if !ours {
                return Err(no_access(root, Some(auth), "change"));
            }
            Ok(NodeAcl::from_root(acls))
        }
    }
}

fn no_access(root: &str, auth: Option<&ZkAuth>, op: &'static str) -> CoordError {
    CoordError::NoAccess {
        root: root.to_owned(),
        op,
        hint: match auth {
            Some(auth) => format!(
                "the root is protected for other credentials than user {:?}: check [zookeeper] auth / auth_file or FLEETMETER_ZK_AUTH",
                auth.user()
            ),
            None => "the root is protected by credentials: give this process the fleet's (FLEETMETER_ZK_AUTH=digest:USER:PASSWORD, FLEETMETER_ZK_AUTH_FILE, or [zookeeper] auth / auth_file in agent.toml)".into(),
        },
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

    #[test]
    fn marks_need_the_fleets_credentials() {
        let fleet: ZkAuth = "digest:fleet:s3cr3t".parse().unwrap();
        let other: ZkAuth = "digest:fleet:guess".parse().unwrap();
        let digest = [7u8; 32];
        let mark = fleet.mark_key().mark(&digest);
        assert!(fleet.mark_key().verify(&digest, &mark));
        assert!(!other.mark_key().verify(&digest, &mark), "another password");
        assert!(!fleet.mark_key().verify(&[8u8; 32], &mark), "another round");
        assert!(!fleet.mark_key().verify(&digest, "not hex"));
        assert!(!format!("{:?}", fleet.mark_key()).contains(&mark[..8]));
    }

    #[test]
    fn open_means_anyone_may_change_something() {
        let anyone = |p| Acl::new(p, AuthId::anyone());
        assert!(is_open(&[anyone(Permission::ALL)]));
        assert!(is_open(&[anyone(Permission::READ | Permission::CREATE)]));
        assert!(!is_open(&[anyone(Permission::READ)]));
        assert!(!is_open(NodeAcl::secured(true).acls()));
        assert!(!is_open(NodeAcl::secured(false).acls()));
        assert!(is_open(NodeAcl::open().acls()));
        let digest = Acl::new(Permission::ALL, AuthId::new("digest", "fleet:HASH="));
        assert_eq!(
            describe(&[digest, anyone(Permission::READ)]),
            "digest:fleet:… ALL, world:anyone READ"
        );
    }
}
