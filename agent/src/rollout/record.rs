//! The rollout record (`{root}/rollout`) and the fleet's assignments
//! (`{root}/plugins/{sensor,aggregator}`), and the pure rules on them: which plugin a device
//! runs in a round ([`wanted`]) and who is a canary ([`Rollout::is_canary`]); how the leader
//! judges a canary round is in the sibling module `gates`. No ZooKeeper, no clock.
//!
//! States: `canary` (canary devices run the artifact from `start_round`; an aggregator runs
//! in shadow on the leader) → `promoted` (every device from `end_round`), or `waiting`
//! (gates passed, `--manual`: waits for `promote`) → `promoted`; or → `rolled_back` (a gate
//! failed) / `aborted` (by hand), canaries back on the previous plugin from `end_round`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::plugin::PluginKind;

/// Transitions kept in a record's history.
pub const MAX_HISTORY: usize = 50;
/// Shadow values kept in a record.
pub const MAX_SHADOW: usize = 50;
/// Most rounds a canary may be asked to last.
pub const MAX_ROUNDS: u32 = 10_000;
/// Most canary devices listed by id.
pub const MAX_CANARY_IDS: usize = 1_000;
/// Longest record read.
pub const MAX_RECORD_BYTES: usize = 512 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Sensor,
    Aggregator,
}

impl Kind {
    pub fn plugin(self) -> PluginKind {
        match self {
            Kind::Sensor => PluginKind::Sensor,
            Kind::Aggregator => PluginKind::Aggregator,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Sensor => "sensor",
            Kind::Aggregator => "aggregator",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "sensor" => Some(Kind::Sensor),
            "aggregator" => Some(Kind::Aggregator),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Canary,
    Waiting,
    Promoted,
    RolledBack,
    Aborted,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Canary => "canary",
            State::Waiting => "waiting",
            State::Promoted => "promoted",
            State::RolledBack => "rolled_back",
            State::Aborted => "aborted",
        }
    }

    /// Still running (a second rollout is refused).
    pub fn is_active(self) -> bool {
        matches!(self, State::Canary | State::Waiting)
    }
}

/// An artifact, by digest, with what its manifest says it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRef {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// Most `init` configuration entries a rollout may carry, and their longest key and value.
pub const MAX_CONFIG_ENTRIES: usize = 64;
pub const MAX_CONFIG_KEY: usize = 128;
pub const MAX_CONFIG_VALUE: usize = 4096;

/// A rollout's configuration, bounded (it is not signed: only what the plugin's own `init`
/// accepts can change anything).
pub fn check_config(config: &[(String, String)]) -> Result<(), String> {
    if config.len() > MAX_CONFIG_ENTRIES {
        return Err(format!(
            "{} configuration entries, at most {MAX_CONFIG_ENTRIES}",
            config.len()
        ));
    }
    for (key, value) in config {
        if key.is_empty() || key.len() > MAX_CONFIG_KEY || value.len() > MAX_CONFIG_VALUE {
            return Err(format!(
                "configuration key {:?}: keys are 1 to {MAX_CONFIG_KEY} bytes, values at most {MAX_CONFIG_VALUE}",
                crate::text::one_line_bounded(key, 40)
            ));
        }
    }
    Ok(())
}

impl ArtifactRef {
    /// The digest, and a name and version a plugin may have (they are logged and shown).
    pub fn check(&self) -> Result<(), String> {
        crate::rollout::artifacts::parse_digest(&self.sha256).map_err(|e| e.to_string())?;
        crate::plugin::check_label(&self.name, &self.version)
    }

    /// `NAME@VERSION`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// `NAME@sha256:HEX[..12]`, for logs.
    pub fn short(&self) -> String {
        format!(
            "{}@sha256:{}",
            self.name,
            &self.sha256[..12.min(self.sha256.len())]
        )
    }
}

/// What a device runs for one kind: an artifact with its configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    pub artifact: ArtifactRef,
    #[serde(default)]
    pub config: Vec<(String, String)>,
    /// The rollout that set it.
    pub rollout: u64,
    /// The round from which every device runs it.
    pub since_round: u64,
}

impl Assignment {
    pub fn check(&self) -> Result<(), String> {
        self.artifact.check()?;
        check_config(&self.config)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Canary {
    Devices(Vec<String>),
    Percent(u8),
}

impl Canary {
    /// `1,3` or `10%`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if let Some(p) = raw.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Canary::Percent(p)),
                _ => Err(format!("{raw:?}: a percentage is 1% to 100%")),
            };
        }
        let ids: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if ids.is_empty() || ids.len() > MAX_CANARY_IDS {
            return Err(format!(
                "{raw:?}: give device ids (`1,3`, at most {MAX_CANARY_IDS}) or a percentage (`10%`)"
            ));
        }
        for id in &ids {
            crate::wire::validate_device_id(id).map_err(|e| format!("canary device {e}"))?;
        }
        Ok(Canary::Devices(ids))
    }

    pub fn describe(&self) -> String {
        match self {
            Canary::Devices(ids) => format!("devices {}", ids.join(",")),
            Canary::Percent(p) => format!("{p}% of devices"),
        }
    }
}

/// The health gates a canary is judged by, over all its rounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    /// Plugin failures (trap, timeout, error, an artifact a canary cannot run) allowed.
    pub max_failures: u32,
    /// Readings missing from canary devices allowed.
    pub max_missing: u32,
    /// A canary reading further than this many median absolute deviations from the
    /// median of the other devices' readings fails the gate (`None`: off).
    pub max_mad: Option<f64>,
}

/// What the canary rounds judged so far found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Judged {
    pub rounds: u32,
    pub last_round: Option<u64>,
    pub failures: u32,
    pub missing: u32,
    pub outliers: u32,
}

/// The published and the shadow aggregator's value of one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowValue {
    pub round: u64,
    pub published: Option<f64>,
    pub shadow: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    pub state: State,
    /// The round it was decided at.
    pub round: u64,
    pub at_ms: u64,
    pub reason: String,
    /// The leader or operator that decided it.
    pub by: String,
}

/// The fleet's rollout record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub id: u64,
    pub kind: Kind,
    pub artifact: ArtifactRef,
    #[serde(default)]
    pub config: Vec<(String, String)>,
    pub canary: Canary,
    /// Canary rounds to pass before promotion.
    pub rounds: u32,
    #[serde(default)]
    pub gates: Gates,
    #[serde(default)]
    pub manual: bool,
    pub state: State,
    /// The first round canaries run the artifact (an aggregator runs in shadow).
    pub start_round: u64,
    /// The first round of the end state (promoted: everyone; rolled back: no one).
    #[serde(default)]
    pub end_round: Option<u64>,
    #[serde(default)]
    pub judged: Judged,
    #[serde(default)]
    pub shadow: Vec<ShadowValue>,
    #[serde(default)]
    pub history: Vec<Transition>,
    /// What the fleet ran before (`None`: each agent's local configuration).
    #[serde(default)]
    pub previous: Option<Assignment>,
}

/// What a device should run for a kind in a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want<'a> {
    /// The agent's own configuration (for an aggregator: `{root}/config/aggregator`).
    Local,
    Artifact {
        artifact: &'a ArtifactRef,
        config: &'a [(String, String)],
    },
}

impl<'a> Want<'a> {
    fn of(assignment: Option<&'a Assignment>) -> Self {
        assignment.map_or(Want::Local, |a| Want::Artifact {
            artifact: &a.artifact,
            config: &a.config,
        })
    }
}

impl Rollout {
    /// Parses and checks a record read from ZooKeeper.
    pub fn parse(data: &[u8]) -> Result<Self, String> {
        if data.len() > MAX_RECORD_BYTES {
            return Err(format!("{} bytes, at most {MAX_RECORD_BYTES}", data.len()));
        }
        let r: Rollout = serde_json::from_slice(data)
            .map_err(|e| crate::text::one_line_bounded(&e.to_string(), 200))?;
        r.artifact.check()?;
        if let Some(previous) = &r.previous {
            previous.check()?;
        }
        check_config(&r.config)?;
        if let Canary::Devices(ids) = &r.canary
            && ids.len() > MAX_CANARY_IDS
        {
            return Err(format!(
                "{} canary devices, at most {MAX_CANARY_IDS}",
                ids.len()
            ));
        }
        if r.rounds == 0 || r.rounds > MAX_ROUNDS {
            return Err(format!("rounds {} (1 to {MAX_ROUNDS})", r.rounds));
        }
        if matches!(
            r.state,
            State::Promoted | State::RolledBack | State::Aborted
        ) && r.end_round.is_none()
        {
            return Err(format!("state {} without end_round", r.state.name()));
        }
        Ok(r)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a rollout serializes")
    }

    /// Whether `device` is one of the canaries (the same answer on every agent, for devices
    /// that join later too).
    pub fn is_canary(&self, device: &str) -> bool {
        match &self.canary {
            Canary::Devices(ids) => ids.iter().any(|d| d == device),
            Canary::Percent(p) => {
                let h = Sha256::digest(format!("{}/{device}", self.id).as_bytes());
                let n = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
                n % 100 < u64::from(*p)
            }
        }
    }

    /// Records a transition (bounded history).
    pub fn transition(
        &mut self,
        state: State,
        round: u64,
        end_round: Option<u64>,
        reason: String,
        by: &str,
        at_ms: u64,
    ) {
        self.state = state;
        if end_round.is_some() {
            self.end_round = end_round;
        }
        self.history.push(Transition {
            state,
            round,
            at_ms,
            reason,
            by: by.to_owned(),
        });
        if self.history.len() > MAX_HISTORY {
            self.history.remove(0);
        }
    }

    /// Keeps a shadow value (bounded).
    pub fn record_shadow(&mut self, value: ShadowValue) {
        self.shadow.push(value);
        if self.shadow.len() > MAX_SHADOW {
            self.shadow.remove(0);
        }
    }
}

/// Which plugin of `kind` `device` runs in `round`, given the rollout record and the
/// fleet's assignment for that kind. An aggregator in canary runs only in shadow: the
/// published one is the previous.
pub fn wanted<'a>(
    kind: Kind,
    device: &str,
    round: u64,
    rollout: Option<&'a Rollout>,
    assignment: Option<&'a Assignment>,
) -> Want<'a> {
    let Some(r) = rollout.filter(|r| r.kind == kind) else {
        return Want::of(assignment);
    };
    let canary = kind == Kind::Sensor && r.is_canary(device);
    let end = r.end_round.unwrap_or(u64::MAX);
    let runs_new = match r.state {
        State::Canary | State::Waiting => canary && round >= r.start_round,
        State::Promoted => round >= end || (canary && round >= r.start_round),
        State::RolledBack | State::Aborted => canary && round >= r.start_round && round < end,
    };
    if runs_new {
        Want::Artifact {
            artifact: &r.artifact,
            config: &r.config,
        }
    } else {
        Want::of(r.previous.as_ref())
    }
}

/// The digest a device advertises for a running artifact.
pub fn advertised(sha256: &str) -> String {
    format!("sha256:{sha256}")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A sensor or aggregator rollout in `state`, canary device 1 from round 10, 3 rounds.
    pub(crate) fn rollout(kind: Kind, state: State) -> Rollout {
        Rollout {
            id: 7,
            kind,
            artifact: ArtifactRef {
                name: "new".into(),
                version: "2".into(),
                sha256: "a".repeat(64),
            },
            config: vec![],
            canary: Canary::Devices(vec!["1".into()]),
            rounds: 3,
            gates: Gates::default(),
            manual: false,
            state,
            start_round: 10,
            end_round: None,
            judged: Judged::default(),
            shadow: vec![],
            history: vec![],
            previous: None,
        }
    }

    fn is_new(w: &Want<'_>) -> bool {
        matches!(w, Want::Artifact { artifact, .. } if artifact.name == "new")
    }

    #[test]
    fn canaries_switch_at_the_start_round_and_everyone_at_promotion() {
        let mut r = rollout(Kind::Sensor, State::Canary);
        assert!(!is_new(&wanted(Kind::Sensor, "1", 9, Some(&r), None)));
        assert!(is_new(&wanted(Kind::Sensor, "1", 10, Some(&r), None)));
        assert!(!is_new(&wanted(Kind::Sensor, "2", 10, Some(&r), None)));
        // Another kind's rollout does not touch this one.
        assert_eq!(
            wanted(Kind::Aggregator, "1", 10, Some(&r), None),
            Want::Local
        );
        r.transition(State::Promoted, 14, Some(16), "ok".into(), "1", 0);
        assert!(!is_new(&wanted(Kind::Sensor, "2", 15, Some(&r), None)));
        assert!(is_new(&wanted(Kind::Sensor, "2", 16, Some(&r), None)));
        assert!(is_new(&wanted(Kind::Sensor, "1", 15, Some(&r), None)));
        let mut back = rollout(Kind::Sensor, State::Canary);
        back.transition(State::RolledBack, 12, Some(14), "bad".into(), "1", 0);
        assert!(is_new(&wanted(Kind::Sensor, "1", 13, Some(&back), None)));
        assert_eq!(
            wanted(Kind::Sensor, "1", 14, Some(&back), None),
            Want::Local
        );
    }

    #[test]
    fn an_aggregator_in_canary_only_shadows() {
        let mut r = rollout(Kind::Aggregator, State::Canary);
        assert_eq!(
            wanted(Kind::Aggregator, "1", 20, Some(&r), None),
            Want::Local
        );
        r.transition(State::Promoted, 20, Some(22), "ok".into(), "1", 0);
        assert!(is_new(&wanted(Kind::Aggregator, "2", 22, Some(&r), None)));
    }

    #[test]
    fn percent_canaries_are_the_same_everywhere() {
        let mut r = rollout(Kind::Sensor, State::Canary);
        r.canary = Canary::Percent(50);
        let picked: Vec<bool> = (0..200).map(|i| r.is_canary(&i.to_string())).collect();
        let n = picked.iter().filter(|p| **p).count();
        assert!((60..140).contains(&n), "{n}");
        assert_eq!(
            picked,
            (0..200)
                .map(|i| r.is_canary(&i.to_string()))
                .collect::<Vec<_>>()
        );
        assert!(Canary::parse("0%").is_err());
        assert!(Canary::parse("").is_err());
        assert_eq!(
            Canary::parse("1, 3").unwrap(),
            Canary::Devices(vec!["1".into(), "3".into()])
        );
    }

    #[test]
    fn records_of_garbage_are_refused() {
        assert!(Rollout::parse(b"garbage").is_err());
        let mut r = rollout(Kind::Sensor, State::Canary);
        assert_eq!(Rollout::parse(&r.to_json()).unwrap(), r);
        r.artifact.sha256 = "../../x".into();
        assert!(Rollout::parse(&r.to_json()).is_err());
        let mut r = rollout(Kind::Sensor, State::Promoted);
        r.end_round = None;
        assert!(Rollout::parse(&r.to_json()).is_err());
        // Names that would forge log lines, oversized configuration.
        let mut r = rollout(Kind::Sensor, State::Canary);
        r.artifact.name = "x\n2026-01-01 ERROR forged".into();
        assert!(Rollout::parse(&r.to_json()).is_err());
        let mut r = rollout(Kind::Sensor, State::Canary);
        r.config = vec![("k".into(), "v".repeat(MAX_CONFIG_VALUE + 1))];
        assert!(Rollout::parse(&r.to_json()).is_err());
        r.config = (0..=MAX_CONFIG_ENTRIES)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        assert!(Rollout::parse(&r.to_json()).is_err());
    }
}
