//! Versions that coexist in one fleet: every agent advertises, in its device node, its
//! version and the wire contract versions it reads and writes ([`Advert`]); the leader writes
//! each round's result in the newest version every live member reads (and it writes itself),
//! so that any of them can lead next and publish what waits in the outbox. An agent that does
//! not advertise is fleetmeter 0.1.0, which reads versions 1 and 2 ([`UNADVERTISED`]).

use std::collections::BTreeMap;

use crate::wire::{Advert, OLDEST, UNADVERTISED, VERSION};

/// The version results are written in now, and the member that holds it below this agent's
/// own (`None` when nobody does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Choice {
    pub version: u32,
    pub held_by: Option<String>,
}

/// The newest version every one of `members` reads (as `adverts` say; [`UNADVERTISED`] for a
/// member that does not), at most `own` (this agent's `[publish] wire_version`).
pub(super) fn choose(members: &[String], adverts: &BTreeMap<String, Advert>, own: u32) -> Choice {
    let own = own.clamp(OLDEST, VERSION);
    let lowest = members
        .iter()
        .map(|m| {
            let reads = adverts.get(m).map_or(UNADVERTISED, Advert::reads_up_to);
            (reads, m)
        })
        .min();
    match lowest {
        Some((reads, member)) if reads < own => Choice {
            version: reads.max(OLDEST),
            held_by: Some(member.clone()),
        },
        _ => Choice {
            version: own,
            held_by: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert(newest: u32) -> Advert {
        Advert {
            agent: Some("x".into()),
            wire: Some([1, newest]),
            ..Advert::default()
        }
    }

    #[test]
    fn results_are_written_in_the_newest_version_every_member_reads() {
        let members: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut adverts = BTreeMap::new();
        adverts.insert("a".to_owned(), advert(2));
        adverts.insert("b".to_owned(), advert(2));
        adverts.insert("c".to_owned(), advert(2));
        assert_eq!(
            choose(&members, &adverts, 2),
            Choice {
                version: 2,
                held_by: None
            }
        );
        adverts.insert("b".to_owned(), advert(1));
        assert_eq!(
            choose(&members, &adverts, 2),
            Choice {
                version: 1,
                held_by: Some("b".into())
            }
        );
        // A member that says nothing is a 0.1.0 agent: it reads up to 2.
        adverts.remove("b");
        assert_eq!(choose(&members, &adverts, 2).version, 2);
        // This agent's own cap holds whatever the members read.
        assert_eq!(choose(&members, &adverts, 1).version, 1);
        // A member claiming to read nothing still gets the oldest version.
        adverts.insert("a".to_owned(), advert(0));
        assert_eq!(choose(&members, &adverts, 2).version, OLDEST);
        assert_eq!(choose(&[], &adverts, 2).version, 2);
    }
}
