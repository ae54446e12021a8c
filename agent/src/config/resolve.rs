//! From a parsed file and the overrides to a validated [`AgentConfig`], one function per
//! section. Every refusal names the key (from the key table) and where the value came from.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    AgentConfig, ConfigError, InvalidSetting, Overrides, PublishSettings, Secret,
    TelemetrySettings,
    file::{
        DeviceSection, FileConfig, PluginsSection, PublishSection, RoundSection, TelemetrySection,
        ZookeeperSection,
    },
    keys::{self, Key},
    parse_listen,
};
use crate::{
    coord::{
        ZkAuth, ZkSettings,
        access::{BadAuth, ZkTls},
        dynconfig, membership,
    },
    plugin::{
        DirGrant, Grants, LimitsError, PluginSettings,
        network::{self, Endpoint},
    },
};

/// Where values came from, for error messages.
#[derive(Clone, Copy, Debug)]
struct Origin<'a> {
    file: Option<&'a Path>,
}

impl Origin<'_> {
    /// Where `key`'s value came from: an override (flag or variable) or the file.
    fn of(self, key: &Key, overridden: bool) -> String {
        if overridden {
            format!("from {}", key.overrides())
        } else {
            self.file(key)
        }
    }

    /// A value only the file sets.
    fn file(self, key: &Key) -> String {
        match (self.file, key.file) {
            (Some(path), Some(name)) => format!("`{name}` in {}", path.display()),
            _ => "built-in default".into(),
        }
    }

    /// The text of a file holding a secret (credentials, a token), named by `key`.
    fn read_secret(
        self,
        key: &'static Key,
        overridden: bool,
        path: &Path,
    ) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|error| {
            self.invalid(
                key,
                overridden,
                InvalidSetting::AuthFile {
                    path: path.to_owned(),
                    error,
                },
            )
        })
    }

    fn invalid(self, key: &'static Key, overridden: bool, error: InvalidSetting) -> ConfigError {
        ConfigError::Invalid {
            key: key.label,
            origin: self.of(key, overridden),
            problem: error,
        }
    }
}

pub(super) fn resolve(
    config: FileConfig,
    file: Option<PathBuf>,
    o: Overrides,
) -> Result<AgentConfig, ConfigError> {
    let origin = Origin {
        file: file.as_deref(),
    };
    let device_id = device(origin, config.device, &o)?;
    let zookeeper = zookeeper(origin, config.zookeeper, &o)?;
    let (period, collect_fraction) = round(origin, &config.round, &o)?;
    let mut publish = publish(origin, config.publish, &o)?;
    publish.mark_key = crate::publish::outbox::MarkKey::for_fleet(
        zookeeper.auth.as_ref(),
        publish.token.as_ref().map(Secret::expose),
    );
    let aggregator = o
        .aggregator
        .clone()
        .unwrap_or_else(|| config.plugins.aggregator.clone());
    dynconfig::parse_aggregator(&aggregator, &|_| true)
        .map_err(|e| origin.invalid(&keys::AGGREGATOR, o.aggregator.is_some(), e.into()))?;
    let sensor = o
        .sensor
        .clone()
        .unwrap_or_else(|| config.plugins.sensor.clone());
    let quantity = o
        .quantity
        .clone()
        .or_else(|| config.plugins.quantity.clone())
        .filter(|q| !q.is_empty());
    if let Some(name) = &quantity
        && !crate::wire::valid_quantity_name(name)
    {
        return Err(origin.invalid(
            &keys::QUANTITY,
            o.quantity.is_some(),
            InvalidSetting::QuantityName(name.chars().take(80).collect()),
        ));
    }
    let plugin_dir = o
        .plugin_dir
        .clone()
        .unwrap_or_else(|| config.plugins.dir.clone());
    let cache_dir = config.plugins.cache_dir.clone();
    let rollouts = rollouts(origin, &config.plugins, &o)?;
    let (sensor_settings, aggregator_settings) = plugins(origin, config.plugins)?;
    let telemetry = telemetry(origin, &config.telemetry, &o)?;
    Ok(AgentConfig {
        device_id,
        zookeeper,
        period,
        collect_fraction,
        publish,
        plugin_dir,
        cache_dir,
        sensor,
        quantity,
        sensor_settings,
        aggregator,
        aggregator_settings,
        rollouts,
        telemetry,
        file,
    })
}

/// The trusted keys (the flag or variable replaces the file's list) and the artifact bound.
fn rollouts(
    origin: Origin<'_>,
    file: &PluginsSection,
    o: &Overrides,
) -> Result<crate::config::RolloutSettings, ConfigError> {
    let overridden = !o.trusted_keys.is_empty();
    let raw = if overridden {
        &o.trusted_keys
    } else {
        &file.trusted_keys
    };
    let mut trusted = raw
        .iter()
        .filter(|k| !k.trim().is_empty())
        .map(|k| crate::rollout::signing::TrustedKey::parse(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| origin.invalid(&keys::TRUSTED_KEYS, overridden, e.into()))?;
    let file_overridden = o.trusted_keys_file.is_some();
    if let Some(path) = o
        .trusted_keys_file
        .as_ref()
        .or(file.trusted_keys_file.as_ref())
    {
        let found = crate::rollout::signing::TrustedKey::read_all(path)
            .map_err(|e| origin.invalid(&keys::TRUSTED_KEYS_FILE, file_overridden, e.into()))?;
        for key in found {
            if !trusted.contains(&key) {
                trusted.push(key);
            }
        }
    }
    let mib = count(origin, &keys::MAX_ARTIFACT_MIB, file.max_artifact_mib)?;
    Ok(crate::config::RolloutSettings {
        trust: crate::rollout::signing::TrustPolicy {
            trusted,
            allow_unsigned: file.allow_unsigned_rollouts,
        },
        max_artifact_bytes: mib << 20,
    })
}

/// A number of seconds within the key's range.
fn seconds(origin: Origin<'_>, key: &'static Key, value: f64) -> Result<Duration, ConfigError> {
    in_range(origin, key, value)?;
    Ok(Duration::from_secs_f64(value))
}

/// A count within the key's range (a value only the file sets; TOML refuses a fraction or a
/// sign for it, naming the key).
fn count(origin: Origin<'_>, key: &'static Key, value: u64) -> Result<u64, ConfigError> {
    // A count past 2^53 rounds in f64, but stays far above every key's maximum.
    in_range(origin, key, value as f64)?;
    Ok(value)
}

/// A number within the key's range (a value only the file sets).
fn in_range(origin: Origin<'_>, key: &'static Key, value: f64) -> Result<(), ConfigError> {
    let (min, max) = key
        .range
        .expect("a numeric key has a range in the key table");
    if !value.is_finite() || value < min || value > max {
        return Err(origin.invalid(
            key,
            false,
            InvalidSetting::OutOfRange {
                value,
                min,
                max,
                unit: key.unit,
            },
        ));
    }
    Ok(())
}

fn device(origin: Origin<'_>, file: DeviceSection, o: &Overrides) -> Result<String, ConfigError> {
    let id = o
        .device_id()
        .cloned()
        .or(file.id)
        .filter(|id| !id.trim().is_empty())
        .ok_or(ConfigError::MissingId)?;
    membership::validate_id(&id)
        .map_err(|e| origin.invalid(&keys::DEVICE_ID, o.device_id().is_some(), e.into()))?;
    Ok(id)
}

fn zookeeper(
    origin: Origin<'_>,
    file: ZookeeperSection,
    o: &Overrides,
) -> Result<ZkSettings, ConfigError> {
    let auth = zk_auth(origin, &file, o)?;
    let tls = zk_tls(origin, &file, o)?;
    let settings = ZkSettings {
        hosts: o.zk_hosts.clone().unwrap_or(file.hosts),
        root: o.root.clone().unwrap_or(file.root),
        session_timeout: seconds(origin, &keys::SESSION_TIMEOUT, file.session_timeout)?,
        connect_timeout: seconds(origin, &keys::CONNECT_TIMEOUT, file.connect_timeout)?,
        auth,
        public_read: file.public_read,
        tls,
    };
    ZkSettings::validate_hosts(&settings.hosts)
        .map_err(|e| origin.invalid(&keys::ZK_HOSTS, o.zk_hosts.is_some(), e.into()))?;
    ZkSettings::validate_root(&settings.root)
        .map_err(|e| origin.invalid(&keys::ZK_ROOT, o.root.is_some(), e.into()))?;
    Ok(settings)
}

/// The credentials: FLEETMETER_ZK_AUTH, else the file named by --zk-auth-file or
/// FLEETMETER_ZK_AUTH_FILE, else `[zookeeper] auth`, else `[zookeeper] auth_file`.
fn zk_auth(
    origin: Origin<'_>,
    file: &ZookeeperSection,
    o: &Overrides,
) -> Result<Option<ZkAuth>, ConfigError> {
    let read = |key: &'static Key, overridden: bool, path: &Path| {
        let text = origin.read_secret(key, overridden, path)?;
        text.parse::<ZkAuth>()
            .map_err(|e| origin.invalid(key, overridden, e.into()))
    };
    if let Some(raw) = &o.zk_auth {
        return raw
            .expose()
            .parse()
            .map(Some)
            .map_err(|e: BadAuth| origin.invalid(&keys::ZK_AUTH, true, e.into()));
    }
    if let Some(path) = &o.zk_auth_file {
        return read(&keys::ZK_AUTH_FILE, true, path).map(Some);
    }
    match (&file.auth, &file.auth_file) {
        (Some(_), Some(_)) => Err(origin.invalid(&keys::ZK_AUTH, false, InvalidSetting::AuthTwice)),
        (Some(raw), None) => raw
            .expose()
            .parse()
            .map(Some)
            .map_err(|e: BadAuth| origin.invalid(&keys::ZK_AUTH, false, e.into())),
        (None, Some(path)) => read(&keys::ZK_AUTH_FILE, false, path).map(Some),
        (None, None) => Ok(None),
    }
}

/// TLS to ZooKeeper: on when a CA is set (flag/variable over file, per key).
fn zk_tls(
    origin: Origin<'_>,
    file: &ZookeeperSection,
    o: &Overrides,
) -> Result<Option<ZkTls>, ConfigError> {
    let pick =
        |over: &Option<PathBuf>, file: &Option<PathBuf>| over.clone().or_else(|| file.clone());
    let ca = pick(&o.tls.zk_tls_ca, &file.tls_ca);
    let cert = pick(&o.tls.zk_tls_cert, &file.tls_cert);
    let key = pick(&o.tls.zk_tls_key, &file.tls_key);
    let Some(ca) = ca else {
        if cert.is_some() || key.is_some() {
            return Err(origin.invalid(
                &keys::ZK_TLS_CA,
                o.tls.zk_tls_cert.is_some() || o.tls.zk_tls_key.is_some(),
                InvalidSetting::TlsWithoutCa,
            ));
        }
        return Ok(None);
    };
    ZkTls::read(&ca, cert.as_deref(), key.as_deref())
        .map(Some)
        .map_err(|e| origin.invalid(&keys::ZK_TLS_CA, o.tls.zk_tls_ca.is_some(), e.into()))
}

/// TLS to the API (flag/variable over file, per key): a private CA, a client identity.
fn api_tls(
    origin: Origin<'_>,
    file: &PublishSection,
    o: &Overrides,
) -> Result<crate::publish::tls::ApiTls, ConfigError> {
    let pick =
        |over: &Option<PathBuf>, file: &Option<PathBuf>| over.clone().or_else(|| file.clone());
    let t = &o.api_tls;
    let ca = pick(&t.api_tls_ca, &file.tls_ca);
    let cert = pick(&t.api_tls_cert, &file.tls_cert);
    let key = pick(&t.api_tls_key, &file.tls_key);
    crate::publish::tls::ApiTls::read(ca.as_deref(), cert.as_deref(), key.as_deref()).map_err(|e| {
        // Name the key the file belongs to.
        let (key, overridden) = match &e {
            crate::publish::tls::BadApiTls::Read { path, .. }
            | crate::publish::tls::BadApiTls::NoCertificate { path }
                if ca.as_deref() == Some(path.as_path()) =>
            {
                (&keys::API_TLS_CA, t.api_tls_ca.is_some())
            }
            _ => (
                &keys::API_TLS_CERT,
                t.api_tls_cert.is_some() || t.api_tls_key.is_some(),
            ),
        };
        origin.invalid(key, overridden, e.into())
    })
}

/// The API token: --api-token / FLEETMETER_API_TOKEN, else the file named by
/// --api-token-file / FLEETMETER_API_TOKEN_FILE, else `[publish] token`, else
/// `[publish] token_file`. An empty token is none.
fn api_token(
    origin: Origin<'_>,
    file: &PublishSection,
    o: &Overrides,
) -> Result<Option<Secret>, ConfigError> {
    let read = |overridden: bool, path: &Path| {
        let key = &keys::API_TOKEN_FILE;
        let text = origin.read_secret(key, overridden, path)?;
        let Some(token) = super::token_line(&text) else {
            return Err(origin.invalid(
                key,
                overridden,
                InvalidSetting::TokenEmpty {
                    path: path.to_owned(),
                },
            ));
        };
        Ok(Some(Secret::new(token)))
    };
    if let Some(token) = o.token.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Some(Secret::new(token.clone())));
    }
    if let Some(path) = &o.token_file {
        return read(true, path);
    }
    match (&file.token, &file.token_file) {
        (Some(_), Some(_)) => {
            Err(origin.invalid(&keys::API_TOKEN, false, InvalidSetting::TokenTwice))
        }
        (Some(token), None) => Ok(Some(token.clone()).filter(|t| !t.expose().is_empty())),
        (None, Some(path)) => read(false, path),
        (None, None) => Ok(None),
    }
}

/// `scheme://host[:port]` as the URL standard serializes an origin.
fn parse_origin(raw: &str) -> Result<String, InvalidSetting> {
    let url = url::Url::parse(raw.trim())
        .map_err(|_| InvalidSetting::Origin(raw.to_owned(), "not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(InvalidSetting::Origin(
            raw.to_owned(),
            "must be http(s) with a host",
        ));
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(InvalidSetting::Origin(
            raw.to_owned(),
            "an origin has no path, query or user",
        ));
    }
    Ok(url.origin().ascii_serialization())
}

fn round(
    origin: Origin<'_>,
    file: &RoundSection,
    o: &Overrides,
) -> Result<(Duration, f64), ConfigError> {
    let period = match &o.period {
        Some(raw) => dynconfig::parse_period(raw),
        None => dynconfig::parse_period(&file.sampling_period.to_string()),
    }
    .map_err(|e| origin.invalid(&keys::SAMPLING_PERIOD, o.period.is_some(), e.into()))?;
    in_range(origin, &keys::COLLECT_FRACTION, file.collect_fraction)?;
    Ok((period, file.collect_fraction))
}

fn publish(
    origin: Origin<'_>,
    file: PublishSection,
    o: &Overrides,
) -> Result<PublishSettings, ConfigError> {
    let parsed = dynconfig::parse_api_url(o.api_url.as_deref().unwrap_or(&file.api_url))
        .map_err(|e| origin.invalid(&keys::API_URL, o.api_url.is_some(), e.into()))?;
    let mut allowed_origins = vec![parsed.origin().ascii_serialization()];
    for raw in &file.allowed_origins {
        let allowed =
            parse_origin(raw).map_err(|e| origin.invalid(&keys::ALLOWED_ORIGINS, false, e))?;
        if !allowed_origins.contains(&allowed) {
            allowed_origins.push(allowed);
        }
    }
    let api_url = parsed.to_string();
    let format = match &o.format {
        Some(raw) => raw.parse().map_err(|e: super::UnknownFormat| {
            origin.invalid(&keys::PUBLISH_FORMAT, true, e.into())
        })?,
        None => file.format,
    };
    let publish = PublishSettings {
        api_url,
        format,
        token: api_token(origin, &file, o)?,
        tls: api_tls(origin, &file, o)?,
        allowed_origins,
        timeout: seconds(origin, &keys::PUBLISH_TIMEOUT, file.timeout)?,
        retry_initial: seconds(origin, &keys::RETRY_INITIAL, file.retry_initial)?,
        retry_max: seconds(origin, &keys::RETRY_MAX, file.retry_max)?,
        outbox_max: crate::publish::outbox::Ledger {
            rounds: count(origin, &keys::OUTBOX_MAX_ROUNDS, file.outbox_max_rounds)?,
            bytes: count(origin, &keys::OUTBOX_MAX_MIB, file.outbox_max_mib)? * 1024 * 1024,
        },
        wire_version: u32::try_from(count(origin, &keys::WIRE_VERSION, file.wire_version)?)
            .unwrap_or(crate::wire::VERSION),
        // Derived once the credentials are known (`resolve`).
        mark_key: None,
    };
    if publish.retry_initial > publish.retry_max {
        return Err(origin.invalid(&keys::RETRY_INITIAL, false, InvalidSetting::RetryOrder));
    }
    Ok(publish)
}

/// The sensor's and the aggregator's settings.
fn plugins(
    origin: Origin<'_>,
    file: PluginsSection,
) -> Result<(PluginSettings, PluginSettings), ConfigError> {
    file.limits.validate().map_err(|e| {
        let key = match e {
            LimitsError::Timeout(_) => &keys::LIMIT_TIMEOUT,
            LimitsError::NoFuel => &keys::LIMIT_FUEL,
            LimitsError::Memory(_) => &keys::LIMIT_MEMORY,
            LimitsError::Backoff { .. } => &keys::LIMIT_BACKOFF_INITIAL,
            LimitsError::LogLines(_) => &keys::LIMIT_LOG_LINES_PER_CALL,
            LimitsError::LogBytes(_) => &keys::LIMIT_LOG_BYTES_PER_CALL,
        };
        origin.invalid(key, false, e.into())
    })?;
    let dirs = file
        .grants
        .dirs
        .iter()
        .map(|d| DirGrant::parse(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| origin.invalid(&keys::GRANT_DIRS, false, e.into()))?;
    let connect = file
        .grants
        .connect
        .iter()
        .map(|c| Endpoint::parse(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| origin.invalid(&keys::GRANT_CONNECT, false, e.into()))?;
    let http = file
        .grants
        .http
        .iter()
        .map(|h| network::Origin::parse(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| origin.invalid(&keys::GRANT_HTTP, false, e.into()))?;
    if file.grants.network && !file.grants.allow_any_network {
        return Err(origin.invalid(&keys::GRANT_NETWORK, false, InvalidSetting::AnyNetwork));
    }
    let sensor = PluginSettings {
        config: plugin_config(origin, &keys::SENSOR_CONFIG, file.sensor_config)?,
        limits: file.limits.clone(),
        grants: Grants {
            dirs,
            env: file.grants.env.into_iter().collect(),
            connect,
            http,
            network: file.grants.network,
        },
    };
    let aggregator = PluginSettings {
        config: plugin_config(origin, &keys::AGGREGATOR_CONFIG, file.aggregator_config)?,
        limits: file.limits,
        grants: Grants::default(),
    };
    Ok((sensor, aggregator))
}

/// A plugin's `init` configuration: strings, numbers and booleans, given as strings.
fn plugin_config(
    origin: Origin<'_>,
    key: &'static Key,
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
                    return Err(origin.invalid(
                        key,
                        false,
                        InvalidSetting::PluginConfigType {
                            key: k,
                            found: other.type_str(),
                        },
                    ));
                }
            };
            Ok((k, value))
        })
        .collect()
}

fn telemetry(
    origin: Origin<'_>,
    file: &TelemetrySection,
    o: &Overrides,
) -> Result<TelemetrySettings, ConfigError> {
    let listen = parse_listen(o.metrics_listen.as_deref().unwrap_or(&file.listen))
        .map_err(|e| origin.invalid(&keys::METRICS_LISTEN, o.metrics_listen.is_some(), e.into()))?;
    in_range(
        origin,
        &keys::UNHEALTHY_AFTER,
        f64::from(file.unhealthy_after_periods),
    )?;
    Ok(TelemetrySettings {
        listen,
        unhealthy_after_periods: file.unhealthy_after_periods,
    })
}
