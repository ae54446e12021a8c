//! Where entries live and how they are named: `/results/{n:020}`, `/rejected/{n:020}`, the
//! listing of a directory in round order, and the directories made on first use.

use zookeeper_client::Error as ZkError;

use crate::coord::{
    CoordError, FleetClient,
    paths::{REJECTED, RESULTS},
};

/// The outbox entry of round `round`. Zero-padded so that a plain sort is round order, like
/// sequential nodes.
pub fn result_path(round: u64) -> String {
    format!("{RESULTS}/{round:020}")
}

/// Where round `round` is kept when refused.
pub fn rejected_path(round: u64) -> String {
    format!("{REJECTED}/{round:020}")
}

/// The children of `dir`, sorted (round order for outbox names); none when it is absent.
pub(super) async fn children(client: &FleetClient, dir: &str) -> Result<Vec<String>, CoordError> {
    match client.list_children(dir).await {
        Ok(mut children) => {
            children.sort();
            Ok(children)
        }
        Err(ZkError::NoNode) => Ok(Vec::new()),
        Err(e) => Err(CoordError::zk("list", dir, e)),
    }
}

/// The round an entry's name stands for: exactly 20 digits.
pub(super) fn parse_name(name: &str) -> Option<u64> {
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

pub(super) async fn mkdir(client: &FleetClient, dir: &str) -> Result<(), CoordError> {
    match client.mkdir(dir, &client.persistent()).await {
        Ok(()) | Err(ZkError::NodeExists) => Ok(()),
        Err(e) => Err(CoordError::zk("create", dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outbox_names_parse() {
        assert_eq!(parse_name("00000000000000000042"), Some(42));
        assert_eq!(parse_name("42"), None);
        assert_eq!(parse_name("0000000000000000004x"), None);
    }
}
