//! The ACL every node is created with, and the root's policy: a credentialed agent never
//! runs on an open root.

use std::sync::Arc;

use zookeeper_client::{Acl, Acls, AuthId, Client, CreateMode, CreateOptions, Error, Permission};

use super::ZkAuth;
use crate::coord::CoordError;

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
