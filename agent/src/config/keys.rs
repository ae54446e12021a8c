//! The one table of configuration keys: for each, its `agent.toml` key, command-line flag,
//! environment variable, default and valid range.
//!
//! The clap attributes in `cli` take their flag and variable names from here, the error
//! messages name a value's origin from here, and the configuration reference
//! (`docs/configuration.md`) is rendered from here (by `config::reference`); tests fail when
//! the command line, the built-in defaults of [`super::FileConfig`], `agent.toml` or the
//! reference drift from this table.

/// One configuration value and every way to set it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Key {
    /// What error messages call it ("sampling period", or the file key).
    pub label: &'static str,
    /// `[section] name` in agent.toml, when the file sets it.
    pub file: Option<&'static str>,
    /// A positional argument that sets it too (`ID`).
    pub positional: Option<&'static str>,
    /// The long flag, without `--`.
    pub flag: Option<&'static str>,
    /// The flag's value name (`HOSTS`), shown in `--help` and the reference.
    pub value_name: Option<&'static str>,
    /// The environment variable.
    pub env: Option<&'static str>,
    /// The default as a TOML value (`4.0`, `"mean"`); empty when there is none.
    pub default: &'static str,
    /// Inclusive bounds for numbers, checked at start.
    pub range: Option<(f64, f64)>,
    /// The unit of numbers (`s`), or what the value is.
    pub unit: &'static str,
    /// What else the reference says about it.
    pub note: &'static str,
}

impl Key {
    const fn file(label: &'static str, file: &'static str, default: &'static str) -> Self {
        Self {
            label,
            file: Some(file),
            positional: None,
            flag: None,
            value_name: None,
            env: None,
            default,
            range: None,
            unit: "",
            note: "",
        }
    }

    /// A key only the command line or the environment sets.
    const fn cli(label: &'static str) -> Self {
        Self {
            file: None,
            ..Self::file(label, "", "")
        }
    }

    /// A flag that takes no value.
    const fn switch(mut self, flag: &'static str) -> Self {
        self.flag = Some(flag);
        self
    }

    const fn flag(mut self, flag: &'static str, value_name: &'static str) -> Self {
        self.flag = Some(flag);
        self.value_name = Some(value_name);
        self
    }

    const fn env(mut self, env: &'static str) -> Self {
        self.env = Some(env);
        self
    }

    const fn range(mut self, min: f64, max: f64, unit: &'static str) -> Self {
        self.range = Some((min, max));
        self.unit = unit;
        self
    }

    const fn note(mut self, note: &'static str) -> Self {
        self.note = note;
        self
    }

    /// The flag's name, for clap attributes. Panics (at compile time, in a const context)
    /// when the key has no flag.
    pub const fn long(&self) -> &'static str {
        match self.flag {
            Some(flag) => flag,
            None => panic!("this configuration key has no flag"),
        }
    }

    /// The variable's name, for clap attributes.
    pub const fn var(&self) -> &'static str {
        match self.env {
            Some(env) => env,
            None => panic!("this configuration key has no environment variable"),
        }
    }

    /// The value name, for clap attributes.
    pub const fn value(&self) -> &'static str {
        match self.value_name {
            Some(name) => name,
            None => panic!("this configuration key has no flag"),
        }
    }

    /// "ID, --id or DEVICE_ID": how to set it outside the file.
    pub fn overrides(&self) -> String {
        let mut ways: Vec<String> = Vec::new();
        ways.extend(self.positional.map(str::to_owned));
        ways.extend(self.flag.map(|f| format!("--{f}")));
        ways.extend(self.env.map(str::to_owned));
        match ways.len() {
            0 => String::new(),
            1 => ways.remove(0),
            n => format!("{} or {}", ways[..n - 1].join(", "), ways[n - 1]),
        }
    }

    /// Every way to set it, for messages that tell an operator what to change:
    /// "--metrics-listen or FLEETMETER_METRICS_LISTEN (or `[telemetry] listen` in agent.toml)".
    pub fn where_set(&self) -> String {
        match (self.overrides(), self.file) {
            (ways, Some(file)) if !ways.is_empty() => {
                format!("{ways} (or `{file}` in agent.toml)")
            }
            (_, Some(file)) => format!("`{file}` in agent.toml"),
            (ways, None) => ways,
        }
    }
}

pub const DEVICE_ID: Key = Key {
    positional: Some("ID"),
    ..Key::file("device id", "[device] id", "")
        .flag("id", "ID")
        .env("DEVICE_ID")
        .note("required (exit 1 with a message if missing); 1–128 bytes of printable characters, no `/`, not `.` or `..`")
};
pub const CONFIG: Key = Key::cli("configuration file")
    .flag("config", "PATH")
    .env("FLEETMETER_CONFIG")
    .note("`./agent.toml` if it exists, else built-in defaults");
pub const ZK_HOSTS: Key = Key::file(
    "[zookeeper] hosts",
    "[zookeeper] hosts",
    "\"127.0.0.1:2181\"",
)
.flag("zk", "HOSTS")
.env("ZK_HOST")
.note("`host:port[,host:port...]`");
pub const ZK_ROOT: Key = Key::file("[zookeeper] root", "[zookeeper] root", "\"/fleetmeter\"")
    .flag("root", "PATH")
    .env("FLEETMETER_ROOT")
    .note("the fleet's root node; several fleets can share an ensemble");
pub const ZK_AUTH: Key = Key::file("[zookeeper] auth", "[zookeeper] auth", "")
    .env("FLEETMETER_ZK_AUTH")
    .note("the fleet's ZooKeeper credentials, `digest:USER:PASSWORD` (or `sasl:USER:PASSWORD` for SASL DIGEST-MD5) (no flag: a password on a command line is visible to every user of the host); none by default: an open fleet (docs/security.md)");
pub const ZK_AUTH_FILE: Key = Key::file("[zookeeper] auth_file", "[zookeeper] auth_file", "")
    .flag("zk-auth-file", "PATH")
    .env("FLEETMETER_ZK_AUTH_FILE")
    .note("a file holding `digest:USER:PASSWORD` (instead of `auth`)");
pub const ZK_PUBLIC_READ: Key = Key::file(
    "[zookeeper] public_read",
    "[zookeeper] public_read",
    "false",
)
.note("with credentials: a root this agent creates (or `secure-root` secures) may be read by anyone (dashboards, kazoo without credentials)");
pub const ZK_TLS_CA: Key = Key::file("[zookeeper] tls_ca", "[zookeeper] tls_ca", "")
    .flag("zk-tls-ca", "PATH")
    .env("FLEETMETER_ZK_TLS_CA")
    .note("PEM CA certificates of the ZooKeeper servers: with it, every connection is TLS (the servers' `secureClientPort`)");
pub const ZK_TLS_CERT: Key = Key::file("[zookeeper] tls_cert", "[zookeeper] tls_cert", "")
    .flag("zk-tls-cert", "PATH")
    .env("FLEETMETER_ZK_TLS_CERT")
    .note("PEM client certificate, for servers with `ssl.clientAuth=need` (with `tls_key`)");
pub const ZK_TLS_KEY: Key = Key::file("[zookeeper] tls_key", "[zookeeper] tls_key", "")
    .flag("zk-tls-key", "PATH")
    .env("FLEETMETER_ZK_TLS_KEY")
    .note("its PEM private key (keep it 0600)");
pub const SESSION_TIMEOUT: Key = Key::file(
    "[zookeeper] session_timeout",
    "[zookeeper] session_timeout",
    "4.0",
)
.range(1.0, 60.0, "s");
pub const CONNECT_TIMEOUT: Key = Key::file(
    "[zookeeper] connect_timeout",
    "[zookeeper] connect_timeout",
    "60.0",
)
.range(1.0, 3600.0, "s")
.note("how long the first connection may take");
pub const SAMPLING_PERIOD: Key = Key::file("sampling period", "[round] sampling_period", "5.0")
    .flag("period", "SECONDS")
    .env("SAMPLING_PERIOD")
    .range(0.1, 86400.0, "s")
    .note("overridden at run time by `{root}/config/sampling_period`");
pub const COLLECT_FRACTION: Key = Key::file(
    "[round] collect_fraction",
    "[round] collect_fraction",
    "0.8",
)
.range(0.1, 0.95, "of the period")
.note("how long the leader waits for stragglers");
pub const API_URL: Key = Key::file("API URL", "[publish] api_url", "\"http://127.0.0.1:4000/\"")
    .flag("api-url", "URL")
    .env("API_URL")
    .note("`http://` or `https://` (TLS: the system's roots, or `tls_ca`); overridden at run time by `{root}/config/api_url`");
pub const PUBLISH_FORMAT: Key = Key::file("publish format", "[publish] format", "\"json\"")
    .flag("publish-format", "FORMAT")
    .env("FLEETMETER_PUBLISH_FORMAT")
    .note("`json` (idempotent POST) or `query` (the original GET /nuevo?dato=)");
pub const API_TOKEN: Key = Key::file("[publish] token", "[publish] token", "")
    .flag("api-token", "TOKEN")
    .env("FLEETMETER_API_TOKEN")
    .note("bearer token for the API's writes; none by default; sent only to the API URL's origin and `allowed_origins`");
pub const API_TOKEN_FILE: Key = Key::file("[publish] token_file", "[publish] token_file", "")
    .flag("api-token-file", "PATH")
    .env("FLEETMETER_API_TOKEN_FILE")
    .note("a file whose first line is the token (instead of `token`; what compose uses)");
pub const API_TLS_CA: Key = Key::file("[publish] tls_ca", "[publish] tls_ca", "")
    .flag("api-tls-ca", "PATH")
    .env("FLEETMETER_API_TLS_CA")
    .note("PEM CA certificates that sign an `https://` API's certificate: only they are trusted then; without it, the system's roots");
pub const API_TLS_CERT: Key = Key::file("[publish] tls_cert", "[publish] tls_cert", "")
    .flag("api-tls-cert", "PATH")
    .env("FLEETMETER_API_TLS_CERT")
    .note(
        "PEM client certificate, for an API that requires one (`--tls-client-ca`), with `tls_key`",
    );
pub const API_TLS_KEY: Key = Key::file("[publish] tls_key", "[publish] tls_key", "")
    .flag("api-tls-key", "PATH")
    .env("FLEETMETER_API_TLS_KEY")
    .note("its PEM private key (keep it 0600)");
pub const ALLOWED_ORIGINS: Key = Key::file("[publish] allowed_origins", "[publish] allowed_origins", "[]")
    .note("origins (`https://host:port`) the fleet's `api_url` node may point to besides the configured API URL's own; any other is refused, so rounds and the token never go elsewhere");
pub const PUBLISH_TIMEOUT: Key =
    Key::file("[publish] timeout", "[publish] timeout", "5.0").range(0.1, 300.0, "s");
pub const RETRY_INITIAL: Key =
    Key::file("[publish] retry_initial", "[publish] retry_initial", "0.5")
        .range(0.01, 60.0, "s")
        .note("first retry delay; doubled up to `retry_max`, each jittered ×0.5–1.5");
pub const RETRY_MAX: Key =
    Key::file("[publish] retry_max", "[publish] retry_max", "30.0").range(0.1, 3600.0, "s");
pub const OUTBOX_MAX_ROUNDS: Key = Key::file(
    "[publish] outbox_max_rounds",
    "[publish] outbox_max_rounds",
    "20000",
)
.range(1.0, 1_000_000.0, "rounds")
.note("results waiting for the API plus refused ones, at most; ≈ 28 h of outage at the default 5 s period. When full, new results are not stored (counted, `/healthz` unhealthy)");
pub const WIRE_VERSION: Key = Key::file(
    "[publish] wire_version",
    "[publish] wire_version",
    "4",
)
.range(1.0, 4.0, "version")
.note("the newest wire contract version this agent reads and writes (its device node says so; the leader writes results every member can read). Lower it only to keep a fleet readable by an older API or agent");
pub const OUTBOX_MAX_MIB: Key =
    Key::file("[publish] outbox_max_mib", "[publish] outbox_max_mib", "64")
        .range(1.0, 1024.0, "MiB")
        .note("their JSON, at most; it lives in ZooKeeper's memory");
pub const SENSOR: Key = Key::file("sensor", "[plugins] sensor", "\"random-temperature\"")
    .flag("sensor", "PLUGIN")
    .env("FLEETMETER_SENSOR")
    .note("a name in the plugin directory, or a path");
pub const QUANTITY: Key = Key::file("[plugins] quantity", "[plugins] quantity", "")
    .flag("quantity", "NAME")
    .env("FLEETMETER_QUANTITY")
    .note("the name of a one-value sample's quantity; default: the name of the sensor this configuration names, kept when a rollout runs another. Give every device of a fleet that mixes such sensors the same one, so that their values are aggregated together");
pub const AGGREGATOR: Key = Key::file("aggregator", "[plugins] aggregator", "\"mean\"")
    .flag("aggregator", "NAME")
    .env("FLEETMETER_AGGREGATOR")
    .note("overridden at run time by `{root}/config/aggregator`");
pub const PLUGIN_DIR: Key = Key::file("plugin directory", "[plugins] dir", "\"plugins/dist\"")
    .flag("plugin-dir", "DIR")
    .env("FLEETMETER_PLUGIN_DIR");
pub const CACHE_DIR: Key = Key::file("[plugins] cache_dir", "[plugins] cache_dir", "").note(
    "compiled plugins; default `$XDG_CACHE_HOME/fleetmeter/plugins`, else `~/.cache/fleetmeter/plugins`",
);
pub const TRUSTED_KEYS: Key = Key::file("[plugins] trusted_keys", "[plugins] trusted_keys", "[]")
    .flag("trusted-key", "KEY")
    .env("FLEETMETER_TRUSTED_KEYS")
    .note("minisign public keys (`RW…`) whose signatures this agent accepts on fleet plugin artifacts; the variable takes them comma-separated, the flag is repeatable. With none, rollouts are refused unless `allow_unsigned_rollouts`");
pub const TRUSTED_KEYS_FILE: Key = Key::file(
    "[plugins] trusted_keys_file",
    "[plugins] trusted_keys_file",
    "",
)
.flag("trusted-keys-file", "PATH")
.env("FLEETMETER_TRUSTED_KEYS_FILE")
.note("a file of trusted minisign public keys, one per line (a minisign `.pub` file is one); added to `trusted_keys`");
pub const ALLOW_UNSIGNED_ROLLOUTS: Key = Key::file(
    "[plugins] allow_unsigned_rollouts",
    "[plugins] allow_unsigned_rollouts",
    "false",
)
.note("with no trusted keys, run rolled-out artifacts that nobody signed (local experiments)");
pub const MAX_ARTIFACT_MIB: Key = Key::file(
    "[plugins] max_artifact_mib",
    "[plugins] max_artifact_mib",
    "4",
)
.range(1.0, 16.0, "MiB")
.note("a rolled-out artifact larger than this is refused before it is fetched");
pub const SENSOR_CONFIG: Key = Key::file("[plugins.sensor_config]", "[plugins.sensor_config]", "")
    .note("a table; each `KEY = value` is given to the sensor's `init`");
pub const AGGREGATOR_CONFIG: Key = Key::file(
    "[plugins.aggregator_config]",
    "[plugins.aggregator_config]",
    "",
)
.note("a table; each `KEY = value` is given to the aggregator's `init`");
pub const LIMIT_TIMEOUT: Key = Key::file("[plugins.limits]", "[plugins.limits] timeout_ms", "1000")
    .range(1.0, 60000.0, "ms")
    .note("per call, both plugins");
pub const LIMIT_FUEL: Key = Key::file("[plugins.limits]", "[plugins.limits] fuel", "")
    .note("instructions per call, roughly; off by default");
pub const LIMIT_MEMORY: Key =
    Key::file("[plugins.limits]", "[plugins.limits] max_memory_mib", "64")
        .range(1.0, 4096.0, "MiB");
pub const LIMIT_FAILURES: Key = Key::file(
    "[plugins.limits]",
    "[plugins.limits] failures_before_backoff",
    "3",
)
.note("failed calls in a row before the plugin backs off");
pub const LIMIT_BACKOFF_INITIAL: Key = Key::file(
    "[plugins.limits]",
    "[plugins.limits] backoff_initial_ms",
    "1000",
)
.note("ms; doubled per further failure");
pub const LIMIT_BACKOFF_MAX: Key = Key::file(
    "[plugins.limits]",
    "[plugins.limits] backoff_max_ms",
    "60000",
)
.note("ms");
pub const LIMIT_LOG_LINES_PER_CALL: Key = Key::file(
    "[plugins.limits]",
    "[plugins.limits] log_lines_per_call",
    "100",
)
.range(0.0, 100_000.0, "lines")
.note("more are dropped and summarised in one `suppressed` line");
pub const LIMIT_LOG_BYTES_PER_CALL: Key = Key::file(
    "[plugins.limits]",
    "[plugins.limits] log_bytes_per_call",
    "65536",
)
.range(0.0, 16_777_216.0, "bytes");
pub const LIMIT_LOG_LINES_PER_SECOND: Key = Key::file(
    "[plugins.limits]",
    "[plugins.limits] log_lines_per_second",
    "10",
)
.range(0.0, 100_000.0, "lines")
.note("sustained rate across calls; bursts up to the per-call budget");
pub const LIMIT_LOG_BYTES_PER_SECOND: Key = Key::file(
    "[plugins.limits]",
    "[plugins.limits] log_bytes_per_second",
    "4096",
)
.range(0.0, 16_777_216.0, "bytes");
pub const GRANT_DIRS: Key = Key::file("[plugins.grants] dirs", "[plugins.grants] dirs", "[]")
    .note("read-only directories for the sensor, `HOST` or `HOST:GUEST`; aggregators get nothing");
pub const GRANT_CONNECT: Key = Key::file(
    "[plugins.grants] connect",
    "[plugins.grants] connect",
    "[]",
)
.note("TCP endpoints the sensor may connect to, `HOST:PORT`; names resolved (and pinned) when the sensor loads");
pub const GRANT_HTTP: Key = Key::file("[plugins.grants] http", "[plugins.grants] http", "[]")
    .note("HTTP origins the sensor may send requests to, `http(s)://HOST[:PORT]`");
pub const GRANT_NETWORK: Key = Key::file(
    "[plugins.grants] network",
    "[plugins.grants] network",
    "false",
)
.note("every address, TCP and UDP: refused unless allow_any_network = true");
pub const GRANT_ANY_NETWORK: Key = Key::file(
    "[plugins.grants] allow_any_network",
    "[plugins.grants] allow_any_network",
    "false",
)
.note("accept `network = true` (local experiments only)");
pub const GRANT_ENV: Key = Key::file("[plugins.grants.env]", "[plugins.grants.env]", "")
    .note("a table of environment variables the sensor sees");
pub const METRICS_LISTEN: Key = Key::file(
    "metrics address",
    "[telemetry] listen",
    "\"127.0.0.1:9464\"",
)
.flag("metrics-listen", "ADDR")
.env("FLEETMETER_METRICS_LISTEN")
.note("where `/metrics` and `/healthz` are served: `IP:PORT`, `:PORT` or `off`");
pub const UNHEALTHY_AFTER: Key = Key::file(
    "[telemetry] unhealthy_after_periods",
    "[telemetry] unhealthy_after_periods",
    "3",
)
.range(1.0, 1000.0, "periods");
pub const LOG_FORMAT: Key = Key {
    default: "\"text\"",
    ..Key::cli("log format")
        .flag("log-format", "FORMAT")
        .env("FLEETMETER_LOG_FORMAT")
        .note("`text` or `json`; `RUST_LOG` sets the level")
};
pub const CHECK: Key = Key::cli("check")
    .switch("check")
    .note("validate and print the configuration, connect to nothing, exit 0 (valid) or 1");

/// Every key of `fleetmeter run`, in the reference's order.
pub const ALL: &[Key] = &[
    DEVICE_ID,
    CONFIG,
    ZK_HOSTS,
    ZK_ROOT,
    ZK_AUTH,
    ZK_AUTH_FILE,
    ZK_PUBLIC_READ,
    ZK_TLS_CA,
    ZK_TLS_CERT,
    ZK_TLS_KEY,
    SESSION_TIMEOUT,
    CONNECT_TIMEOUT,
    SAMPLING_PERIOD,
    COLLECT_FRACTION,
    API_URL,
    PUBLISH_FORMAT,
    API_TOKEN,
    API_TOKEN_FILE,
    API_TLS_CA,
    API_TLS_CERT,
    API_TLS_KEY,
    ALLOWED_ORIGINS,
    PUBLISH_TIMEOUT,
    RETRY_INITIAL,
    RETRY_MAX,
    OUTBOX_MAX_ROUNDS,
    OUTBOX_MAX_MIB,
    WIRE_VERSION,
    SENSOR,
    QUANTITY,
    AGGREGATOR,
    PLUGIN_DIR,
    CACHE_DIR,
    TRUSTED_KEYS,
    TRUSTED_KEYS_FILE,
    ALLOW_UNSIGNED_ROLLOUTS,
    MAX_ARTIFACT_MIB,
    SENSOR_CONFIG,
    AGGREGATOR_CONFIG,
    LIMIT_TIMEOUT,
    LIMIT_FUEL,
    LIMIT_MEMORY,
    LIMIT_FAILURES,
    LIMIT_BACKOFF_INITIAL,
    LIMIT_BACKOFF_MAX,
    LIMIT_LOG_LINES_PER_CALL,
    LIMIT_LOG_BYTES_PER_CALL,
    LIMIT_LOG_LINES_PER_SECOND,
    LIMIT_LOG_BYTES_PER_SECOND,
    GRANT_DIRS,
    GRANT_CONNECT,
    GRANT_HTTP,
    GRANT_NETWORK,
    GRANT_ANY_NETWORK,
    GRANT_ENV,
    METRICS_LISTEN,
    UNHEALTHY_AFTER,
    LOG_FORMAT,
    CHECK,
];

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
