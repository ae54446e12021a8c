//! Who may touch the fleet's nodes: ZooKeeper credentials, the ACL every node is created
//! with, and the check that refuses to run a credentialed agent on an open root.
//!
//! The fleet's root is its policy. A credentialed agent creates the root with "the fleet's
//! identity may do everything, everyone else nothing" (plus read for everyone with
//! `public_read`), and creates every other node with the root's ACL, so a tool or an agent
//! joining later follows whatever the root says. A root open to the world (created before
//! credentials were configured) is refused with the command that secures it
//! (`fleetmeter secure-root`), which sets the policy on every node under the root.
//!
//! # Files
//! - [`auth`]: the credentials.
//! - [`tls`]: TLS to the servers.
//! - [`acl`]: the nodes' ACL and the root's policy ([`adopt_root`]).

mod acl;
mod auth;
mod tls;

pub use acl::{NodeAcl, SECURE_COMMAND, adopt_root, describe, is_open};
pub use auth::{AuthScheme, BadAuth, ZkAuth};
pub use tls::{BadTls, ZkTls};
