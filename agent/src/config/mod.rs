//! The agent's configuration. Precedence: built-in defaults < `agent.toml` < environment <
//! command-line flags (the last two come in as [`Overrides`], which clap fills from both).
//! At run time the ZooKeeper config nodes override the period, the API URL and the aggregator
//! (see `coord::dynconfig`), seeded from these values.
//!
//! # Layout
//! - [`keys`]: the one table of keys, flags, variables, defaults and ranges.
//! - [`file`]: `agent.toml` as serde reads it.
//! - `overrides`: the command line and the environment, one clap declaration per flag.
//! - [`reference`]: the book's configuration reference, rendered from [`keys`].
//! - `resolve`: validation, one function per section.
//! - `describe`: what `fleetmeter run --check` prints.
//!
//! Unknown keys and invalid values fail at start with a message that names the key and where
//! the value came from.

mod describe;
mod file;
pub mod keys;
mod overrides;
pub mod reference;
mod resolve;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub use describe::describe;
pub use file::{
    DeviceSection, FileConfig, GrantsSection, PluginsSection, PublishFormat, PublishSection,
    RoundSection, TelemetrySection, UnknownFormat, ZookeeperSection,
};
pub use overrides::{ApiTlsArgs, Overrides, ZkTlsArgs};

use crate::{
    coord::{CoordError, ZkSettings, dynconfig::InvalidValue},
    plugin::{DirGrantError, LimitsError, PluginSettings},
};

/// A secret value (a token, a password): read from the file or the environment like any
/// value, but never shown by `Debug` (so never in a log line or `--check`).
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The token a token file holds: its first line, trimmed; `None` when that is empty.
pub fn token_line(text: &str) -> Option<&str> {
    Some(text.lines().next()?.trim()).filter(|t| !t.is_empty())
}

/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_FILE: &str = "agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    // `error` and `problem`, not `source`: the message already quotes them, on one line.
    #[error("invalid configuration file {path}: {}", one_line(error))]
    Parse {
        path: PathBuf,
        error: toml::de::Error,
    },
    /// `key` is the key's label in the key table; `origin` says where the value came from.
    #[error("{key} ({origin}): {problem}")]
    Invalid {
        key: &'static str,
        origin: String,
        problem: InvalidSetting,
    },
    #[error(
        "a device id is required: `fleetmeter run ID` (or --id ID, the DEVICE_ID environment \
         variable, or `[device] id` in agent.toml)"
    )]
    MissingId,
}

/// Why one value was refused.
#[derive(Debug, thiserror::Error)]
pub enum InvalidSetting {
    #[error(transparent)]
    TrustedKey(#[from] crate::rollout::signing::SignatureError),
    #[error("must be between {min} and {max} {unit}, got {value}")]
    OutOfRange {
        value: f64,
        min: f64,
        max: f64,
        unit: &'static str,
    },
    #[error("must not exceed retry_max")]
    RetryOrder,
    #[error(
        "{0:?} is not a quantity name: 1 to 64 ASCII letters, digits, '-', '_' or '.', starting with a letter or digit"
    )]
    QuantityName(String),
    #[error("`{key}` must be a string, number or boolean, got {found}")]
    PluginConfigType { key: String, found: &'static str },
    #[error(transparent)]
    Value(#[from] InvalidValue),
    #[error(transparent)]
    Format(#[from] UnknownFormat),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error(transparent)]
    DirGrant(#[from] DirGrantError),
    #[error(transparent)]
    NetworkGrant(#[from] crate::plugin::network::GrantError),
    #[error(
        "`network = true` opens every address to the sensor: the fleet's ZooKeeper, the API, \
         the cloud's metadata service; list what it needs in `connect` and `http` instead, or \
         set `[plugins.grants] allow_any_network = true` for a local experiment"
    )]
    AnyNetwork,
    #[error(transparent)]
    Coord(Box<CoordError>),
    #[error(transparent)]
    Auth(#[from] crate::coord::access::BadAuth),
    #[error(transparent)]
    ApiTls(#[from] crate::publish::tls::BadApiTls),
    #[error("cannot read {path}: {error}")]
    AuthFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::coord::access::BadTls),
    #[error("a client certificate or key without a CA: set `[zookeeper] tls_ca` to turn TLS on")]
    TlsWithoutCa,
    #[error("set either `[zookeeper] auth` or `[zookeeper] auth_file`, not both")]
    AuthTwice,
    #[error("set either `[publish] token` or `[publish] token_file`, not both")]
    TokenTwice,
    #[error("{path} holds no token (its first line is empty)")]
    TokenEmpty { path: PathBuf },
    #[error("{0:?} is not an origin like https://api.example:443 ({1})")]
    Origin(String, &'static str),
}

impl From<CoordError> for InvalidSetting {
    fn from(error: CoordError) -> Self {
        InvalidSetting::Coord(Box::new(error))
    }
}

/// toml's message spans lines (the offending line, a caret); an error message is one line.
fn one_line(error: &toml::de::Error) -> String {
    error.to_string().trim_end().replace('\n', " ")
}

/// The validated configuration the agent runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    pub device_id: String,
    pub zookeeper: ZkSettings,
    pub period: Duration,
    pub collect_fraction: f64,
    pub publish: PublishSettings,
    pub plugin_dir: PathBuf,
    pub cache_dir: Option<PathBuf>,
    pub sensor: String,
    /// The name a one-value sensor's quantity gets (`[plugins] quantity`); `None`: its own.
    pub quantity: Option<String>,
    pub sensor_settings: PluginSettings,
    pub aggregator: String,
    pub aggregator_settings: PluginSettings,
    /// What fleet plugin rollouts this agent accepts.
    pub rollouts: RolloutSettings,
    pub telemetry: TelemetrySettings,
    /// Where the file values came from, for messages.
    pub file: Option<PathBuf>,
}

/// What fleet plugin rollouts an agent accepts (`[plugins] trusted_keys`,
/// `allow_unsigned_rollouts`, `max_artifact_mib`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutSettings {
    pub trust: crate::rollout::signing::TrustPolicy,
    /// Larger artifacts are refused before they are fetched.
    pub max_artifact_bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PublishSettings {
    pub api_url: String,
    pub format: PublishFormat,
    pub token: Option<Secret>,
    /// Origins (`scheme://host:port`) rounds and the token may be sent to: the API URL's own
    /// and `[publish] allowed_origins`.
    pub allowed_origins: Vec<String>,
    pub timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// The outbox's bound (results waiting plus refused).
    pub outbox_max: crate::publish::outbox::Ledger,
    /// The newest wire contract version this agent reads and writes (`[publish]
    /// wire_version`; [`crate::wire::VERSION`] by default).
    pub wire_version: u32,
    /// What the agent trusts and presents for an `https://` API.
    pub tls: crate::publish::tls::ApiTls,
    /// The key of the outbox's commit marks, derived from the fleet's ZooKeeper credentials
    /// or its API token ([`MarkKey::for_fleet`](crate::publish::outbox::MarkKey::for_fleet)):
    /// entries without a valid mark are set aside, never sent. `None`: not marked.
    pub mark_key: Option<crate::publish::outbox::MarkKey>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TelemetrySettings {
    /// `None`: no telemetry endpoint.
    pub listen: Option<SocketAddr>,
    pub unhealthy_after_periods: u32,
}

/// A telemetry address that is not `IP:PORT`, `:PORT` or `off`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("must be IP:PORT (e.g. 0.0.0.0:9464 or 127.0.0.1:9464), :PORT, or \"off\", got {0:?}")]
pub struct ListenError(pub String);

/// `HOST:PORT` (an IP address; `:PORT` means every interface), or `off`/empty for none.
pub fn parse_listen(raw: &str) -> Result<Option<SocketAddr>, ListenError> {
    let raw = raw.trim();
    if raw.is_empty() || raw.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let full = match raw.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => raw.to_owned(),
    };
    full.parse()
        .map(Some)
        .map_err(|_| ListenError(raw.to_owned()))
}

/// Reads `path` (or `./agent.toml` when it exists, or nothing) and applies `overrides`.
pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<AgentConfig, ConfigError> {
    let file = match path {
        Some(path) => Some(path.to_owned()),
        None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.exists()),
    };
    let parsed = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            parse(&text).map_err(|error| ConfigError::Parse {
                path: path.clone(),
                error,
            })?
        }
        None => FileConfig::default(),
    };
    resolve::resolve(parsed, file, overrides)
}

/// Parses TOML text.
pub fn parse(text: &str) -> Result<FileConfig, toml::de::Error> {
    toml::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, overrides: Overrides) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        load(Some(&path), overrides)
    }

    fn id(id: &str) -> Overrides {
        Overrides {
            id: Some(id.into()),
            ..Overrides::default()
        }
    }

    #[test]
    fn the_documented_agent_toml_is_valid_and_matches_the_defaults() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent.toml");
        let text = std::fs::read_to_string(&root).expect("agent.toml at the repository root");
        let parsed = parse(&text).expect("agent.toml parses");
        let defaults = FileConfig {
            device: DeviceSection {
                id: parsed.device.id.clone(),
            },
            ..FileConfig::default()
        };
        assert_eq!(
            parsed, defaults,
            "agent.toml documents the built-in defaults"
        );
        let config = load(Some(&root), id("1")).unwrap();
        assert_eq!(config.period, Duration::from_secs(5));
    }

    #[test]
    fn precedence_defaults_file_overrides() {
        let config = load_text(
            "[round]\nsampling_period = 8\n[zookeeper]\nhosts = \"zk:2181\"\n[plugins]\naggregator = \"median\"\n",
            id("3"),
        )
        .unwrap();
        assert_eq!(config.period, Duration::from_secs(8), "file over default");
        assert_eq!(config.zookeeper.hosts, "zk:2181");
        assert_eq!(config.aggregator, "median");
        assert_eq!(config.publish.api_url, "http://127.0.0.1:4000/", "default");
        let config = load_text(
            "[round]\nsampling_period = 8\n",
            Overrides {
                id: Some("3".into()),
                period: Some("2".into()),
                zk_hosts: Some("a:1,b:2".into()),
                api_url: Some("http://api:4000/".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.period, Duration::from_secs(2), "env/flag over file");
        assert_eq!(config.zookeeper.hosts, "a:1,b:2");
        assert_eq!(config.publish.api_url, "http://api:4000/");
    }

    #[test]
    fn outbox_bounds_are_whole_numbers_in_range() {
        let bound = |text: &str| load_text(&format!("[publish]\n{text}\n"), id("1"));
        let config = bound("outbox_max_rounds = 12\noutbox_max_mib = 2").unwrap();
        assert_eq!(config.publish.outbox_max.rounds, 12);
        assert_eq!(config.publish.outbox_max.bytes, 2 * 1024 * 1024);
        for bad in [
            "outbox_max_rounds = 2.5",
            "outbox_max_rounds = -1",
            "outbox_max_mib = 0",
        ] {
            let err = bound(bad).unwrap_err().to_string();
            let key = bad.split(' ').next().unwrap();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn the_device_id_is_required() {
        let err = load_text("", Overrides::default()).unwrap_err();
        assert!(matches!(err, ConfigError::MissingId));
        assert!(err.to_string().contains("DEVICE_ID"));
        assert_eq!(
            load_text("[device]\nid = \"9\"\n", Overrides::default())
                .unwrap()
                .device_id,
            "9"
        );
        let err = load_text("", id("a/b")).unwrap_err();
        assert!(err.to_string().contains("without `/`"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_the_file() {
        let cases = [
            (
                "[round]\nsampling_perod = 5\n",
                "unknown field `sampling_perod`",
            ),
            ("[rounds]\n", "unknown field `rounds`"),
            ("[round]\nsampling_period = \"fast\"\n", "sampling_period"),
            (
                "[round]\nsampling_period = 0\n",
                "sampling period (`[round] sampling_period` in",
            ),
            (
                "[round]\ncollect_fraction = 1.5\n",
                "[round] collect_fraction",
            ),
            (
                "[publish]\napi_url = \"localhost:4000\"\n",
                "API URL (`[publish] api_url` in",
            ),
            ("[publish]\nformat = \"xml\"\n", "unknown variant `xml`"),
            ("[zookeeper]\nroot = \"fleet\"\n", "[zookeeper] root"),
            (
                "[zookeeper]\nsession_timeout = 0.1\n",
                "[zookeeper] session_timeout",
            ),
            ("[plugins.limits]\ntimeout_ms = 0\n", "[plugins.limits]"),
            (
                "[plugins.grants]\ndirs = [\":x\"]\n",
                "[plugins.grants] dirs",
            ),
            (
                "[plugins.grants]\nconnect = [\"10.0.0.5\"]\n",
                "connect grant `10.0.0.5`: no port",
            ),
            (
                "[plugins.grants]\nhttp = [\"http://meter/status\"]\n",
                "http grant `http://meter/status`: an origin has no path",
            ),
            (
                "[plugins.grants]\nnetwork = true\n",
                "set `[plugins.grants] allow_any_network = true`",
            ),
            (
                "[plugins.sensor_config]\nmin = [1]\n",
                "`min` must be a string, number or boolean",
            ),
            ("[plugins]\naggregator = \"Median!\"\n", "aggregator"),
            (
                "[telemetry]\nlisten = \"localhost:9464\"\n",
                "metrics address (`[telemetry] listen` in",
            ),
            (
                "[telemetry]\nunhealthy_after_periods = 0\n",
                "[telemetry] unhealthy_after_periods",
            ),
            ("this is not toml", "invalid configuration file"),
        ];
        for (text, expected) in cases {
            let err = load_text(text, id("1")).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{text:?}: expected {expected:?} in {err:?}"
            );
            assert!(err.contains("agent.toml"), "the file is named: {err}");
        }
    }

    #[test]
    fn network_grants_reach_the_sensor_settings() {
        let text = "[plugins.grants]\nconnect = [\"10.0.0.5:502\", \"[fd00::5]:502\"]\n\
                    http = [\"https://meter.example\"]\nnetwork = true\nallow_any_network = true\n";
        let config = load_text(
            text,
            Overrides {
                id: Some("1".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        let grants = &config.sensor_settings.grants;
        let shown: Vec<String> = grants.connect.iter().map(|e| e.to_string()).collect();
        assert_eq!(shown, ["10.0.0.5:502", "[fd00::5]:502"]);
        assert_eq!(grants.http[0].to_string(), "https://meter.example");
        assert!(grants.network);
        assert_eq!(
            config.aggregator_settings.grants,
            crate::plugin::Grants::default()
        );
    }

    #[test]
    fn overridden_values_name_their_flag_and_variable() {
        let err = load_text(
            "",
            Overrides {
                id: Some("1".into()),
                period: Some("abc".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--period or SAMPLING_PERIOD"), "{err}");
        let err = load_text(
            "",
            Overrides {
                id: Some("1".into()),
                api_url: Some("nope".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--api-url or API_URL"), "{err}");
    }

    #[test]
    fn the_metrics_address_can_be_moved_or_turned_off() {
        let config = load_text("", id("1")).unwrap();
        assert_eq!(
            config.telemetry.listen,
            Some("127.0.0.1:9464".parse().unwrap()),
            "loopback unless asked"
        );
        let with = |listen: &str| {
            load_text(
                "[telemetry]\nlisten = \"127.0.0.1:1\"\n",
                Overrides {
                    id: Some("1".into()),
                    metrics_listen: Some(listen.into()),
                    ..Overrides::default()
                },
            )
        };
        assert_eq!(
            with("127.0.0.1:9500").unwrap().telemetry.listen,
            Some("127.0.0.1:9500".parse().unwrap()),
            "env/flag over file"
        );
        assert_eq!(
            with(":9501").unwrap().telemetry.listen,
            Some("0.0.0.0:9501".parse().unwrap())
        );
        assert_eq!(with("off").unwrap().telemetry.listen, None);
        let err = with("9464").unwrap_err().to_string();
        assert!(
            err.contains("--metrics-listen or FLEETMETER_METRICS_LISTEN"),
            "{err}"
        );
    }

    #[test]
    fn plugin_config_values_become_strings() {
        let config = load_text(
            "[plugins.sensor_config]\nmin = 70\nmax = 90.5\nseed = \"7\"\nfast = true\n",
            id("1"),
        )
        .unwrap();
        assert_eq!(
            config.sensor_settings.config,
            vec![
                ("fast".to_owned(), "true".to_owned()),
                ("max".to_owned(), "90.5".to_owned()),
                ("min".to_owned(), "70".to_owned()),
                ("seed".to_owned(), "7".to_owned()),
            ]
        );
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let err = load(Some(Path::new("/nonexistent/agent.toml")), id("1")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read the configuration file /nonexistent/agent.toml")
        );
    }
}
