//! Watched configuration nodes under `{root}/config`: the sampling period (every device),
//! the API URL (the leader) and the aggregator (the leader).
//!
//! Each key is validated; a bad value (non-numeric, non-positive or absurd period,
//! malformed URL, unknown aggregator) is rejected with a warning and counted, and the last
//! good value stays. Keys absent from ZooKeeper are seeded from the local configuration.
//! Values are re-read after every reconnect and every session rebuild, and a watch always
//! re-reads the node, so of several quick changes the last one wins.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::watch, task::JoinSet};
use zookeeper_client::{Error, MultiReadResult};

use super::{CoordError, Session, paths::CONFIG, wait_for_change};
use crate::text;

/// Shortest and longest sampling period accepted.
pub const MIN_PERIOD: Duration = Duration::from_millis(100);
pub const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// The dynamic keys: node name under `{root}/config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    SamplingPeriod,
    ApiUrl,
    Aggregator,
}

impl Key {
    pub const ALL: [Key; 3] = [Key::SamplingPeriod, Key::ApiUrl, Key::Aggregator];

    pub fn name(self) -> &'static str {
        match self {
            Key::SamplingPeriod => "sampling_period",
            Key::ApiUrl => "api_url",
            Key::Aggregator => "aggregator",
        }
    }

    pub fn path(self) -> String {
        format!("{CONFIG}/{}", self.name())
    }

    pub fn parse(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A dynamic configuration value that is refused; the last good value stays.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    #[error("sampling_period must be a number of seconds, got {0:?}")]
    PeriodNotANumber(String),
    #[error("sampling_period must be positive, got {0:?}")]
    PeriodNotPositive(String),
    #[error(
        "sampling_period must be between {min} and {max} seconds, got {raw:?}",
        min = MIN_PERIOD.as_secs_f64(),
        max = MAX_PERIOD.as_secs()
    )]
    PeriodOutOfRange { raw: String },
    #[error("api_url {raw:?} is not a URL: {source}")]
    UrlMalformed {
        raw: String,
        #[source]
        source: url::ParseError,
    },
    #[error("api_url must be an http:// or https:// URL with a host, got {0:?}")]
    UrlNotHttp(String),
    #[error(
        "api_url {0:?} carries a password: it would be written to ZooKeeper and logged; give the API's token as [publish] token or token_file instead"
    )]
    UrlHasPassword(String),
    #[error(
        "api_url {raw:?} points to {origin}, which this agent's configuration does not allow (its API URL's origin and [publish] allowed_origins): rounds and the token are never sent there"
    )]
    UrlOriginNotAllowed { raw: String, origin: String },
    #[error("aggregator must be a plugin name like `median`, got {0:?}")]
    AggregatorName(String),
    #[error("aggregator {0:?} is not an installed aggregator plugin")]
    AggregatorUnknown(String),
}

/// A sampling period in seconds (`5`, `2.5`).
pub fn parse_period(raw: &str) -> Result<Duration, InvalidValue> {
    let secs: f64 = raw
        .trim()
        .parse()
        .map_err(|_| InvalidValue::PeriodNotANumber(raw.to_owned()))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(InvalidValue::PeriodNotPositive(raw.to_owned()));
    }
    let period = Duration::from_secs_f64(secs);
    if period < MIN_PERIOD || period > MAX_PERIOD {
        return Err(InvalidValue::PeriodOutOfRange {
            raw: raw.to_owned(),
        });
    }
    Ok(period)
}

/// An `http(s)://host[:port]/path` URL for the measurements API.
/// No password in it (`https://user:PASSWORD@host/`): the URL is seeded into ZooKeeper and
/// logged; the API's credential is the token.
pub fn parse_api_url(raw: &str) -> Result<url::Url, InvalidValue> {
    let url = url::Url::parse(raw.trim()).map_err(|source| InvalidValue::UrlMalformed {
        // Not a URL, so nothing to redact by structure: cut at an `@` that may end a
        // password.
        raw: raw
            .rsplit_once('@')
            .map_or_else(|| raw.to_owned(), |(_, host)| format!("…@{host}")),
        source,
    })?;
    if url.password().is_some() {
        return Err(InvalidValue::UrlHasPassword(crate::text::redact_url(
            raw.trim(),
        )));
    }
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(InvalidValue::UrlNotHttp(crate::text::redact_url(raw)));
    }
    Ok(url)
}

/// [`parse_api_url`], and its origin must be one of `allowed` (`scheme://host:port`).
pub fn parse_allowed_api_url(raw: &str, allowed: &[String]) -> Result<url::Url, InvalidValue> {
    let url = parse_api_url(raw)?;
    let origin = url.origin().ascii_serialization();
    if !allowed.contains(&origin) {
        return Err(InvalidValue::UrlOriginNotAllowed {
            raw: crate::text::redact_url(raw),
            origin: crate::text::redact_url(&origin),
        });
    }
    Ok(url)
}

/// An aggregator name: a plugin name (`[a-z0-9_-]`, 1–64 characters) that `known` accepts.
pub fn parse_aggregator(raw: &str, known: &dyn Fn(&str) -> bool) -> Result<String, InvalidValue> {
    let name = raw.trim();
    let well_formed = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !well_formed {
        return Err(InvalidValue::AggregatorName(raw.to_owned()));
    }
    if !known(name) {
        return Err(InvalidValue::AggregatorUnknown(name.to_owned()));
    }
    Ok(name.to_owned())
}

/// The local values, used to seed absent nodes and as the first good values.
#[derive(Clone, Debug, PartialEq)]
pub struct Local {
    pub sampling_period: Duration,
    pub api_url: String,
    /// The origins `api_url` may point to (`scheme://host:port`); the local API URL's own
    /// is always one.
    pub allowed_origins: Vec<String>,
    pub aggregator: String,
}

/// Which aggregator names exist (e.g. a file in the plugin directory).
pub type KnownAggregators = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The current good values, each a `watch` channel.
#[derive(Clone, Debug)]
pub struct DynConfig {
    pub sampling_period: watch::Receiver<Duration>,
    pub api_url: watch::Receiver<String>,
    pub aggregator: watch::Receiver<String>,
    rejected: Arc<AtomicU64>,
}

impl DynConfig {
    /// Values rejected so far (for metrics).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// Seeds absent keys, reads the current values and follows them. The tasks stop when the
/// session closes, or when the returned set is dropped.
pub async fn start(
    session: &Session,
    local: Local,
    known: KnownAggregators,
) -> Result<(DynConfig, JoinSet<()>), CoordError> {
    let client = session.client()?;
    let seeds = [
        (Key::SamplingPeriod, format_period(local.sampling_period)),
        (Key::ApiUrl, local.api_url.clone()),
        (Key::Aggregator, local.aggregator.clone()),
    ];
    // One read finds the nodes that exist (every start but a fleet's first): a start storm
    // of a thousand devices then costs a thousand reads, not four thousand failed creates.
    let mut reader = client.new_multi_reader();
    for (key, _) in &seeds {
        reader
            .add_get_data(&key.path())
            .map_err(|e| CoordError::zk("read (in multi)", CONFIG, e))?;
    }
    let present = reader
        .commit()
        .await
        .map_err(|e| CoordError::zk("read", CONFIG, e))?;
    for ((key, seed), found) in seeds.iter().zip(present) {
        if matches!(found, MultiReadResult::Data { .. }) {
            continue;
        }
        let (path, acl) = (key.path(), client.persistent());
        let create = || client.create(&path, seed.as_bytes(), &acl);
        let created = match create().await {
            Err(Error::NoNode) => {
                client
                    .mkdir(CONFIG, &client.persistent())
                    .await
                    .map_err(|e| CoordError::zk("create", CONFIG, e))?;
                create().await
            }
            other => other,
        };
        match created {
            Ok(_) => {
                tracing::info!(key = key.name(), value = %text::one_line(seed), "seeded dynamic configuration")
            }
            Err(Error::NodeExists) => {}
            Err(e) => return Err(CoordError::zk("create", &key.path(), e)),
        }
    }
    drop(client);
    let rejected = Arc::new(AtomicU64::new(0));
    let allowed_origins = local.allowed_origins.clone();
    let (period_tx, period_rx) = watch::channel(local.sampling_period);
    let (url_tx, url_rx) = watch::channel(local.api_url);
    let (agg_tx, agg_rx) = watch::channel(local.aggregator);
    let mut tasks = JoinSet::new();
    tasks.spawn(follow(
        session.clone(),
        Key::SamplingPeriod,
        rejected.clone(),
        move |raw| parse_period(raw).map(|p| period_tx.send_replace(p) != p),
        {
            let rx = period_rx.clone();
            move || format_period(*rx.borrow())
        },
    ));
    tasks.spawn(follow(
        session.clone(),
        Key::ApiUrl,
        rejected.clone(),
        move |raw| {
            parse_allowed_api_url(raw, &allowed_origins).map(|u| {
                let value = u.to_string();
                url_tx.send_replace(value.clone()) != value
            })
        },
        {
            let rx = url_rx.clone();
            move || rx.borrow().clone()
        },
    ));
    tasks.spawn(follow(
        session.clone(),
        Key::Aggregator,
        rejected.clone(),
        move |raw| {
            parse_aggregator(raw, &*known).map(|name| agg_tx.send_replace(name.clone()) != name)
        },
        {
            let rx = agg_rx.clone();
            move || rx.borrow().clone()
        },
    ));
    Ok((
        DynConfig {
            sampling_period: period_rx,
            api_url: url_rx,
            aggregator: agg_rx,
            rejected,
        },
        tasks,
    ))
}

pub fn format_period(period: Duration) -> String {
    let secs = period.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("{secs:.0}")
    } else {
        secs.to_string()
    }
}

/// Follows one key. `apply` validates and publishes a value, returning whether it changed.
/// A deleted node (by hand, or with the rest of the fleet's state when ZooKeeper lost its
/// data) is written again with the value in force, `current()`, so that the node always
/// shows what the fleet uses.
async fn follow(
    session: Session,
    key: Key,
    rejected: Arc<AtomicU64>,
    apply: impl Fn(&str) -> Result<bool, InvalidValue> + Send + 'static,
    current: impl Fn() -> String + Send + 'static,
) {
    let path = key.path();
    let mut status = session.status();
    let closing = session.closing();
    let mut last_rejected: Option<String> = None;
    loop {
        if session.connected().await.is_err() {
            return;
        }
        let Ok(client) = session.client() else { return };
        let watcher = match client.get_and_watch_data(&path).await {
            Ok((data, _, watcher)) => {
                let raw = String::from_utf8_lossy(&data).trim().to_owned();
                // What the node holds goes into logs escaped and cut: anyone who can write
                // it must not be able to forge log lines or fill the log.
                let shown = text::one_line_bounded(&raw, 256);
                match apply(&raw) {
                    Ok(true) => {
                        tracing::info!(key = key.name(), value = %shown, "configuration changed");
                        last_rejected = None;
                    }
                    Ok(false) => last_rejected = None,
                    Err(reason) => {
                        // Count and warn once per bad value, not at every reconnect.
                        if last_rejected.as_deref() != Some(raw.as_str()) {
                            rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(key = key.name(), value = %shown, reason = %text::one_line(&reason.to_string()), "rejected configuration value; keeping the last good one");
                            last_rejected = Some(raw);
                        }
                    }
                }
                Some(watcher)
            }
            Err(Error::NoNode) => {
                let value = current();
                if let Err(err) = session.mkdir(CONFIG).await {
                    tracing::warn!(key = key.name(), error = %err, "cannot write the configuration node again");
                }
                match client
                    .create(&path, value.as_bytes(), &client.persistent())
                    .await
                {
                    Ok(_) => {
                        tracing::warn!(key = key.name(), value = %text::one_line(&value), "configuration node was gone; wrote the value in force again");
                        continue;
                    }
                    Err(Error::NodeExists) => continue,
                    Err(err) => {
                        tracing::warn!(key = key.name(), error = %err, "cannot write the configuration node again; keeping the value in force");
                        None
                    }
                }
            }
            Err(_) => None,
        };
        drop(client);
        if !wait_for_change(watcher, &mut status, &closing).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        assert_eq!(parse_period("8").unwrap(), Duration::from_secs(8));
        assert_eq!(parse_period(" 2.5 ").unwrap(), Duration::from_millis(2500));
        for bad in ["abc", "0", "-5", "NaN", "inf", "0.01", "1e9", ""] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
        assert_eq!(format_period(Duration::from_secs(5)), "5");
        assert_eq!(format_period(Duration::from_millis(2500)), "2.5");
    }

    #[test]
    fn urls() {
        assert!(parse_api_url("http://127.0.0.1:4001/").is_ok());
        assert!(parse_api_url("https://api.example/base/").is_ok());
        let allowed = ["http://127.0.0.1:4000".to_owned()];
        assert!(parse_allowed_api_url("http://127.0.0.1:4000/v2/", &allowed).is_ok());
        for elsewhere in [
            "http://127.0.0.1:4001/",
            "https://127.0.0.1:4000/",
            "http://attacker.example:4000/",
            "http://127.0.0.1@attacker.example:4000/",
        ] {
            let err = parse_allowed_api_url(elsewhere, &allowed).unwrap_err();
            assert!(
                matches!(err, InvalidValue::UrlOriginNotAllowed { .. }),
                "{elsewhere}: {err}"
            );
        }
        for bad in ["localhost:4000", "ftp://x/", "http://", "not a url", ""] {
            assert!(parse_api_url(bad).is_err(), "{bad}");
        }
        let err = parse_api_url("https://meter:hunter2@api.example/")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("carries a password") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn aggregators() {
        let known = |n: &str| n == "median" || n == "mean";
        assert_eq!(parse_aggregator("median", &known).unwrap(), "median");
        assert!(parse_aggregator("Median", &known).is_err());
        assert!(parse_aggregator("../etc", &known).is_err());
        assert!(
            parse_aggregator("max", &known)
                .unwrap_err()
                .to_string()
                .contains("not an installed")
        );
    }
}
