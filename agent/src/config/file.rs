//! `agent.toml` as serde reads it: every section and key optional, unknown keys refused, the
//! built-in defaults in each section's `Default` (the key table in `keys` repeats them for
//! the configuration reference, and a test keeps the two equal).

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use crate::plugin::Limits;

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
    /// `digest:USER:PASSWORD`.
    pub auth: Option<super::Secret>,
    /// A file holding `digest:USER:PASSWORD`.
    pub auth_file: Option<PathBuf>,
    pub public_read: bool,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for ZookeeperSection {
    fn default() -> Self {
        Self {
            hosts: "127.0.0.1:2181".into(),
            root: "/fleetmeter".into(),
            session_timeout: 4.0,
            connect_timeout: 60.0,
            auth: None,
            auth_file: None,
            public_read: false,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
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

/// A publish format other than `json` or `query`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("must be `json` or `query`, got {0:?}")]
pub struct UnknownFormat(pub String);

impl std::str::FromStr for PublishFormat {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, UnknownFormat> {
        match s {
            "json" => Ok(PublishFormat::Json),
            "query" => Ok(PublishFormat::Query),
            other => Err(UnknownFormat(other.to_owned())),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PublishSection {
    pub api_url: String,
    pub format: PublishFormat,
    /// Bearer token for the API's writes (its API_TOKEN).
    pub token: Option<super::Secret>,
    /// A file whose first line is the token.
    pub token_file: Option<PathBuf>,
    /// Seconds per request.
    pub timeout: f64,
    /// First retry delay, seconds; doubled up to `retry_max`, with jitter.
    pub retry_initial: f64,
    pub retry_max: f64,
    /// Most results the outbox holds (waiting and refused).
    pub outbox_max_rounds: u64,
    /// Most MiB of results the outbox holds.
    pub outbox_max_mib: u64,
    /// The newest wire contract version this agent reads and writes.
    pub wire_version: u64,
    /// Origins the dynamic `api_url` may point to besides `api_url`'s own.
    pub allowed_origins: Vec<String>,
    /// PEM CA certificates trusted for an `https://` API instead of the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for an API that requires one.
    pub tls_cert: Option<PathBuf>,
    /// Its PEM private key.
    pub tls_key: Option<PathBuf>,
}

impl Default for PublishSection {
    fn default() -> Self {
        Self {
            api_url: "http://127.0.0.1:4000/".into(),
            format: PublishFormat::Json,
            token: None,
            token_file: None,
            timeout: 5.0,
            retry_initial: 0.5,
            retry_max: 30.0,
            outbox_max_rounds: 20_000,
            outbox_max_mib: 64,
            wire_version: u64::from(crate::wire::VERSION),
            allowed_origins: Vec::new(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsSection {
    pub dir: PathBuf,
    pub cache_dir: Option<PathBuf>,
    pub sensor: String,
    pub quantity: Option<String>,
    pub aggregator: String,
    pub trusted_keys: Vec<String>,
    pub trusted_keys_file: Option<PathBuf>,
    pub allow_unsigned_rollouts: bool,
    pub max_artifact_mib: u64,
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
            quantity: None,
            aggregator: "mean".into(),
            trusted_keys: Vec::new(),
            trusted_keys_file: None,
            allow_unsigned_rollouts: false,
            max_artifact_mib: 4,
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

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
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
    /// TCP endpoints, `HOST:PORT`.
    pub connect: Vec<String>,
    /// HTTP origins, `http(s)://HOST[:PORT]`.
    pub http: Vec<String>,
    pub network: bool,
    pub allow_any_network: bool,
}
