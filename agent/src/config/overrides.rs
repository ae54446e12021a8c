//! The command line and the environment, over `agent.toml`: one declaration per flag. clap
//! fills [`Overrides`] from each flag or its variable (a flag wins), with the names from the
//! key table ([`super::keys`]); `fleetmeter run` flattens it into its arguments, and
//! [`super::load`] takes it as it is.
//!
//! Values stay text here: `resolve` parses them and its messages name the key, the flag and
//! the variable together (`sampling period (from --period or SAMPLING_PERIOD): …`), which
//! clap's own parse errors cannot (they name only the flag, even for a variable's value).

use std::path::PathBuf;

use clap::Args;

use super::{Secret, keys};

/// Values from the environment and the command line.
#[derive(Clone, Debug, Default, PartialEq, Args)]
pub struct Overrides {
    /// This device's id (also --id, or DEVICE_ID).
    #[arg(value_name = keys::DEVICE_ID.value(), env = keys::DEVICE_ID.var())]
    pub id: Option<String>,
    /// This device's id, as a flag.
    #[arg(long = keys::DEVICE_ID.long(), value_name = keys::DEVICE_ID.value(), conflicts_with = "id")]
    pub id_flag: Option<String>,
    /// ZooKeeper hosts, host:port[,host:port...].
    #[arg(long = keys::ZK_HOSTS.long(), env = keys::ZK_HOSTS.var(), value_name = keys::ZK_HOSTS.value())]
    pub zk_hosts: Option<String>,
    /// The measurements API's base URL.
    #[arg(long = keys::API_URL.long(), env = keys::API_URL.var(), value_name = keys::API_URL.value())]
    pub api_url: Option<String>,
    /// Seconds between rounds.
    #[arg(long = keys::SAMPLING_PERIOD.long(), env = keys::SAMPLING_PERIOD.var(), value_name = keys::SAMPLING_PERIOD.value())]
    pub period: Option<String>,
    /// The fleet's ZooKeeper credentials from FLEETMETER_ZK_AUTH: the environment only, never
    /// a flag (a flag would put the password in every `ps`).
    #[arg(skip = std::env::var(keys::ZK_AUTH.var()).ok().map(Secret::new))]
    pub zk_auth: Option<Secret>,
    /// A file holding the fleet's ZooKeeper credentials, `digest:USER:PASSWORD` (or
    /// FLEETMETER_ZK_AUTH with that value; never the password on the command line).
    #[arg(long = keys::ZK_AUTH_FILE.long(), env = keys::ZK_AUTH_FILE.var(), value_name = keys::ZK_AUTH_FILE.value())]
    pub zk_auth_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: ZkTlsArgs,
    /// Root node of this fleet in ZooKeeper.
    #[arg(long = keys::ZK_ROOT.long(), env = keys::ZK_ROOT.var(), value_name = keys::ZK_ROOT.value())]
    pub root: Option<String>,
    /// Sensor plugin (a name in the plugin directory, or a path).
    #[arg(long = keys::SENSOR.long(), env = keys::SENSOR.var(), value_name = keys::SENSOR.value())]
    pub sensor: Option<String>,
    /// The name of a one-value sensor's quantity (default: the sensor's own name).
    #[arg(long = keys::QUANTITY.long(), env = keys::QUANTITY.var(), value_name = keys::QUANTITY.value())]
    pub quantity: Option<String>,
    /// Aggregator plugin name.
    #[arg(long = keys::AGGREGATOR.long(), env = keys::AGGREGATOR.var(), value_name = keys::AGGREGATOR.value())]
    pub aggregator: Option<String>,
    /// Directory of plugins.
    #[arg(long = keys::PLUGIN_DIR.long(), env = keys::PLUGIN_DIR.var(), value_name = keys::PLUGIN_DIR.value())]
    pub plugin_dir: Option<PathBuf>,
    /// Bearer token for the API's writes.
    #[arg(
        long = keys::API_TOKEN.long(),
        env = keys::API_TOKEN.var(),
        hide_env_values = true,
        value_name = keys::API_TOKEN.value()
    )]
    pub token: Option<String>,
    /// A file whose first line is the API token (a secret shared with the API).
    #[arg(long = keys::API_TOKEN_FILE.long(), env = keys::API_TOKEN_FILE.var(), value_name = keys::API_TOKEN_FILE.value())]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub api_tls: ApiTlsArgs,
    /// `json` (idempotent POST) or `query` (the original GET /nuevo?dato=).
    #[arg(long = keys::PUBLISH_FORMAT.long(), env = keys::PUBLISH_FORMAT.var(), value_name = keys::PUBLISH_FORMAT.value())]
    pub format: Option<String>,
    /// Where to serve /metrics and /healthz: IP:PORT, :PORT (every interface), or `off`
    /// [default: 127.0.0.1:9464].
    #[arg(long = keys::METRICS_LISTEN.long(), env = keys::METRICS_LISTEN.var(), value_name = keys::METRICS_LISTEN.value())]
    pub metrics_listen: Option<String>,
    /// A minisign public key (`RW…`) whose signatures on fleet plugin artifacts this agent
    /// accepts (repeatable; the variable takes them comma-separated). Replaces the file's
    /// [plugins] trusted_keys.
    #[arg(long = keys::TRUSTED_KEYS.long(), env = keys::TRUSTED_KEYS.var(), value_name = keys::TRUSTED_KEYS.value(), value_delimiter = ',')]
    pub trusted_keys: Vec<String>,
    /// A file of trusted minisign public keys, one per line (a minisign .pub file is one).
    #[arg(long = keys::TRUSTED_KEYS_FILE.long(), env = keys::TRUSTED_KEYS_FILE.var(), value_name = keys::TRUSTED_KEYS_FILE.value())]
    pub trusted_keys_file: Option<PathBuf>,
}

impl Overrides {
    /// The device id: `--id`, else the positional `ID` (or DEVICE_ID).
    pub fn device_id(&self) -> Option<&String> {
        self.id_flag.as_ref().or(self.id.as_ref())
    }
}

/// TLS to the measurements API, for `run` and the tools that read the API.
#[derive(Clone, Debug, Default, PartialEq, Args)]
pub struct ApiTlsArgs {
    /// PEM CA that signs an https:// API's certificate (instead of the system's roots).
    #[arg(long = keys::API_TLS_CA.long(), env = keys::API_TLS_CA.var(), value_name = keys::API_TLS_CA.value())]
    pub api_tls_ca: Option<PathBuf>,
    /// PEM client certificate, for an API that requires one (with --api-tls-key).
    #[arg(long = keys::API_TLS_CERT.long(), env = keys::API_TLS_CERT.var(), value_name = keys::API_TLS_CERT.value())]
    pub api_tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long = keys::API_TLS_KEY.long(), env = keys::API_TLS_KEY.var(), value_name = keys::API_TLS_KEY.value())]
    pub api_tls_key: Option<PathBuf>,
}

impl ApiTlsArgs {
    /// The TLS settings these flags name (a tool's: no file behind them).
    pub fn read(&self) -> Result<crate::publish::tls::ApiTls, crate::publish::tls::BadApiTls> {
        crate::publish::tls::ApiTls::read(
            self.api_tls_ca.as_deref(),
            self.api_tls_cert.as_deref(),
            self.api_tls_key.as_deref(),
        )
    }
}

/// TLS to ZooKeeper, for `run` and the tools.
#[derive(Clone, Debug, Default, PartialEq, Args)]
pub struct ZkTlsArgs {
    /// PEM CA of the ZooKeeper servers: connect with TLS.
    #[arg(long = keys::ZK_TLS_CA.long(), env = keys::ZK_TLS_CA.var(), value_name = keys::ZK_TLS_CA.value())]
    pub zk_tls_ca: Option<PathBuf>,
    /// PEM client certificate for ZooKeeper TLS (with --zk-tls-key).
    #[arg(long = keys::ZK_TLS_CERT.long(), env = keys::ZK_TLS_CERT.var(), value_name = keys::ZK_TLS_CERT.value())]
    pub zk_tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long = keys::ZK_TLS_KEY.long(), env = keys::ZK_TLS_KEY.var(), value_name = keys::ZK_TLS_KEY.value())]
    pub zk_tls_key: Option<PathBuf>,
}
