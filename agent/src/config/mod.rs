//! The agent's configuration. Precedence: built-in defaults < `agent.toml` < environment <
//! command-line flags (the last two come in as [`Overrides`], which clap fills from both).
//! At run time the ZooKeeper config nodes override the period, the API URL and the aggregator
//! (see `coord::dynconfig`), seeded from these values.
//!
//! Unknown keys and invalid values fail at start with a message that names the key and where
//! the value came from.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    coord::{ZkSettings, dynconfig},
    plugin::{DirGrant, Grants, Limits, PluginSettings},
};

/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_FILE: &str = "agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} ({source_of}): {message}")]
    Invalid {
        key: &'static str,
        source_of: String,
        message: String,
    },
    #[error(
        "a device id is required: `fleetmeter run ID` (or --id ID, the DEVICE_ID environment \
         variable, or `[device] id` in agent.toml)"
    )]
    MissingId,
}

/// `agent.toml`. Every key is optional; see the documented `agent.toml` at the repository
/// root for the defaults.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub device: DeviceSection,
    pub zookeeper: ZookeeperSection,
    pub round: RoundSection,
    pub publish: PublishSection,
    pub plugins: PluginsSection,
    pub telemetry: TelemetrySection,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceSection {
    pub id: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ZookeeperSection {
    pub hosts: String,
    pub root: String,
    /// Seconds.
    pub session_timeout: f64,
    /// Seconds to keep trying the first connection.
    pub connect_timeout: f64,
}

impl Default for ZookeeperSection {
    fn default() -> Self {
        Self {
            hosts: "127.0.0.1:2181".into(),
            root: "/fleetmeter".into(),
            session_timeout: 4.0,
            connect_timeout: 60.0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoundSection {
    /// Seconds between round starts.
    pub sampling_period: f64,
    /// Fraction of the period the leader waits for readings before going on without
    /// stragglers.
    pub collect_fraction: f64,
}

impl Default for RoundSection {
    fn default() -> Self {
        Self {
            sampling_period: 5.0,
            collect_fraction: 0.8,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PublishFormat {
    /// `POST {url}api/v1/rounds` with the round as JSON, idempotent by round number.
    #[default]
    Json,
    /// `GET {url}nuevo?dato=V`, the original API's call (at-least-once).
    Query,
}

impl PublishFormat {
    pub fn name(self) -> &'static str {
        match self {
            PublishFormat::Json => "json",
            PublishFormat::Query => "query",
        }
    }
}

impl std::str::FromStr for PublishFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(PublishFormat::Json),
            "query" => Ok(PublishFormat::Query),
            other => Err(format!("must be `json` or `query`, got {other:?}")),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PublishSection {
    pub api_url: String,
    pub format: PublishFormat,
    /// Bearer token for the API's writes (its API_TOKEN).
    pub token: Option<String>,
    /// Seconds per request.
    pub timeout: f64,
    /// First retry delay, seconds; doubled up to `retry_max`, with jitter.
    pub retry_initial: f64,
    pub retry_max: f64,
}

impl Default for PublishSection {
    fn default() -> Self {
        Self {
            api_url: "http://127.0.0.1:4000/".into(),
            format: PublishFormat::Json,
            token: None,
            timeout: 5.0,
            retry_initial: 0.5,
            retry_max: 30.0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsSection {
    pub dir: PathBuf,
    pub cache_dir: Option<PathBuf>,
    pub sensor: String,
    pub aggregator: String,
    pub sensor_config: BTreeMap<String, toml::Value>,
    pub aggregator_config: BTreeMap<String, toml::Value>,
    pub limits: Limits,
    pub grants: GrantsSection,
}

impl Default for PluginsSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("plugins/dist"),
            cache_dir: None,
            sensor: "random-temperature".into(),
            aggregator: "mean".into(),
            sensor_config: BTreeMap::new(),
            aggregator_config: BTreeMap::new(),
            limits: Limits::default(),
            grants: GrantsSection::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// `HOST:PORT` for `/metrics` and `/healthz`, or `off`.
    pub listen: String,
    /// `/healthz` turns unhealthy when no round has closed for this many periods.
    pub unhealthy_after_periods: u32,
}

/// The default `[telemetry] listen`: every interface, so that Prometheus on another host (or
/// in another container) can scrape it.
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9464";

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            listen: DEFAULT_METRICS_LISTEN.into(),
            unhealthy_after_periods: 3,
        }
    }
}

/// What the sensor may use; aggregators get nothing.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrantsSection {
    /// Read-only directories, `HOST` or `HOST:GUEST`.
    pub dirs: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub network: bool,
}

/// Values from the environment and the command line (clap fills each from its flag or its
/// environment variable; a flag wins over the variable).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub id: Option<String>,
    pub zk_hosts: Option<String>,
    pub root: Option<String>,
    pub api_url: Option<String>,
    pub period: Option<String>,
    pub sensor: Option<String>,
    pub aggregator: Option<String>,
    pub plugin_dir: Option<PathBuf>,
    pub token: Option<String>,
    pub format: Option<String>,
    pub metrics_listen: Option<String>,
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
    pub sensor_settings: PluginSettings,
    pub aggregator: String,
    pub aggregator_settings: PluginSettings,
    pub telemetry: TelemetrySettings,
    /// Where the file values came from, for messages.
    pub file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PublishSettings {
    pub api_url: String,
    pub format: PublishFormat,
    pub token: Option<String>,
    pub timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TelemetrySettings {
    /// `None`: no telemetry endpoint.
    pub listen: Option<SocketAddr>,
    pub unhealthy_after_periods: u32,
}

/// `HOST:PORT` (an IP address; `:PORT` means every interface), or `off`/empty for none.
pub fn parse_listen(raw: &str) -> Result<Option<SocketAddr>, String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let full = match raw.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => raw.to_owned(),
    };
    full.parse().map(Some).map_err(|_| {
        format!(
            "must be IP:PORT (e.g. 0.0.0.0:9464 or 127.0.0.1:9464), :PORT, or \"off\", got {raw:?}"
        )
    })
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
            parse(&text).map_err(|message| ConfigError::Parse {
                path: path.clone(),
                message,
            })?
        }
        None => FileConfig::default(),
    };
    resolve(parsed, file, overrides)
}

/// Parses TOML text; the message carries toml's line and column.
pub fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
}

/// Where a value came from, for error messages.
struct Origin<'a> {
    file: &'a Option<PathBuf>,
}

impl Origin<'_> {
    /// A value that a flag or an environment variable may override.
    fn of(&self, overridden: bool, flag: &str, env: &str, key: &str) -> String {
        if overridden {
            format!("from {flag} or {env}")
        } else {
            self.file(key)
        }
    }

    /// A value that only the file sets.
    fn file(&self, key: &str) -> String {
        match self.file {
            Some(path) => format!("`{key}` in {}", path.display()),
            None => "built-in default".into(),
        }
    }
}

fn invalid(key: &'static str, source_of: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        source_of,
        message: message.into(),
    }
}

fn seconds(
    origin: &Origin<'_>,
    key: &'static str,
    value: f64,
    min: f64,
    max: f64,
) -> Result<Duration, ConfigError> {
    if !value.is_finite() || value < min || value > max {
        return Err(invalid(
            key,
            origin.file(key),
            format!("must be between {min} and {max} seconds, got {value}"),
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

fn plugin_config(
    key: &'static str,
    source_of: String,
    table: BTreeMap<String, toml::Value>,
) -> Result<Vec<(String, String)>, ConfigError> {
    table
        .into_iter()
        .map(|(k, v)| {
            let value = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(invalid(
                        key,
                        source_of.clone(),
                        format!(
                            "`{k}` must be a string, number or boolean, got {}",
                            other.type_str()
                        ),
                    ));
                }
            };
            Ok((k, value))
        })
        .collect()
}

fn resolve(
    config: FileConfig,
    file: Option<PathBuf>,
    o: Overrides,
) -> Result<AgentConfig, ConfigError> {
    let origin = Origin { file: &file };

    let device_id =
        o.id.clone()
            .or(config.device.id)
            .filter(|id| !id.trim().is_empty())
            .ok_or(ConfigError::MissingId)?;
    crate::coord::membership::validate_id(&device_id).map_err(|e| {
        invalid(
            "device id",
            origin.of(
                o.id.is_some(),
                "the ID argument",
                "DEVICE_ID",
                "[device] id",
            ),
            e.to_string(),
        )
    })?;

    let zk_origin = origin.of(o.zk_hosts.is_some(), "--zk", "ZK_HOST", "[zookeeper] hosts");
    let zookeeper = ZkSettings {
        hosts: o.zk_hosts.clone().unwrap_or(config.zookeeper.hosts),
        root: o.root.clone().unwrap_or(config.zookeeper.root),
        session_timeout: seconds(
            &origin,
            "[zookeeper] session_timeout",
            config.zookeeper.session_timeout,
            1.0,
            60.0,
        )?,
        connect_timeout: seconds(
            &origin,
            "[zookeeper] connect_timeout",
            config.zookeeper.connect_timeout,
            1.0,
            3600.0,
        )?,
    };
    ZkSettings::validate_hosts(&zookeeper.hosts)
        .map_err(|e| invalid("[zookeeper] hosts", zk_origin, e.to_string()))?;
    ZkSettings::validate_root(&zookeeper.root).map_err(|e| {
        invalid(
            "[zookeeper] root",
            origin.of(
                o.root.is_some(),
                "--root",
                "FLEETMETER_ROOT",
                "[zookeeper] root",
            ),
            e.to_string(),
        )
    })?;

    let period_origin = origin.of(
        o.period.is_some(),
        "--period",
        "SAMPLING_PERIOD",
        "[round] sampling_period",
    );
    let period = match &o.period {
        Some(raw) => dynconfig::parse_period(raw),
        None => dynconfig::parse_period(&config.round.sampling_period.to_string()),
    }
    .map_err(|e| invalid("sampling period", period_origin, e))?;
    let collect_fraction = config.round.collect_fraction;
    if !(0.1..=0.95).contains(&collect_fraction) {
        return Err(invalid(
            "[round] collect_fraction",
            origin.file("[round] collect_fraction"),
            format!("must be between 0.1 and 0.95, got {collect_fraction}"),
        ));
    }

    let url_origin = origin.of(
        o.api_url.is_some(),
        "--api-url",
        "API_URL",
        "[publish] api_url",
    );
    let api_url = dynconfig::parse_api_url(o.api_url.as_deref().unwrap_or(&config.publish.api_url))
        .map_err(|e| invalid("API URL", url_origin, e))?
        .to_string();
    let format = match &o.format {
        Some(raw) => raw.parse().map_err(|e: String| {
            invalid(
                "publish format",
                "from --publish-format or FLEETMETER_PUBLISH_FORMAT".into(),
                e,
            )
        })?,
        None => config.publish.format,
    };
    let p = &config.publish;
    let publish = PublishSettings {
        api_url,
        format,
        token: o
            .token
            .clone()
            .or(p.token.clone())
            .filter(|t| !t.is_empty()),
        timeout: seconds(&origin, "[publish] timeout", p.timeout, 0.1, 300.0)?,
        retry_initial: seconds(
            &origin,
            "[publish] retry_initial",
            p.retry_initial,
            0.01,
            60.0,
        )?,
        retry_max: seconds(&origin, "[publish] retry_max", p.retry_max, 0.1, 3600.0)?,
    };
    if publish.retry_initial > publish.retry_max {
        return Err(invalid(
            "[publish] retry_initial",
            origin.file("[publish] retry_initial"),
            "must not exceed retry_max",
        ));
    }

    let plugins = config.plugins;
    let limits_origin = origin.file("[plugins.limits]");
    plugins
        .limits
        .validate()
        .map_err(|e| invalid("[plugins.limits]", limits_origin, e))?;
    let dirs = plugins
        .grants
        .dirs
        .iter()
        .map(|d| DirGrant::parse(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(
                "[plugins.grants] dirs",
                origin.file("[plugins.grants] dirs"),
                e,
            )
        })?;
    let sensor_settings = PluginSettings {
        config: plugin_config(
            "[plugins.sensor_config]",
            origin.file("[plugins.sensor_config]"),
            plugins.sensor_config,
        )?,
        limits: plugins.limits.clone(),
        grants: Grants {
            dirs,
            env: plugins.grants.env.into_iter().collect(),
            network: plugins.grants.network,
        },
    };
    let aggregator_settings = PluginSettings {
        config: plugin_config(
            "[plugins.aggregator_config]",
            origin.file("[plugins.aggregator_config]"),
            plugins.aggregator_config,
        )?,
        limits: plugins.limits,
        grants: Grants::default(),
    };
    let aggregator = o.aggregator.clone().unwrap_or(plugins.aggregator);
    dynconfig::parse_aggregator(&aggregator, &|_| true).map_err(|e| {
        invalid(
            "aggregator",
            origin.of(
                o.aggregator.is_some(),
                "--aggregator",
                "FLEETMETER_AGGREGATOR",
                "[plugins] aggregator",
            ),
            e,
        )
    })?;

    let listen_origin = origin.of(
        o.metrics_listen.is_some(),
        "--metrics-listen",
        "FLEETMETER_METRICS_LISTEN",
        "[telemetry] listen",
    );
    let listen = parse_listen(
        o.metrics_listen
            .as_deref()
            .unwrap_or(&config.telemetry.listen),
    )
    .map_err(|e| invalid("metrics address", listen_origin, e))?;
    let after = config.telemetry.unhealthy_after_periods;
    if !(1..=1000).contains(&after) {
        return Err(invalid(
            "[telemetry] unhealthy_after_periods",
            origin.file("[telemetry] unhealthy_after_periods"),
            format!("must be between 1 and 1000, got {after}"),
        ));
    }
    let telemetry = TelemetrySettings {
        listen,
        unhealthy_after_periods: after,
    };

    Ok(AgentConfig {
        device_id,
        zookeeper,
        period,
        collect_fraction,
        publish,
        plugin_dir: o.plugin_dir.clone().unwrap_or(plugins.dir),
        cache_dir: plugins.cache_dir,
        sensor: o.sensor.clone().unwrap_or(plugins.sensor),
        sensor_settings,
        aggregator,
        aggregator_settings,
        telemetry,
        file,
    })
}

/// What `fleetmeter run --check` prints: the values the agent would run with.
pub fn describe(config: &AgentConfig) -> String {
    let file = config.file.as_ref().map_or_else(
        || "(none: built-in defaults)".to_owned(),
        |p| p.display().to_string(),
    );
    let listen = config
        .telemetry
        .listen
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    let resolve = |name: &str| crate::plugin::resolve(name, &config.plugin_dir);
    format!(
        "configuration OK\n\
         config file:      {file}\n\
         device id:        {}\n\
         zookeeper:        {} (root {}, session timeout {:?})\n\
         sampling period:  {:?}\n\
         api url:          {} (format {})\n\
         sensor:           {}\n\
         aggregator:       {}\n\
         metrics, health:  {listen}\n",
        config.device_id,
        config.zookeeper.hosts,
        config.zookeeper.root,
        config.zookeeper.session_timeout,
        config.period,
        config.publish.api_url,
        config.publish.format.name(),
        resolve(&config.sensor).display(),
        resolve(&config.aggregator).display(),
    )
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
            Some("0.0.0.0:9464".parse().unwrap())
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
