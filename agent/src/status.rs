//! `fleetmeter status` and `fleetmeter config get|set`: the fleet as ZooKeeper holds it, and
//! validated writes to its dynamic configuration.

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::Serialize;
use zookeeper_client::Error as ZkError;

use crate::{
    coord::{
        CoordError, Session, ZkSettings, barrier, counter,
        dynconfig::{self, Key},
        election,
        paths::{self, DEVICES, RESULTS},
    },
    publish::outbox::{self, Ledger},
    round::handover::GivenUp,
    text::one_line_bounded,
    wire::{Advert, DeviceReading, MAX_ID_BYTES, Shown},
};

/// One device as `status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Member {
    pub id: String,
    /// The latest reading the device wrote, if any.
    pub reading: Option<DeviceReading>,
    /// Its version and the wire contract versions it reads (absent: 0.1.0 or older).
    pub advert: Advert,
}

/// The fleet's state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    pub root: String,
    pub leader: Option<String>,
    /// Election order (the leader first).
    pub contenders: Vec<String>,
    pub members: Vec<Member>,
    /// The round devices sample now; `None` until the leader starts the fleet's state.
    pub round: Option<u64>,
    /// `None` until the leader starts the fleet's state.
    pub counter: Option<i64>,
    /// The first round counted without the counter's base, while it is pending (the fleet's
    /// state was started while the API could not be asked).
    pub counter_base_pending: Option<u64>,
    /// Rounds a new leader found too late to finish, the latest last.
    pub given_up: Vec<GivenUp>,
    /// Committed results not yet accepted by the API.
    pub backlog: usize,
    /// Results the API refused, kept in `{root}/rejected` (`fleetmeter outbox list`).
    pub rejected: Vec<u64>,
    /// The outbox's ledger (waiting plus refused), as the leader keeps it.
    pub outbox: Option<Ledger>,
    pub config: BTreeMap<String, Option<String>>,
    /// The fleet's plugin rollout, when there is one (or why its record does not parse).
    pub rollout: Option<Result<crate::rollout::Rollout, String>>,
}

/// Connects briefly (10 s to reach ZooKeeper) for a one-shot command.
pub async fn connect(
    hosts: &str,
    root: &str,
    auth: Option<crate::coord::ZkAuth>,
    tls: Option<crate::coord::access::ZkTls>,
) -> Result<Session, CoordError> {
    Session::connect(ZkSettings {
        connect_timeout: Duration::from_secs(10),
        auth,
        tls,
        // A tool never creates the root with its own policy (`public_read` stays off): it
        // follows the root's.
        ..ZkSettings::new(hosts, root)
    })
    .await
}

/// The API token from the environment (FLEETMETER_API_TOKEN, or the first line of the file
/// FLEETMETER_API_TOKEN_FILE names), for a tool's commit marks.
pub(crate) fn env_token() -> Option<String> {
    use crate::config::keys;
    if let Ok(token) = std::env::var(keys::API_TOKEN.var()) {
        return Some(token);
    }
    let path = std::env::var_os(keys::API_TOKEN_FILE.var())?;
    let text = std::fs::read_to_string(path).ok()?;
    crate::config::token_line(&text).map(str::to_owned)
}

pub async fn read(session: &Session) -> Result<Status, CoordError> {
    let client = session.client()?;
    let contenders = election::contenders(&client).await?;
    let mut ids = match client.list_children(DEVICES).await {
        Ok(ids) => ids,
        Err(ZkError::NoNode) => Vec::new(),
        Err(e) => return Err(CoordError::zk("list", DEVICES, e)),
    };
    ids.sort();
    let mut members = Vec::with_capacity(ids.len());
    for id in ids {
        let (reading, advert) = match client.get_data(&paths::device(&id)).await {
            // A reading carries the advert; a node without a reading yet, the advert alone.
            Ok((data, _)) => match serde_json::from_slice::<DeviceReading>(&data) {
                Ok(reading) => {
                    let advert = reading.advert.clone();
                    (Some(reading), advert)
                }
                Err(_) => (None, serde_json::from_slice(&data).unwrap_or_default()),
            },
            Err(_) => (None, Advert::default()),
        };
        members.push(Member {
            id,
            reading,
            advert,
        });
    }
    let backlog = match client.list_children(RESULTS).await {
        Ok(children) => children.len(),
        Err(ZkError::NoNode) => 0,
        Err(e) => return Err(CoordError::zk("list", RESULTS, e)),
    };
    let mut config = BTreeMap::new();
    for key in Key::ALL {
        config.insert(key.name().to_owned(), get(session, key).await?);
    }
    Ok(Status {
        root: session.settings().root.clone(),
        leader: contenders.first().cloned(),
        round: barrier::current(&client).await?.map(|s| s.round),
        counter: counter::peek(&client).await?,
        counter_base_pending: counter::pending_base(&client).await?.map(|p| p.since),
        given_up: crate::round::handover::read(&client).await?,
        rejected: outbox::rejected_rounds(&client).await?,
        outbox: outbox::ledger::peek(&client).await?,
        rollout: crate::rollout::store::read_rollout(&client)
            .await?
            .map(|read| read.value),
        contenders,
        members,
        backlog,
        config,
    })
}

/// The status for a terminal. Every string read from ZooKeeper (ids, configuration values)
/// is escaped onto one line: anyone who can write a node cannot forge lines or recolour the
/// operator's terminal.
pub fn render(status: &Status) -> String {
    use crate::text::one_line;
    let mut out = String::new();
    let leader = one_line(status.leader.as_deref().unwrap_or("none"));
    out.push_str(&format!("fleet:    {}\n", status.root));
    out.push_str(&format!("leader:   {leader}\n"));
    match status.round {
        Some(round) => out.push_str(&format!("round:    {round}\n")),
        None => out.push_str("round:    not started (no leader yet)\n"),
    }
    match status.counter {
        Some(counter) => out.push_str(&format!("counter:  {counter}\n")),
        None => out.push_str("counter:  not started\n"),
    }
    if let Some(since) = status.counter_base_pending {
        out.push_str(&format!("          (counted from 0 since round {since}: the fleet started while the API was down; its earlier total is added when the API answers)\n"));
    }
    for g in status.given_up.iter().rev().take(5) {
        out.push_str(&format!(
            "given up: round {} ({}, {:.1} s past its deadline, by leader {})\n",
            g.round,
            one_line_bounded(&g.reason, 64),
            g.late_ms as f64 / 1000.0,
            one_line_bounded(&g.leader, MAX_ID_BYTES)
        ));
    }
    out.push_str(&format!(
        "backlog:  {} result(s) waiting for the API\n",
        status.backlog
    ));
    if status.rejected.is_empty() {
        out.push_str("rejected: none\n");
    } else {
        let shown: Vec<String> = status
            .rejected
            .iter()
            .take(10)
            .map(u64::to_string)
            .collect();
        let more = status.rejected.len().saturating_sub(shown.len());
        out.push_str(&format!(
            "rejected: {} round(s) the API refused: {}{} (fleetmeter outbox list)\n",
            status.rejected.len(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    if let Some(ledger) = status.outbox {
        out.push_str(&format!(
            "outbox:   {} round(s), {} bytes\n",
            ledger.rounds, ledger.bytes
        ));
    }
    match &status.rollout {
        Some(Ok(r)) => out.push_str(&format!(
            "rollout:  {} {} {} (sha256:{}) {}{}; judged {} round(s) of {} (`fleetmeter plugin rollout status`)\n",
            r.id,
            r.kind.name(),
            one_line_bounded(&r.artifact.label(), 100),
            one_line_bounded(r.artifact.sha256.get(..12).unwrap_or(""), 12),
            r.state.name(),
            r.end_round
                .map_or_else(|| format!(", canaries from round {}", r.start_round), |e| format!(" from round {e}")),
            r.judged.rounds,
            r.rounds
        )),
        Some(Err(problem)) => out.push_str(&format!(
            "rollout:  {{root}}/rollout does not parse: {}\n",
            one_line_bounded(problem, 200)
        )),
        None => {}
    }
    out.push_str(&format!("members:  {}\n", status.members.len()));
    for m in &status.members {
        let mark = if Some(&m.id) == status.leader.as_ref() {
            " (leader)"
        } else {
            ""
        };
        let mut runs = match (&m.advert.agent, m.advert.wire) {
            (Some(agent), Some([oldest, newest])) => {
                format!(
                    "fleetmeter {}, wire {oldest}-{newest}",
                    one_line_bounded(agent, 64)
                )
            }
            (Some(agent), None) => format!("fleetmeter {}", one_line_bounded(agent, 64)),
            (None, _) => "fleetmeter 0.1.0 or older".to_owned(),
        };
        if let Some(sensor) = &m.advert.sensor {
            // `sha256:` and the first 12 hex digits, as `plugin list` can be searched by.
            runs.push_str(&format!(
                ", sensor {}",
                one_line_bounded(sensor.get(..19).unwrap_or(sensor), 19)
            ));
        }
        if let Some(failed) = &m.advert.failed {
            runs.push_str(&format!(
                ", failed in round {}: {}",
                failed.round,
                one_line_bounded(&failed.why, 120)
            ));
        }
        if let Some(err) = &m.advert.rollout_error {
            runs.push_str(&format!(
                ", cannot run the rollout's plugin: {}",
                one_line_bounded(err, 160)
            ));
        }
        match &m.reading {
            Some(r) => out.push_str(&format!(
                "  {}{mark}: {} in round {} [{runs}]\n",
                one_line(&m.id),
                shown_reading(r),
                r.round
            )),
            None => out.push_str(&format!(
                "  {}{mark}: {} [{runs}]\n",
                one_line(&m.id),
                if m.advert.failed.is_some() {
                    "no reading"
                } else {
                    "no reading yet"
                }
            )),
        }
    }
    out.push_str("config:\n");
    for (key, value) in &status.config {
        out.push_str(&format!(
            "  {key} = {}\n",
            one_line(value.as_deref().unwrap_or("(not set)"))
        ));
    }
    out
}

/// A device's latest reading for a person: its value, or each quantity with its unit when
/// the node carries several (escaped and bounded: the node is outside input).
fn shown_reading(r: &DeviceReading) -> String {
    match r.quantities.as_deref() {
        Some(sample @ [_, _, ..]) if crate::wire::check_sample(sample).is_ok() => {
            one_line_bounded(&crate::wire::ShownSample(sample).to_string(), 400)
        }
        _ => Shown(r.value).to_string(),
    }
}

/// The raw value of a dynamic key, `None` when absent.
pub async fn get(session: &Session, key: Key) -> Result<Option<String>, CoordError> {
    match session.client()?.get_data(&key.path()).await {
        Ok((data, _)) => Ok(Some(String::from_utf8_lossy(&data).trim().to_owned())),
        Err(ZkError::NoNode) => Ok(None),
        Err(e) => Err(CoordError::zk("read", &key.path(), e)),
    }
}

/// Why `config set` refused a value.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("unknown key {0:?}: use sampling_period, api_url or aggregator")]
    UnknownKey(String),
    #[error("refused: {0}")]
    Invalid(#[from] dynconfig::InvalidValue),
    #[error(transparent)]
    Coord(#[from] CoordError),
}

/// Checks `value` as the agents will and returns the value to write. An aggregator is
/// checked against `plugin_dir` when that directory exists here.
pub fn validate(key_name: &str, value: &str, plugin_dir: &Path) -> Result<(Key, String), SetError> {
    let key = Key::parse(key_name).ok_or_else(|| SetError::UnknownKey(key_name.to_owned()))?;
    let value = match key {
        Key::SamplingPeriod => dynconfig::parse_period(value).map(dynconfig::format_period)?,
        Key::ApiUrl => dynconfig::parse_api_url(value).map(|u| u.to_string())?,
        Key::Aggregator => {
            let check_installed = plugin_dir.is_dir();
            let known =
                |name: &str| !check_installed || plugin_dir.join(format!("{name}.wasm")).is_file();
            dynconfig::parse_aggregator(value, &known)?
        }
    };
    Ok((key, value))
}

/// Writes a validated value (see [`validate`]).
pub async fn set(session: &Session, key: Key, value: &str) -> Result<(), SetError> {
    let client = session.client()?;
    let path = key.path();
    match client.set_data(&path, value.as_bytes(), None).await {
        Ok(_) => {}
        Err(ZkError::NoNode) => {
            client
                .mkdir(paths::CONFIG, &client.persistent())
                .await
                .map_err(|e| CoordError::zk("create", paths::CONFIG, e))?;
            match client
                .create(&path, value.as_bytes(), &client.persistent())
                .await
            {
                Ok(_) => {}
                Err(ZkError::NodeExists) => {
                    client
                        .set_data(&path, value.as_bytes(), None)
                        .await
                        .map_err(|e| CoordError::zk("set", &path, e))?;
                }
                Err(e) => return Err(CoordError::zk("create", &path, e).into()),
            }
        }
        Err(e) => return Err(CoordError::zk("set", &path, e).into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_escapes_everything_read_from_zookeeper() {
        let forged = "x\n2026-01-01T00:00:00Z ERROR forged\x1b[31m";
        let status = Status {
            root: "/fleetmeter".into(),
            leader: Some(forged.into()),
            contenders: vec![forged.into()],
            members: vec![Member {
                id: "d\u{202e}1".into(),
                reading: None,
                advert: Advert {
                    agent: Some(forged.into()),
                    wire: Some([1, 2]),
                    ..Advert::default()
                },
            }],
            round: Some(1),
            counter: Some(0),
            counter_base_pending: None,
            given_up: vec![GivenUp {
                round: 3,
                reason: forged.into(),
                late_ms: 12_345,
                leader: forged.into(),
                at: 1,
            }],
            backlog: 0,
            rejected: vec![7],
            outbox: None,
            config: BTreeMap::from([("api_url".to_owned(), Some(forged.to_owned()))]),
            rollout: Some(Err(forged.to_owned())),
        };
        let text = render(&status);
        assert!(
            !text.contains('\x1b') && !text.contains('\u{202e}'),
            "{text}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("2026")),
            "a forged line: {text}"
        );
        assert!(text.contains(r"leader:   x\n2026-01-01T00:00:00Z ERROR forged\u{1b}[31m"));
        assert!(text.contains(r"  d\u{202e}1: no reading yet [fleetmeter x\n2026"));
        assert!(text.contains(r"given up: round 3 (x\n2026"), "{text}");
        assert!(text.contains("12.3 s past its deadline"), "{text}");
        assert!(text.contains(r"  api_url = x\n2026"));
    }

    #[test]
    fn readings_are_shown_without_float_noise() {
        let status = Status {
            root: "/fleetmeter".into(),
            leader: Some("1".into()),
            contenders: vec!["1".into()],
            members: vec![
                Member {
                    id: "1".into(),
                    reading: Some(DeviceReading {
                        round: 4,
                        value: 78.66666666666667,
                        ts: 1,
                        quantities: None,
                        advert: Default::default(),
                    }),
                    advert: crate::wire::advert(2),
                },
                Member {
                    id: "2".into(),
                    reading: Some(DeviceReading {
                        round: 4,
                        value: 21.33333333333333,
                        ts: 1,
                        quantities: Some(vec![
                            crate::wire::Quantity::new("t", 21.33333333333333, "Cel"),
                            crate::wire::Quantity::new("rh", 40.0, "%"),
                        ]),
                        advert: Default::default(),
                    }),
                    advert: crate::wire::advert(2),
                },
            ],
            round: Some(4),
            counter: Some(9),
            counter_base_pending: Some(3),
            given_up: vec![],
            backlog: 0,
            rejected: vec![],
            outbox: None,
            config: BTreeMap::new(),
            rollout: None,
        };
        let text = render(&status);
        assert!(
            text.contains(&format!(
                "  1 (leader): 78.6667 in round 4 [fleetmeter {}, wire 1-2]\n",
                crate::wire::AGENT_VERSION
            )),
            "{text}"
        );
        assert!(
            text.contains("  2: t=21.3333 Cel, rh=40 % in round 4 ["),
            "{text}"
        );
    }
}
